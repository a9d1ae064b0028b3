"""The partitioned dedup's files in the store: index, adjacency, label rounds, final decisions.

Each unit (a shard's index, a partition's edges, a bucket's round, a bucket's decisions) is ONE
packed object, its chunks (one per partition, bucket or shard group) laid end to end, and a
small `._done` marker written last that gives each chunk's byte span: a reader fetches only its
chunk with a ranged GET. So the object count grows with the units, never with units x partitions.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from jobs.filters import dupcc as cc
from jobs.filters import dupgraph as dg
from sailk8s.errors import ObjectNotFound
from sailk8s.store.base import ObjectStore

_FIELDS = ("exact_gid", "content", "near_gid", "band", "phash")
Spans = dict[int, tuple[int, int]]  # chunk -> (byte offset, byte length) in a packed object


@dataclass(frozen=True)
class DedupPlan:
    """What every rank agrees on: where the files live, the shards in gid order, the partitioning.

        plan = DedupPlan(prefix, shard_ids, partitions=32, max_distance=4, hash_bytes=32)
        write_index(store, plan, shard_id, dupgraph.partitioned(...))   # index pass, one shard
        write_adjacency(store, plan, part, partition_edges(store, plan, part, ...))  # decide pass
        resolve(store, plan, my_buckets, ...)   # label rounds until none is sent, then the drops
        DroppedLookup(store, plan).of(shard)    # apply: one shard group's decisions

    Partitions double as the resolve's node buckets and the decisions' shard groups, so every
    object's place depends on the config alone, never on the world size. A killed rank's
    half-written unit has no marker and is simply redone (the same bytes: every step is a pure
    function of its inputs). Arrays travel as .npy blobs (numpy, no pickle, no zip).
    """

    prefix: str  # ends with "/": StageResults.derived_prefix, keyed by config and input identity
    shards: tuple[str, ...]  # input shard ids; a shard's place here is its gid's shard rank
    partitions: int
    max_distance: int
    hash_bytes: int

    def index_key(self, shard: str) -> str:
        return f"{self.prefix}index/{shard}.bin"

    def index_done(self, shard: str) -> str:
        return f"{self.prefix}index/{shard}._done"

    def adj_key(self, part: int) -> str:
        return f"{self.prefix}adj/{part:05d}.bin"

    def adj_done(self, part: int) -> str:
        return f"{self.prefix}adj/{part:05d}._done"

    def cc_adj(self, bucket: int) -> str:
        return f"{self.prefix}cc/adj/{bucket:05d}.npy"

    def cc_prefix(self, t: int) -> str:
        return f"{self.prefix}cc/{t:04d}/"

    def cc_labels(self, t: int, bucket: int) -> str:
        return f"{self.cc_prefix(t)}{bucket:05d}.labels.bin"

    def cc_out(self, t: int, bucket: int) -> str:
        return f"{self.cc_prefix(t)}{bucket:05d}.out.bin"

    def cc_done(self, t: int, bucket: int) -> str:
        return f"{self.cc_prefix(t)}{bucket:05d}._done"

    def final_key(self, bucket: int) -> str:
        return f"{self.prefix}final/{bucket:05d}.bin"

    def final_done(self, bucket: int) -> str:
        return f"{self.prefix}final/{bucket:05d}._done"

    @cached_property
    def shard_rank(self) -> dict[str, int]:
        """Each shard's place in `shards`: the high half of its samples' gids."""
        return {s: i for i, s in enumerate(self.shards)}

    def groups_of(self, gids: np.ndarray) -> np.ndarray:
        """The shard group of each gid: its shard's rank modulo the partitions."""
        return ((gids >> np.uint64(32)) % np.uint64(self.partitions)).astype(np.int64)

    def group_of(self, shard: str) -> int:
        """The shard group whose decision chunks hold a shard's drops (as groups_of its gids)."""
        return int(self.groups_of(dg.gid(self.shard_rank[shard], 0)))

    def owned(self, rank: int, world: int) -> list[int]:
        """The partitions (and buckets) rank r works on: r, r + W, r + 2W, ..."""
        return list(range(rank, self.partitions, world))


