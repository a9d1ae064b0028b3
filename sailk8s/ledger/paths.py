"""The store key layout every component shares (runs/<run>/<stage>/...), as pure functions."""

from __future__ import annotations

from dataclasses import dataclass

from sailk8s.errors import StoreKeyError
from sailk8s.store.base import validate_key

CKPT_DIR_PREFIX = "step-"


def segment(value: str, what: str) -> str:
    """Check value is one safe key segment (no '/'); StoreKeyError naming `what` otherwise."""
    if not isinstance(value, str) or "/" in value:
        raise StoreKeyError(f"invalid {what} {value!r}: must be a single path segment without '/'")
    try:
        validate_key(value)
    except StoreKeyError as err:
        raise StoreKeyError(f"invalid {what}: {err}") from None
    return value


def shard_key(prefix: str, index: int) -> str:
    """`<prefix>/shard-NNNNNN.tar`, the name data shards have under a stage's output prefix."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return validate_key(f"{prefix.rstrip('/')}/shard-{index:06d}.tar")


def ckpt_dir_name(step: int) -> str:
    """`step-NNNNNNNN` (8 digits, so string order is step order)."""
    if not 0 <= step <= 99_999_999:
        raise ValueError(f"checkpoint step must be in 0..99999999, got {step}")
    return f"{CKPT_DIR_PREFIX}{step:08d}"


def parse_ckpt_dir_name(name: str) -> int | None:
    """The step of a `step-NNNNNNNN` name, None for anything else."""
    digits = name[len(CKPT_DIR_PREFIX):]
    if name.startswith(CKPT_DIR_PREFIX) and len(digits) == 8 and digits.isdigit():
        return int(digits)
    return None


@dataclass(frozen=True)
class RunPaths:
    """Keys of one run: `runs/<run>/...`."""

    run: str

    def __post_init__(self) -> None:
        segment(self.run, "run name")

    @property
    def root(self) -> str:
        return f"runs/{self.run}"

    @property
    def prefix(self) -> str:
        """Everything of this run (for listing)."""
        return self.root + "/"

    @property
    def state(self) -> str:
        return f"{self.root}/state.json"

    @property
    def lock(self) -> str:
        return f"{self.root}/lock"

    @property
    def cancel(self) -> str:
        return f"{self.root}/cancel.json"

    def stage(self, name: str) -> StagePaths:
        return StagePaths(self.run, name)


@dataclass(frozen=True)
class StagePaths:
    """Keys of one stage of a run: `runs/<run>/<stage>/...` (see the layout in DESIGN.md)."""

    run: str
    stage: str

    def __post_init__(self) -> None:
        segment(self.run, "run name")
        segment(self.stage, "stage name")

    @property
    def root(self) -> str:
        return f"runs/{self.run}/{self.stage}"

    @property
    def prefix(self) -> str:
        """Everything of this stage (for listing)."""
        return self.root + "/"

    def key(self, *parts: str) -> str:
        """Any key below the stage root, e.g. key("stats", "s1.json")."""
        return validate_key("/".join((self.root, *parts)))

    # shard completion markers
    @property
    def done_prefix(self) -> str:
        return f"{self.root}/done/"

    def done(self, shard_id: str) -> str:
        return f"{self.done_prefix}{segment(shard_id, 'shard id')}.json"

    def shard_id_of(self, marker_key: str) -> str | None:
        """The shard id of a marker key from a listing of done_prefix (None if not a marker)."""
        if not marker_key.startswith(self.done_prefix) or not marker_key.endswith(".json"):
            return None
        name = marker_key[len(self.done_prefix):-len(".json")]
        return name if name and "/" not in name else None

    # progress and reports
    @property
    def progress(self) -> str:
        return f"{self.root}/progress.json"

    @property
    def progress_prefix(self) -> str:
        return f"{self.root}/progress/"

    def rank_progress(self, rank: int) -> str:
        return f"{self.progress_prefix}rank-{int(rank)}.json"

    @property
    def report(self) -> str:
        return f"{self.root}/report.json"

    def attempt_prefix(self, attempt: int) -> str:
        return f"{self.root}/attempts/{int(attempt)}/"

    def attempt_report(self, attempt: int) -> str:
        return f"{self.attempt_prefix(attempt)}report.json"

    def attempt_logs_prefix(self, attempt: int) -> str:
        return f"{self.attempt_prefix(attempt)}logs/"

    def attempt_log(self, attempt: int, rank: int) -> str:
        return f"{self.attempt_logs_prefix(attempt)}rank-{int(rank)}.log"

    # checkpoints
    @property
    def ckpt_prefix(self) -> str:
        return f"{self.root}/ckpt/"

    def ckpt_dir(self, step: int) -> str:
        """`.../ckpt/step-NNNNNNNN` (no trailing slash)."""
        return f"{self.ckpt_prefix}{ckpt_dir_name(step)}"

    def ckpt_manifest(self, step: int) -> str:
        return f"{self.ckpt_dir(step)}/manifest.json"

    @property
    def ckpt_latest(self) -> str:
        return f"{self.ckpt_prefix}LATEST"

    # artifacts (charts, exported models)
    @property
    def artifacts_prefix(self) -> str:
        return f"{self.root}/artifacts/"

    def artifact(self, name: str) -> str:
        return validate_key(f"{self.artifacts_prefix}{name}")
