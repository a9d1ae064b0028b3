"""Training scalars as TensorBoard event files under the stage's artifacts (`tensorboard --logdir`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from jobs.core.runtime import StageRun

PREFIX = "tensorboard"  # artifacts/tensorboard/<event file>: one file per attempt


class ScalarLog:
    """Rank 0's scalars (loss, lr, grad norm, tokens/s, fill) per global step, written with
    tensorboardX to a local event file and copied to the store at each `upload`."""

    def __init__(self, stage: StageRun, local_dir: Path) -> None:
        from tensorboardX import SummaryWriter

        self.stage = stage
        self.dir = local_dir
        # Flushed by `upload` (checkpoints and the end), not by a timer thread of its own.
        self.writer = SummaryWriter(logdir=str(local_dir), flush_secs=10**6)

    def add(self, step: int, scalars: Mapping[str, float | None], prefix: str = "train") -> None:
        """One value per tag at `step`; None (unknown here, e.g. no grad norm) is left out."""
        for tag, value in scalars.items():
            if value is not None:
                self.writer.add_scalar(f"{prefix}/{tag}", float(value), global_step=step)

    def upload(self) -> list[str]:
        """Flush and copy the event files to artifacts/tensorboard/; the keys written."""
        self.writer.flush()
        keys = []
        for path in sorted(p for p in self.dir.rglob("events.out.tfevents.*") if p.is_file()):
            key = self.stage.paths.artifact(f"{PREFIX}/{path.name}")
            self.stage.store.put_file(key, path)
            keys.append(key)
        return keys

    def close(self) -> list[str]:
        """Upload a last time and close the writer."""
        keys = self.upload()
        self.writer.close()
        return keys