# -- packed objects ---------------------------------------------------------------------------
def _arrays(*arrays: np.ndarray) -> bytes:
    """Arrays as .npy blobs end to end: the same bytes for equal arrays whatever the Python
    (an .npz is a zip, whose zip64 fields differ between Python patch releases)."""
    return b"".join(_npy(a) for a in arrays)


def _read_arrays(data: bytes, count: int) -> list[np.ndarray]:
    """The `count` arrays of an `_arrays` blob, in order."""
    f = io.BytesIO(data)
    found = [np.lib.format.read_array(f, allow_pickle=False) for _ in range(count)]
    if f.tell() != len(data):
        raise ValueError(f"{len(data) - f.tell()} bytes after the {count} arrays expected")
    return found


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _array(data: bytes) -> np.ndarray:
    found: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    return found


def write_packed(store: ObjectStore, key: str, done: str, chunks: dict[int, bytes], **extra: Any) -> None:
    """The chunks end to end in one object, then the marker with their spans (and `extra`)."""
    spans, at = {}, 0
    for k in sorted(chunks):
        spans[str(k)] = [at, len(chunks[k])]
        at += len(chunks[k])
    store.put(key, b"".join(chunks[k] for k in sorted(chunks)))
    store.put(done, json.dumps({"chunks": spans, **extra}).encode())


def read_marker(store: ObjectStore, done: str) -> dict[str, Any]:
    """A unit's marker; its spans as {chunk: (offset, length)} under "chunks"."""
    found = json.loads(store.get(done))
    found["chunks"] = {int(k): (int(v[0]), int(v[1])) for k, v in found["chunks"].items()}
    return dict(found)


def read_chunk(store: ObjectStore, key: str, span: tuple[int, int]) -> bytes:
    """One chunk of a packed object: a ranged GET."""
    data = store.get_range(key, span[0], span[1])
    if len(data) != span[1]:
        raise ValueError(f"{store.describe(key)} is shorter than its marker says ({len(data)} of "
                         f"{span[1]} bytes at {span[0]}): delete the dedup prefix to redo it")
    return data


# -- index and decide --------------------------------------------------------------------------
def write_index(store: ObjectStore, plan: DedupPlan, shard: str, parts: dict[int, dg.Records]) -> None:
    """One shard's index: a chunk per non-empty partition."""
    write_packed(store, plan.index_key(shard), plan.index_done(shard),
                 {part: _arrays(*(getattr(rec, f) for f in _FIELDS)) for part, rec in parts.items()})


def indexed_parts(store: ObjectStore, plan: DedupPlan, shard: str) -> Spans | None:
    """The spans of a shard's finished index by partition; None while the shard is not indexed."""
    try:
        spans: Spans = read_marker(store, plan.index_done(shard))["chunks"]
    except ObjectNotFound:
        return None
    return spans


def read_partition(store: ObjectStore, plan: DedupPlan, part: int, parts_of: dict[str, Spans]) -> dg.Records:
    """Every shard's records of one partition (a ranged GET per shard that has any)."""
    found = []
    for shard in plan.shards:
        if part in parts_of[shard]:
            data = read_chunk(store, plan.index_key(shard), parts_of[shard][part])
            found.append(dg.Records(*_read_arrays(data, len(_FIELDS))))
    return dg.Records.concat(found, plan.hash_bytes)


def partition_edges(store: ObjectStore, plan: DedupPlan, part: int, parts_of: dict[str, Spans],
                    *, exact: bool, near: bool) -> np.ndarray:
    """The duplicate edges found within one partition."""
    rec = read_partition(store, plan, part, parts_of)
    found = [np.empty((0, 3), np.uint64)]
    if exact:
        found.append(dg.exact_edges(rec))
    if near:
        found.append(dg.near_edges(rec, plan.max_distance))
    return np.concatenate(found)


