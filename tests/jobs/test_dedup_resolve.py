"""The resolve pass in the store: label rounds by node bucket, the same drops at any world size,
and a rank that dies at any write redone to byte-identical decisions."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from jobs.filters import dedupstore
from jobs.filters import dupgraph as dg
from sailk8s.store.local import LocalStore

SHARDS, PARTITIONS = 6, 5


def graph(seed: int = 0, n: int = 300) -> np.ndarray:
    """Duplicate edges as the decide pass gives them: exact stars to each content group's smallest
    gid, and near pairs (smaller gid first), over gids spread across SHARDS shards."""
    rng = np.random.default_rng(seed)
    gids = np.sort(dg.gid(rng.integers(0, SHARDS, n), rng.permutation(n)))
    group = rng.integers(0, n // 4, n)
    exact = [(gids[m], gids[np.flatnonzero(group == group[m])[0]]) for m in range(n)
             if np.flatnonzero(group == group[m])[0] != m and rng.random() < 0.5]
    a, b = rng.integers(0, n, n // 3), rng.integers(0, n, n // 3)
    near = [(gids[min(i, j)], gids[max(i, j)]) for i, j in zip(a, b, strict=True) if i != j]
    rows = [(u, v, dg.EXACT) for u, v in exact] + [(u, v, dg.NEAR) for u, v in near]
    return np.array(rows, dtype=np.uint64)


def plan() -> dedupstore.DedupPlan:
    return dedupstore.DedupPlan("d/", tuple(f"shard-{s}" for s in range(SHARDS)), PARTITIONS, 4, 8)


def decided(root: Path, edges: np.ndarray) -> LocalStore:
    """A store holding what the decide pass leaves: each partition's edges as adjacency files."""
    store, p = LocalStore(root), plan()
    for part, chunk in enumerate(np.array_split(edges, PARTITIONS)):
        dedupstore.write_adjacency(store, p, part, chunk)
    return store


def resolve(store: LocalStore, world: int) -> int:
    """The resolve pass with `world` ranks side by side (threads); the number of rounds."""
    p, rounds, errors = plan(), [], []

    def rank(r: int) -> None:
        try:
            rounds.append(dedupstore.resolve(store, p, p.owned(r, world), steal_after=60.0, rank=r,
                                             clock=time.monotonic, sleep=lambda s: time.sleep(0.01)))
        except BaseException as err:  # reported below, not lost in a thread
            errors.append(err)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    assert len(set(rounds)) == 1
    return rounds[0]


def final_files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted((root / "d/final").rglob("*"))
            if f.is_file()}


def looked_up(store: LocalStore) -> dict[int, int]:
    """gid -> reason, shard by shard, as the apply pass reads them."""
    lookup, out = dedupstore.DroppedLookup(store, plan()), {}
    for s, shard in enumerate(plan().shards):
        ranks, reasons = lookup.of(shard)
        out.update({int(dg.gid(s, int(k))): int(r) for k, r in zip(ranks, reasons, strict=True)})
    return out


def test_the_drops_are_dupgraph_resolve_at_world_sizes_one_two_and_three(tmp_path: Path) -> None:
    edges = graph()
    dropped, reasons = dg.resolve(edges)
    want = dict(zip(map(int, dropped), map(int, reasons), strict=True))
    assert dg.EXACT in want.values() and dg.NEAR in want.values()
    files = []
    for world in (1, 2, 3):
        store = decided(tmp_path / f"w{world}", edges)
        assert resolve(store, world) >= 3
        assert looked_up(store) == want
        assert dedupstore.DroppedLookup(store, plan()).totals() == (len(want), sum(
            r == dg.EXACT for r in want.values()))
        files.append(final_files(tmp_path / f"w{world}"))
    assert files[0] and files[0] == files[1] == files[2]


def test_no_edges_resolves_to_no_drops(tmp_path: Path) -> None:
    store = decided(tmp_path, np.empty((0, 3), np.uint64))
    assert resolve(store, 2) == 1
    assert looked_up(store) == {} and dedupstore.DroppedLookup(store, plan()).totals() == (0, 0)


class Crash(Exception):
    pass


class CrashingStore(LocalStore):
    """A LocalStore whose process 'dies' (raises) at its n-th write, the write not done; it
    records the keys it wrote (no fsync: a raise is not a power cut)."""

    def __init__(self, root: Path, at: int | None = None) -> None:
        super().__init__(root, durable=False)
        self.at, self.wrote = at, list[str]()

    def put(self, key: str, data: bytes) -> None:
        if len(self.wrote) == self.at:
            raise Crash(key)
        self.wrote.append(key)
        super().put(key, data)


def crash_points(keys: list[str]) -> list[int]:
    """The first, middle and last write of each kind of file (digits aside): every kind of unit
    (gather, round, final) is cut before its files, between them, and before its marker."""
    kinds: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        kinds.setdefault(re.sub(r"[0-9]+", "#", key), []).append(i)
    return sorted({i for at in kinds.values() for i in (at[0], at[len(at) // 2], at[-1])})


def test_a_rank_killed_at_any_kind_of_write_of_the_resolve_is_redone_byte_identically(tmp_path: Path) -> None:
    edges = graph(seed=1, n=120)
    ref = tmp_path / "ref"
    decided(ref, edges)
    recorder = CrashingStore(ref)
    assert resolve(recorder, 1) >= 3
    want = final_files(ref)
    points = crash_points(recorder.wrote)
    assert len(points) >= 15  # gathered adjacency, labels, messages, markers, final files and markers
    base = tmp_path / "base"
    decided(base, edges)
    for at in points:
        run = tmp_path / f"at{at}"
        shutil.copytree(base, run)
        with pytest.raises(Crash):
            resolve(CrashingStore(run, at), 1)
        assert resolve(CrashingStore(run), 1) >= 3  # the rerun, on what the dead one left
        assert final_files(run) == want, recorder.wrote[at]
        shutil.rmtree(run)


def test_unit_arrays_are_plain_npy_blobs_that_round_trip() -> None:
    # No zip (an .npz's zip64 fields differ between Python releases: a unit written in a
    # container then differed from the same unit written on the host).
    gids, reasons = np.arange(5, dtype=np.uint64), np.ones(5, np.uint8)
    blob = dedupstore._arrays(gids, reasons)
    assert not blob.startswith(b"PK") and blob == dedupstore._arrays(gids.copy(), reasons.copy())
    back = dedupstore._read_arrays(blob, 2)
    assert back[0].tolist() == list(range(5)) and back[1].dtype == np.uint8
    with pytest.raises(ValueError, match="bytes after the 1 arrays"):
        dedupstore._read_arrays(blob, 1)
