"""The partitioned dedup's files in the store: index per (shard, partition), edges per partition."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from jobs.filters import dupgraph as dg
from sailk8s.errors import ObjectNotFound
from sailk8s.store.base import ObjectStore

_FIELDS = ("exact_gid", "content", "near_gid", "band", "phash")


@dataclass(frozen=True)
class DedupPlan:
    """What every rank agrees on: where the files live, the shards in gid order, the partitioning.

        plan = DedupPlan(prefix, shard_ids, partitions=32, max_distance=4, hash_bytes=32)
        write_index(store, plan, shard_id, dupgraph.partitioned(...))   # index pass, one shard
        edges = partition_edges(store, plan, part)                      # decision pass, one partition
        write_edges(store, plan, part, edges); all_edges(store, plan)   # then dupgraph.resolve

    Each unit is its files, then a small `_done` object naming them (written last), so a killed
    rank's half-written unit is simply redone. Arrays travel as .npz (numpy, no pickle).
    """

    prefix: str  # ends with "/": StageResults.derived_prefix, keyed by config and input identity
    shards: tuple[str, ...]  # input shard ids; a shard's place here is its gid's shard rank
    partitions: int
    max_distance: int
    hash_bytes: int

    def index_key(self, shard: str, part: int) -> str:
        return f"{self.prefix}index/{shard}/{part:05d}.npz"

    def index_done(self, shard: str) -> str:
        return f"{self.prefix}index/{shard}/_done"

    def edges_key(self, part: int) -> str:
        return f"{self.prefix}edges/{part:05d}.npy"

    def edges_done(self, part: int) -> str:
        return f"{self.prefix}edges/{part:05d}._done"

    def owned(self, rank: int, world: int) -> list[int]:
        """The partitions rank r decides: r, r + W, r + 2W, ..."""
        return list(range(rank, self.partitions, world))


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_index(store: ObjectStore, plan: DedupPlan, shard: str, parts: dict[int, dg.Records]) -> None:
    """One shard's index: a file per non-empty partition, then the marker listing them."""
    for part, rec in sorted(parts.items()):
        store.put(plan.index_key(shard, part), _npz({f: getattr(rec, f) for f in _FIELDS}))
    store.put(plan.index_done(shard), json.dumps({"parts": sorted(parts)}).encode())


def indexed_parts(store: ObjectStore, plan: DedupPlan, shard: str) -> set[int] | None:
    """The partitions a shard's finished index holds; None while the shard is not indexed."""
    try:
        return set(json.loads(store.get(plan.index_done(shard)))["parts"])
    except ObjectNotFound:
        return None


def read_partition(store: ObjectStore, plan: DedupPlan, part: int,
                   parts_of: dict[str, set[int]]) -> dg.Records:
    """Every shard's records of one partition (only the files that exist are read)."""
    found = []
    for shard in plan.shards:
        if part in parts_of[shard]:
            with np.load(io.BytesIO(store.get(plan.index_key(shard, part))), allow_pickle=False) as z:
                found.append(dg.Records(*(z[f] for f in _FIELDS)))
    return dg.Records.concat(found, plan.hash_bytes)


def partition_edges(store: ObjectStore, plan: DedupPlan, part: int, parts_of: dict[str, set[int]],
                    *, exact: bool, near: bool) -> np.ndarray:
    """The duplicate edges found within one partition."""
    rec = read_partition(store, plan, part, parts_of)
    found = [np.empty((0, 3), np.uint64)]
    if exact:
        found.append(dg.exact_edges(rec))
    if near:
        found.append(dg.near_edges(rec, plan.max_distance))
    return np.concatenate(found)


def write_edges(store: ObjectStore, plan: DedupPlan, part: int, edges: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, edges.astype(np.uint64), allow_pickle=False)
    store.put(plan.edges_key(part), buf.getvalue())
    store.put(plan.edges_done(part), b"{}")


def all_edges(store: ObjectStore, plan: DedupPlan) -> np.ndarray:
    """Every partition's edges (they are few: one per duplicate, not one per sample)."""
    found = [np.empty((0, 3), np.uint64)]
    for part in range(plan.partitions):
        found.append(np.load(io.BytesIO(store.get(plan.edges_key(part))), allow_pickle=False))
    return np.concatenate(found)


def finish_units(units: Sequence[str], mine: Iterable[str], is_done: Callable[[], set[str]],
                 build: Callable[[str], None], *, steal_after: float, rank: int,
                 clock: Callable[[], float], sleep: Callable[[float], None],
                 on_steal: Callable[[str], None] = lambda unit: None) -> None:
    """Build this rank's pending units, then wait for everyone's; take over a missing one when
    nothing new has been finished for `steal_after` seconds (so a dead rank cannot block)."""
    done = is_done()
    for unit in mine:
        if unit not in done:
            build(unit)
    missing = [u for u in units if u not in is_done()]
    last_change = clock()
    while missing:
        still = [u for u in missing if u not in is_done()]
        if len(still) < len(missing):
            last_change = clock()
        missing = still
        if missing and clock() - last_change > steal_after:
            victim = missing[rank % len(missing)]
            on_steal(victim)
            build(victim)
            last_change = clock()
        elif missing:
            sleep(0.3)