def write_adjacency(store: ObjectStore, plan: DedupPlan, part: int, edges: np.ndarray) -> None:
    """One partition's edges as adjacency rows, a chunk per node bucket."""
    chunks = {b: _npy(rows) for b, rows in cc.adjacency(edges, plan.partitions).items()}
    write_packed(store, plan.adj_key(part), plan.adj_done(part), chunks, edges=len(edges))


# -- resolve -----------------------------------------------------------------------------------
def adjacency_markers(store: ObjectStore, plan: DedupPlan) -> dict[int, dict[str, Any]]:
    """Every partition's adjacency marker (its spans by bucket), read once per rank for round 0."""
    return {p: read_marker(store, plan.adj_done(p)) for p in range(plan.partitions)}


def cc_round(store: ObjectStore, plan: DedupPlan, t: int, bucket: int,
             inbox: Sequence[tuple[str, tuple[int, int]]]) -> None:
    """Round t of one node bucket. Round 0 gathers the bucket's adjacency (inbox: its chunk in
    each partition's object) and labels each node from its neighbours; round t > 0 takes the
    labels sent to it in round t - 1 (inbox: its chunk in each sender's object). Then the
    changed labels go out, one chunk per receiving bucket."""
    parts = [_array(read_chunk(store, key, span)) for key, span in inbox]
    if t == 0:
        adj = np.concatenate([np.empty((0, 3), np.uint64), *parts])
        store.put(plan.cc_adj(bucket), _npy(adj))
        nodes, labels, changed = cc.start(adj)
    else:
        adj = _array(store.get(plan.cc_adj(bucket)))
        nodes, labels = _read_arrays(store.get(plan.cc_labels(t - 1, bucket)), 2)
        labels, changed = cc.absorb(nodes, labels, np.concatenate([np.empty((0, 2), np.uint64), *parts]))
    out = cc.outbox(adj, nodes, labels, changed, plan.partitions)
    store.put(plan.cc_labels(t, bucket), _arrays(nodes, labels))
    write_packed(store, plan.cc_out(t, bucket), plan.cc_done(t, bucket), {d: _npy(m) for d, m in out.items()},
                 nodes=len(nodes), sent=sum(len(m) for m in out.values()))


def round_inboxes(plan: DedupPlan, t: int, markers: dict[int, dict[str, Any]]
                  ) -> dict[int, list[tuple[str, tuple[int, int]]]]:
    """What each bucket reads in round t: its chunks of the adjacency objects (t = 0, markers
    of the decide pass) or of round t - 1's outboxes (markers of that round)."""
    key = plan.adj_key if t == 0 else (lambda b: plan.cc_out(t - 1, b))
    found: dict[int, list[tuple[str, tuple[int, int]]]] = {}
    for src, m in sorted(markers.items()):
        for dest, span in sorted(m["chunks"].items()):
            found.setdefault(dest, []).append((key(src), span))
    return found


def cc_markers(store: ObjectStore, plan: DedupPlan, t: int) -> dict[int, dict[str, Any]]:
    """Every bucket's marker of round t (who sent what to whom, how many nodes and labels)."""
    return {b: read_marker(store, plan.cc_done(t, b)) for b in range(plan.partitions)}


def write_final(store: ObjectStore, plan: DedupPlan, t: int, bucket: int) -> None:
    """A bucket's drops once its round-t labels are final, a chunk per shard group."""
    adj = _array(store.get(plan.cc_adj(bucket)))
    dropped, reasons = cc.decisions(adj, *_read_arrays(store.get(plan.cc_labels(t, bucket)), 2))
    groups = plan.groups_of(dropped)
    chunks = {int(g): _arrays(dropped[groups == g], reasons[groups == g])
              for g in np.unique(groups)}
    write_packed(store, plan.final_key(bucket), plan.final_done(bucket), chunks, dropped=len(dropped),
                 exact=int((reasons == dg.EXACT).sum()))


