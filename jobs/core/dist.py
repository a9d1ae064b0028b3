"""This process's place in a stage job: its rank as torchrun sets it, and its share of the shards."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sailk8s.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: global rank, world size, rank on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DistInfo:
        """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; defaults make one process work."""
        env = os.environ if env is None else env

        def num(var: str, default: int) -> int:
            raw = env.get(var, "")
            try:
                return int(raw) if raw != "" else default
            except ValueError:
                raise ConfigError(f"{var} must be an integer, got {raw!r}") from None

        info = cls(num("RANK", 0), num("WORLD_SIZE", 1), num("LOCAL_RANK", 0))
        if info.world_size < 1 or not 0 <= info.rank < info.world_size:
            raise ConfigError(f"RANK={info.rank} is not in [0, WORLD_SIZE={info.world_size})")
        return info

    @property
    def is_main(self) -> bool:
        """Rank 0 aggregates progress and writes the report."""
        return self.rank == 0


T = TypeVar("T")


def assign_shards(shards: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's share: round robin over the list in sorted order. Pure and deterministic.

    The split is over ALL shards, not the pending ones, so ranks that list the ledger at
    different moments can never disagree about who owns a shard.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return sorted(shards)[rank::world_size]  # type: ignore[type-var]
