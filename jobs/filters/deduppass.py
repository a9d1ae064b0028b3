"""The filter stage's dedup on its own ranks: index, decide by partition, resolve, then apply."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from jobs.core.runtime import StageRun
from jobs.core.shardio import ShardInput, ShardStats, WorkUnit, local_tmp_root
from jobs.filters import dedup, dedupstore, dupgraph
from jobs.filters.chain import Chain
from sailk8s.ledger import input_identity

FORMAT = 2  # bump when the files' layout changes: the prefix then changes with it


class Duplicates:
    """The resolved decision: which (shard, key) to drop and why, looked up shard by shard."""

    def __init__(self, shards: tuple[str, ...], dropped: np.ndarray, reasons: np.ndarray) -> None:
        self.rank_of = {s: i for i, s in enumerate(shards)}
        self.dropped, self.reasons = dropped, reasons

    def __len__(self) -> int:
        return len(self.dropped)

    def of(self, shard: str, keys: list[str]) -> dict[tuple[str, str], str]:
        """(shard, key) -> reason for the shard's duplicates; keys: all its samples' keys."""
        if shard not in self.rank_of:
            return {}
        s = np.uint64(self.rank_of[shard])
        lo, hi = np.searchsorted(self.dropped, [s << np.uint64(32), (s + np.uint64(1)) << np.uint64(32)])
        ordered = sorted(keys)
        ranks = (self.dropped[lo:hi] & np.uint64(0xFFFFFFFF)).astype(np.int64)
        return {(shard, ordered[r]): dedup.REASONS[int(why)] for r, why in zip(ranks, self.reasons[lo:hi],
                                                                               strict=True)}


def plan_for(stage: StageRun, chain: Chain, units: list[WorkUnit]) -> dedupstore.DedupPlan:
    """Where this dedup's files live: keyed by what decides them, the input's identity included."""
    cfg = chain.dedup_cfg
    assert cfg is not None
    basis = {"format": FORMAT, "dedup": cfg.model_dump(exclude={"steal_after_seconds"}),
             "pre_dedup": chain.fingerprint(),
             "inputs": input_identity(stage.store, [u.input_key for u in units if u.input_key])}
    prefix = stage.results.derived_prefix("dedup", basis)
    return dedupstore.DedupPlan(prefix, tuple(u.shard_id for u in units), cfg.partitions, cfg.max_distance,
                                cfg.hash_size**2 // 8)


def index_shard(stage: StageRun, chain: Chain, plan: dedupstore.DedupPlan, unit: WorkUnit) -> None:
    """Hash the survivors of the pre-dedup filters of one input shard into its index files."""
    cfg = chain.dedup_cfg
    assert cfg is not None and unit.input_key is not None
    with tempfile.TemporaryDirectory(prefix="sail-index-", dir=local_tmp_root()) as tmp:
        local = Path(tmp) / "input.tar"
        stage.store.get_file(unit.input_key, local)
        samples = list(ShardInput(unit, local, ShardStats(), lambda: None, need_image=False))
    rank_of = {k: i for i, k in enumerate(sorted(s.key for s in samples))}
    shard_rank = plan.shards.index(unit.shard_id)
    gids, contents, phashes = [], [], []
    for sample in samples:
        cand = chain.candidate(sample)
        if chain.pre_dedup(cand) or chain.image_reason(cand):
            continue
        assert cand.image is not None
        gids.append(int(dupgraph.gid(shard_rank, rank_of[sample.key])))
        contents.append(dedup.content_hash(cand.image))
        phashes.append(dedup.perceptual_hash(cand.image, cfg.hash_size))
    parts = dupgraph.partitioned(
        np.array(gids, dtype=np.uint64),
        dupgraph.content_words(contents) if cfg.exact and gids else None,
        dupgraph.phash_bytes(phashes) if cfg.near and gids else None,
        cfg.max_distance, cfg.partitions)
    dedupstore.write_index(stage.store, plan, unit.shard_id, parts)


def _done(stage: StageRun, prefix: str, suffix: str) -> set[str]:
    """Names of the finished units under prefix: one listing."""
    return {k[len(prefix):-len(suffix)] for k in stage.store.list(prefix) if k.endswith(suffix)}


def run_dedup(stage: StageRun, chain: Chain, units: list[WorkUnit]) -> Duplicates:
    """All passes but apply, on this rank; the returned decision is every rank's same one.

    1. index: each rank hashes the survivors of the pre-dedup filters in its own shards and writes
       their records by partition (content hash for exact, band bucket for near);
    2. decide: rank r takes partitions r, r + W, ...; each gives duplicate edges;
    3. resolve: every rank reads all edges (one per duplicate) and finds the connected components;
    4. apply: a shard's samples are dropped by looking up its own slice of the decisions.
    Each index (a shard) and decision (a partition) is a unit of the store: a killed rank's
    half-done unit is redone, a missing one is taken over after `steal_after_seconds` of silence,
    and the result is a pure function of all records: the same survivors at any world size.
    The files live under a prefix keyed by the dedup config AND the input's identity.
    """
    cfg = chain.dedup_cfg
    assert cfg is not None
    plan = plan_for(stage, chain, units)
    world, rank = stage.dist.world_size, stage.dist.rank
    wait = {"steal_after": cfg.steal_after_seconds, "rank": rank, "clock": time.monotonic,
            "sleep": time.sleep}
    by_id = {u.shard_id: u for u in units}
    index_prefix = f"{plan.prefix}index/"
    dedupstore.finish_units(
        list(plan.shards), [u.shard_id for u in stage.my_units(units)],
        lambda: {name.rstrip("/") for name in _done(stage, index_prefix, "_done")},
        lambda shard: index_shard(stage, chain, plan, by_id[shard]),
        on_steal=lambda shard: stage.log.warning("indexing another rank's shard", shard=shard), **wait)
    parts_of = {s: dedupstore.indexed_parts(stage.store, plan, s) or set() for s in plan.shards}
    edges_prefix = f"{plan.prefix}edges/"
    dedupstore.finish_units(
        [f"{p:05d}" for p in range(plan.partitions)], [f"{p:05d}" for p in plan.owned(rank, world)],
        lambda: _done(stage, edges_prefix, "._done"),
        lambda part: dedupstore.write_edges(stage.store, plan, int(part), dedupstore.partition_edges(
            stage.store, plan, int(part), parts_of, exact=cfg.exact, near=cfg.near)),
        on_steal=lambda part: stage.log.warning("deciding another rank's partition", partition=part), **wait)
    dropped, reasons = dupgraph.resolve(dedupstore.all_edges(stage.store, plan))
    stage.log.info("dedup decision", shards=len(plan.shards), partitions=plan.partitions,
                   duplicates=len(dropped), exact=int((reasons == dupgraph.EXACT).sum()))
    return Duplicates(plan.shards, dropped, reasons)
