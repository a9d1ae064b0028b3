"""The filter stage's dedup on its own ranks: index, decide by partition, resolve, then apply."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.core.runtime import StageRun
from jobs.core.shardio import ShardInput, ShardStats, WorkUnit, local_tmp_root
from jobs.filters import dedup, dedupstore, dupgraph
from jobs.filters.chain import Chain
from sailk8s.ledger import input_identity

FORMAT = 3  # bump when the files' layout changes: the prefix then changes with it


class Duplicates:
    """The resolved decision: which (shard, key) to drop and why, read shard by shard."""

    def __init__(self, lookup: dedupstore.DroppedLookup) -> None:
        self.lookup = lookup

    def __len__(self) -> int:
        return self.lookup.totals()[0]

    def of(self, shard: str, keys: list[str]) -> dict[tuple[str, str], str]:
        """(shard, key) -> reason for the shard's duplicates; keys: all its samples' keys."""
        ranks, reasons = self.lookup.of(shard)
        ordered = sorted(keys)
        return {(shard, ordered[r]): dedup.REASONS[int(why)] for r, why in zip(ranks, reasons, strict=True)}


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


def run_dedup(stage: StageRun, chain: Chain, units: list[WorkUnit]) -> Duplicates:
    """All passes but apply, on this rank; the returned decision is every rank's same one.

    1. index: each rank hashes the survivors of the pre-dedup filters in its own shards and writes
       their records by partition (content hash for exact, band bucket for near);
    2. decide: rank r takes partitions r, r + W, ...; each gives duplicate edges, written as
       adjacency rows by node bucket;
    3. resolve: rounds of min-label propagation, rank r holding buckets r, r + W, ...: every
       node ends labelled with its component's smallest gid (jobs.filters.dupcc); then each
       bucket writes its drops by shard group;
    4. apply: a shard reads its group's drops only.
    Each index (a shard), decision (a partition) and bucket round is a unit of the store: a
    killed rank's half-done unit is redone, a missing one is taken over after
    `steal_after_seconds` of silence, and the result is a pure function of all records: the same
    survivors at any world size. No rank ever holds more than one partition or bucket. The files
    live under a prefix keyed by the dedup config AND the input's identity.
    """
    cfg = chain.dedup_cfg
    assert cfg is not None
    plan = plan_for(stage, chain, units)
    world, rank = stage.dist.world_size, stage.dist.rank
    wait: dict[str, Any] = {"steal_after": cfg.steal_after_seconds, "rank": rank, "clock": time.monotonic,
                            "sleep": time.sleep}
    by_id = {u.shard_id: u for u in units}
    index_prefix = f"{plan.prefix}index/"
    dedupstore.finish_units(
        list(plan.shards), [u.shard_id for u in stage.my_units(units)],
        lambda: dedupstore.done_units(stage.store, index_prefix),
        lambda shard: index_shard(stage, chain, plan, by_id[shard]),
        on_steal=lambda shard: stage.log.warning("indexing another rank's shard", shard=shard), **wait)
    parts_of = {s: dedupstore.indexed_parts(stage.store, plan, s) or {} for s in plan.shards}
    dedupstore.finish_units(
        [f"{p:05d}" for p in range(plan.partitions)], [f"{p:05d}" for p in plan.owned(rank, world)],
        lambda: dedupstore.done_units(stage.store, f"{plan.prefix}adj/"),
        lambda part: dedupstore.write_adjacency(stage.store, plan, int(part), dedupstore.partition_edges(
            stage.store, plan, int(part), parts_of, exact=cfg.exact, near=cfg.near)),
        on_steal=lambda part: stage.log.warning("deciding another rank's partition", partition=part), **wait)
    rounds = dedupstore.resolve(
        stage.store, plan, plan.owned(rank, world), **wait,
        on_round=lambda t, markers: stage.log.info(
            "dedup label round", round=t, sent=sum(m["sent"] for m in markers.values()),
            nodes=sum(m["nodes"] for m in markers.values())),
        on_steal=lambda b: stage.log.warning("resolving another rank's bucket", bucket=b))
    lookup = dedupstore.DroppedLookup(stage.store, plan)
    duplicates, exact = lookup.totals()
    stage.log.info("dedup decision", shards=len(plan.shards), partitions=plan.partitions, rounds=rounds,
                   duplicates=duplicates, exact=exact)
    return Duplicates(lookup)
