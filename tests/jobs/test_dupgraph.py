"""The partitioned dedup's array steps (and its label rounds) against a brute-force oracle, at any
partition count."""

from __future__ import annotations

import random

import numpy as np
import pytest

from jobs.filters import dupcc
from jobs.filters import dupgraph as dg


def corpus(n: int, nbytes: int, max_distance: int,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gids, contents, phashes) with planted exact copies, near copies and chains of near copies."""
    rng = random.Random(seed)
    gids, contents, hashes = [], [], []
    for i in range(n):
        shard, key = divmod(i, 37)
        gids.append(int(dg.gid(shard, key)))
        r = rng.random()
        if i > 0 and r < 0.08:  # an exact copy of an earlier sample
            j = rng.randrange(i)
            contents.append(contents[j])
            hashes.append(hashes[j])
        elif i > 0 and r < 0.2:  # a near copy: an earlier hash with 1..max_distance bits flipped
            j = rng.randrange(i)
            h = bytearray(hashes[j])
            for bit in rng.sample(range(nbytes * 8), rng.randint(1, max_distance)):
                h[bit // 8] ^= 1 << (bit % 8)
            contents.append(rng.randbytes(16))
            hashes.append(bytes(h))
        else:
            contents.append(rng.randbytes(16))
            hashes.append(rng.randbytes(nbytes))
    return (np.array(gids, dtype=np.uint64), dg.content_words(contents), dg.phash_bytes(hashes))


def brute_force(gids: np.ndarray, contents: np.ndarray, phashes: np.ndarray,
                max_distance: int) -> dict[int, int]:
    """gid -> reason for every dropped sample, by union-find over all O(n^2) pairs."""
    n = len(gids)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in range(n):
        for j in range(i + 1, n):
            same = bool(np.all(contents[i] == contents[j]))
            close = int(np.bitwise_count(phashes[i] ^ phashes[j]).sum()) <= max_distance
            if same or close:
                parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    out = {}
    for members in comps.values():
        keep = min(members, key=lambda i: int(gids[i]))
        for i in members:
            if i != keep:
                exact = bool(np.all(contents[i] == contents[keep]))
                out[int(gids[i])] = dg.EXACT if exact else dg.NEAR
    return out


def run_passes(gids: np.ndarray, contents: np.ndarray, phashes: np.ndarray, max_distance: int,
               partitions: int, shards: int = 3, *, rounds: bool = False) -> dict[int, int]:
    """Index (per shard), edges (per partition), resolve: as the stage's ranks would (rounds:
    by label rounds over `partitions` node buckets, else by the in-memory dupgraph.resolve)."""
    by_part: dict[int, list[dg.Records]] = {}
    for rows in np.array_split(np.arange(len(gids)), shards):
        for p, rec in dg.partitioned(gids[rows], contents[rows], phashes[rows], max_distance,
                                     partitions).items():
            by_part.setdefault(p, []).append(rec)
    edges = [np.empty((0, 3), np.uint64)]
    for recs in by_part.values():
        r = dg.Records.concat(recs, phashes.shape[1])
        edges += [dg.exact_edges(r), dg.near_edges(r, max_distance)]
    if rounds:
        dropped, reasons, _ = dupcc.components(np.concatenate(edges), partitions)
    else:
        dropped, reasons = dg.resolve(np.concatenate(edges))
    return dict(zip(map(int, dropped), map(int, reasons), strict=True))


@pytest.mark.parametrize(("nbytes", "max_distance"), [(8, 4), (32, 8), (32, 2)])
def test_partitioned_passes_match_brute_force_at_any_partition_count(nbytes: int, max_distance: int) -> None:
    gids, contents, phashes = corpus(400, nbytes, max_distance)
    expected = brute_force(gids, contents, phashes, max_distance)
    assert expected and any(r == dg.NEAR for r in expected.values()) and dg.EXACT in expected.values()
    for partitions in (1, 4, 7):
        assert run_passes(gids, contents, phashes, max_distance, partitions) == expected, partitions
        got = run_passes(gids, contents, phashes, max_distance, partitions, rounds=True)
        assert got == expected, partitions


@pytest.mark.parametrize(("nbytes", "max_distance"), [(8, 4), (32, 8)])
def test_each_close_pair_is_one_edge_across_all_partitions(nbytes: int, max_distance: int) -> None:
    # A pair agreeing on several bands meets in several buckets; only its first common band's
    # bucket gives the edge, so the edges (which every rank reads to resolve) are not multiplied.
    gids, contents, phashes = corpus(400, nbytes, max_distance)
    for partitions in (1, 7):
        edges = [np.empty((0, 3), np.uint64)]
        for rec in dg.partitioned(gids, contents, phashes, max_distance, partitions).values():
            edges.append(dg.near_edges(rec, max_distance))
        near = np.concatenate(edges)
        pairs = {tuple(sorted(map(int, e[:2]))) for e in near}
        assert pairs and len(pairs) == len(near), partitions
        close = {(int(gids[i]), int(gids[j])) for i in range(len(gids)) for j in range(i + 1, len(gids))
                 if int(np.bitwise_count(phashes[i] ^ phashes[j]).sum()) <= max_distance}
        assert pairs <= close


def test_a_chain_of_near_copies_is_one_component_keeping_its_smallest_gid() -> None:
    base = bytes(8)
    hashes = [base, bytes([0b11, 0, 0, 0, 0, 0, 0, 0]), bytes([0b1111, 0, 0, 0, 0, 0, 0, 0])]
    gids = dg.gid(np.array([2, 0, 1]), np.array([0, 5, 3]))  # the middle link has the smallest gid
    contents = dg.content_words([bytes([i]) * 16 for i in range(3)])
    for rounds in (False, True):
        got = run_passes(gids, contents, dg.phash_bytes(hashes), max_distance=2, partitions=3, shards=1,
                         rounds=rounds)
        assert got == {int(gids[0]): dg.NEAR, int(gids[2]): dg.NEAR}  # 0 and 2 are 4 bits apart, yet joined


def test_label_rounds_follow_a_long_chain_to_its_smallest_gid() -> None:
    # A path 0 - 1 - ... - 40 whose smallest gid sits at one end: labels must travel the whole
    # diameter, one hop a round, whatever the bucket count.
    order = np.random.default_rng(3).permutation(41).astype(np.uint64)
    gids = np.sort(order)  # gids[0] is the smallest; the path visits them in `order`
    path = np.stack([order[:-1], order[1:], np.full(40, dg.NEAR, np.uint64)], axis=1)
    want = dg.resolve(path)
    for buckets in (1, 5, 64):
        dropped, reasons, rounds = dupcc.components(path, buckets)
        assert np.array_equal(dropped, want[0]) and np.array_equal(reasons, want[1])
        assert set(map(int, dropped)) == set(map(int, gids[1:])) and rounds <= 42


def test_a_label_message_for_a_foreign_node_is_an_error_not_a_silent_drop() -> None:
    nodes = np.array([5, 9], np.uint64)
    with pytest.raises(ValueError, match="does not hold"):
        dupcc.absorb(nodes, nodes.copy(), np.array([[7, 1]], np.uint64))


def test_too_many_bands_for_the_hash_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="needs 9 bands but the hash has 8 bytes"):
        dg.bands(8, 8)
