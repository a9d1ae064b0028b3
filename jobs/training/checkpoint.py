"""Training checkpoints: local files <-> the store's CheckpointLedger (manifest, LATEST, keep k)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sailk8s.errors import ConfigError
from sailk8s.ledger import CheckpointLedger

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.json"


@dataclass
class TrainState:
    """Where training stands; enough to resume exactly."""

    substage: int = 0  # index of the sub-stage in progress
    step: int = 0  # optimizer steps done in this sub-stage
    global_step: int = 0  # over all sub-stages (checkpoint numbering)
    tokens: int = 0  # real tokens trained on in this sub-stage
    bins: int = 0  # packed sequences consumed from this sub-stage's stream
    cursor: dict[str, Any] | None = None  # jobs.training.binstream state: the data position without a replay
    finished: bool = False  # every sub-stage is done
    losses: list[list[float]] = field(default_factory=list)  # [global_step, loss]
    summaries: list[dict[str, Any]] = field(default_factory=list)  # one per finished sub-stage

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def check_shapes(model: torch.nn.Module, path: Path, what: str) -> None:
    """ConfigError naming both shapes when a weights file does not fit the model."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            theirs = tuple(f.get_slice(key).get_shape())
            if key in own and own[key] != theirs:
                raise ConfigError(
                    f"{what} was saved from a model of another shape: {key} is {list(theirs)} there "
                    f"but {list(own[key])} in this stage's model; use the same model preset or start "
                    "a new run")
            if key not in own:
                raise ConfigError(f"{what} has weight {key!r} that this stage's model lacks "
                                  "(another architecture?)")


def load_weights(model: torch.nn.Module, path: Path, what: str) -> None:
    """Load safetensors weights after the shape check (strict)."""
    check_shapes(model, path, what)
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    # Tied weights (lm_head = embeddings) are stored once; anything else missing is an error.
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise ConfigError(f"{what}: missing weights {sorted(set(missing) - tied)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}")


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Weights as safetensors: tied tensors once, each cloned out of DeepSpeed's flat buffers."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        ptr = value.data_ptr()
        if ptr in seen and key.endswith("lm_head.weight"):
            continue  # tied to the input embeddings
        seen.add(ptr)
        out[key] = value.detach().to("cpu").clone().contiguous()
    save_file(out, str(path))


def _rng() -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Save and restore this stage's training checkpoints through the store.

    A checkpoint directory holds `model.safetensors` (nothing is unpickled when loading),
    `state.json` (a TrainState) and `optim-rank-<r>.pt`: rank r's optimizer state and torch RNG,
    tensors and plain values only, read back with torch.load(weights_only=True).
    """

    def __init__(self, ledger: CheckpointLedger, *, rank: int, world_size: int, keep_latest: int,
                 tmp_root: Path) -> None:
        self.ledger, self.rank, self.world_size = ledger, rank, world_size
        self.keep_latest = keep_latest
        self.tmp_root = tmp_root

    def save(self, model: torch.nn.Module, optimizer_state: dict[str, Any], state: TrainState) -> None:
        """All ranks call this; rank 0 writes and uploads, the others hand it their state.

        The ledger uploads the files, then manifest.json, then LATEST.
        """
        mine = {"optim": optimizer_state, "rng": _rng()}
        gathered: list[Any] = [mine]
        if self.world_size > 1:
            gathered = [None] * self.world_size if self.rank == 0 else []
            tdist.gather_object(mine, gathered if self.rank == 0 else None, dst=0)
        if self.rank == 0:
            tmp = Path(tempfile.mkdtemp(prefix="ckpt-", dir=self.tmp_root))
            try:
                save_weights(model, tmp / MODEL_FILE)
                for r, item in enumerate(gathered):
                    torch.save(item, tmp / f"optim-rank-{r:05d}.pt")
                (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
                self.ledger.save(tmp, state.global_step, keep_latest_k=self.keep_latest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if self.world_size > 1:
            tdist.barrier()

    def restore(self, model: torch.nn.Module) -> tuple[TrainState, dict[str, Any] | None] | None:
        """Load the newest valid checkpoint into model; (state, this rank's optimizer state) or None.

        The ledger skips a corrupt or partial checkpoint with a warning, for the one before it.
        """
        payload: list[Any] = [None]
        if self.rank == 0:
            tmp = Path(tempfile.mkdtemp(prefix="restore-", dir=self.tmp_root)) / "ckpt"
            try:
                step = self.ledger.load(tmp)
                if step is not None:
                    what = f"checkpoint step {step} of {self.ledger.paths.root}"
                    load_weights(model, tmp / MODEL_FILE, what)
                    state = json.loads((tmp / STATE_FILE).read_text())
                    ranks = sorted(tmp.glob("optim-rank-*.pt"))
                    per_rank = [torch.load(p, weights_only=True) for p in ranks]
                    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    payload = [(state, per_rank, weights if self.world_size > 1 else None)]
            finally:
                shutil.rmtree(tmp.parent, ignore_errors=True)
        if self.world_size > 1:
            tdist.broadcast_object_list(payload, src=0)
        if payload[0] is None:
            return None
        state_json, per_rank, weights = payload[0]
        if self.rank != 0 and weights is not None:
            model.load_state_dict(weights, strict=False)
        mine = per_rank[self.rank] if len(per_rank) == self.world_size else None
        if mine is not None:
            _set_rng(mine["rng"])
        return TrainState.from_json(state_json), (mine["optim"] if mine is not None else None)