class DroppedLookup:
    """The final decisions, read one shard group at a time (the last group read is kept)."""

    def __init__(self, store: ObjectStore, plan: DedupPlan) -> None:
        self.store, self.plan = store, plan
        self.markers = {b: read_marker(store, plan.final_done(b)) for b in range(plan.partitions)}
        self._group: tuple[int, np.ndarray, np.ndarray] | None = None

    def totals(self) -> tuple[int, int]:
        """(duplicates, of which exact) over all shards."""
        return (sum(m["dropped"] for m in self.markers.values()),
                sum(m["exact"] for m in self.markers.values()))

    def of(self, shard: str) -> tuple[np.ndarray, np.ndarray]:
        """(key ranks, reasons) of a shard's dropped samples, its keys ranked in sorted order."""
        if shard not in self.plan.shard_rank:
            return np.empty(0, np.int64), np.empty(0, np.uint8)
        group = self.plan.group_of(shard)
        if self._group is None or self._group[0] != group:
            gids, reasons = [np.empty(0, np.uint64)], [np.empty(0, np.uint8)]
            for b, m in sorted(self.markers.items()):
                if group in m["chunks"]:
                    data = read_chunk(self.store, self.plan.final_key(b), m["chunks"][group])
                    g, r = _read_arrays(data, 2)
                    gids.append(g)
                    reasons.append(r)
            g, r = np.concatenate(gids), np.concatenate(reasons)
            order = np.argsort(g)
            self._group = (group, g[order], r[order])
        _, g, r = self._group
        s = np.uint64(self.plan.shard_rank[shard])
        lo, hi = np.searchsorted(g, [s << np.uint64(32), (s + np.uint64(1)) << np.uint64(32)])
        return (g[lo:hi] & np.uint64(0xFFFFFFFF)).astype(np.int64), r[lo:hi]


# -- units and waiting -------------------------------------------------------------------------
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


def done_units(store: ObjectStore, prefix: str, suffix: str = "._done") -> set[str]:
    """Names of the finished units under prefix: one listing."""
    return {k[len(prefix):-len(suffix)] for k in store.list(prefix) if k.endswith(suffix)}


def resolve(store: ObjectStore, plan: DedupPlan, mine: Sequence[int], *, steal_after: float, rank: int,
            clock: Callable[[], float], sleep: Callable[[float], None],
            on_round: Callable[[int, dict[int, dict[str, Any]]], None] = lambda t, markers: None,
            on_steal: Callable[[str], None] = lambda unit: None) -> int:
    """The resolve pass on this rank's buckets (`mine`) and, by waiting, everyone's: label rounds
    until no label is sent, then each bucket's drops. Returns the number of rounds."""
    wait: dict[str, Any] = {"steal_after": steal_after, "rank": rank, "clock": clock, "sleep": sleep,
                            "on_steal": on_steal}
    buckets, names = [f"{b:05d}" for b in range(plan.partitions)], [f"{b:05d}" for b in mine]
    t, inboxes = 0, round_inboxes(plan, 0, adjacency_markers(store, plan))
    while True:
        _round(store, plan, t, inboxes, buckets, names, wait)
        markers = cc_markers(store, plan, t)
        on_round(t, markers)
        if not sum(m["sent"] for m in markers.values()):  # nobody heard anything new: final
            break
        t += 1
        inboxes = round_inboxes(plan, t, markers)
    finish_units(buckets, names, lambda: done_units(store, f"{plan.prefix}final/"),
                 lambda b: write_final(store, plan, t, int(b)), **wait)
    return t + 1


def _round(store: ObjectStore, plan: DedupPlan, t: int, inboxes: dict[int, list[tuple[str, tuple[int, int]]]],
           buckets: list[str], names: list[str], wait: dict[str, Any]) -> None:
    finish_units(buckets, names, lambda: done_units(store, plan.cc_prefix(t)),
                 lambda b: cc_round(store, plan, t, int(b), inboxes.get(int(b), [])), **wait)
