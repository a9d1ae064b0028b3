"""Seeded scenarios: a seed draws faults from the catalogue and the moments they strike."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from sailk8s.testing.chaos.catalogue import BEFORE_MARKER, CHECKPOINT, SHARD, START, FaultKind, kinds_for


@dataclass(frozen=True)
class StageShape:
    """What the drawer knows of a stage: data (shards) or training (checkpoints), and how many."""

    name: str
    data: bool
    units: int  # shards (data) or checkpoints (training) one attempt writes


@dataclass(frozen=True)
class Moment:
    """When a fault strikes: a stage, a moment kind and its count (shard k, checkpoint n)."""

    stage: str
    at: str
    count: int = 0

    def __str__(self) -> str:
        if self.at == START:
            return START
        return f"{self.stage}@{self.at}" + (f":{self.count}" if self.at in (SHARD, CHECKPOINT) else "")


@dataclass(frozen=True)
class Strike:
    """One drawn fault: its kind, its moment and a drawn parameter (count, seconds...)."""

    kind: str
    moment: Moment
    param: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind}({self.param:g}) {self.moment}"


@dataclass
class Scenario:
    """A seed's faults on one backend."""

    seed: int
    backend: str
    strikes: list[Strike] = field(default_factory=list)

    @property
    def permanent(self) -> bool:
        """True when a drawn fault is expected to fail the run (a clean rerun must then finish)."""
        from sailk8s.testing.chaos.catalogue import BY_NAME

        return any(BY_NAME[s.kind].permanent for s in self.strikes)

    def __str__(self) -> str:
        return f"seed {self.seed} on {self.backend}: " + "; ".join(map(str, self.strikes))


_PARAMS: dict[str, tuple[float, float]] = {
    "api_5xx_burst": (3, 8), "store_5xx": (3, 8), "store_reset": (2, 5), "store_slow": (1, 3),
    "store_down": (4, 12),
}


def _moments(kind: FaultKind, stage: StageShape) -> list[Moment]:
    """Every moment of `stage` at which `kind` may strike."""
    out = []
    for at in kind.strikes:
        if at == SHARD and stage.data:
            out += [Moment(stage.name, at, k) for k in range(stage.units)]
        elif at == CHECKPOINT and not stage.data:
            out += [Moment(stage.name, at, n) for n in range(1, stage.units + 1)]
        elif (at == BEFORE_MARKER and stage.data) or at not in (SHARD, CHECKPOINT, BEFORE_MARKER):
            out.append(Moment(stage.name, at))
    return out


def draw(seed: int, backend: str, stages: list[StageShape], faults: tuple[int, int] = (2, 3)) -> Scenario:
    """The scenario of `seed`: `faults` (min, max) strikes on distinct stages where possible."""
    rng = random.Random(f"{backend}:{seed}")
    scenario = Scenario(seed, backend)
    count = rng.randint(*faults)
    kinds = kinds_for(backend)
    used: set[str] = set()
    for _ in range(count):
        for _try in range(50):
            kind = rng.choice(kinds)
            if kind.permanent and scenario.permanent:
                continue
            fits = [s for s in stages if (s.data or not kind.data_only) and not (kind.train_only and s.data)]
            fresh = [s for s in fits if s.name not in used] or fits
            if not fresh:
                continue
            stage = rng.choice(fresh)
            moments = _moments(kind, stage)
            if not moments:
                continue
            lo, hi = _PARAMS.get(kind.name, (0.0, 0.0))
            param = float(rng.randint(int(lo), int(hi))) if hi else 0.0
            scenario.strikes.append(Strike(kind.name, rng.choice(moments), param))
            used.add(stage.name)
            break
    return scenario
