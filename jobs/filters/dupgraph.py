"""Partitioned dedup as array math: index records by partition, duplicate edges, components."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXACT, NEAR = 0, 1  # edge kinds
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-spread 64-bit hash of each value."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64, copy=True)
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def gid(shard_rank: int | np.ndarray, key_rank: int | np.ndarray) -> np.ndarray:
    """The global id: shard rank in the high 32 bits, key rank in the low 32.

    Every sample has a global id `gid = shard_rank << 32 | key_rank` (its shard's place among the
    input shards, its key's place among the shard's sorted keys), so "keep the smallest (shard,
    key)" is "keep the smallest gid".
    """
    return (np.asarray(shard_rank, dtype=np.uint64) << np.uint64(32)) | np.asarray(key_rank, dtype=np.uint64)


def content_words(digests: Sequence[bytes]) -> np.ndarray:
    """(N, 2) uint64 of the first 128 bits of each content digest (collision odds ~1e-22 at 3e8)."""
    return np.frombuffer(b"".join(d[:16] for d in digests), dtype=">u8").astype(np.uint64).reshape(-1, 2)


def phash_bytes(hashes: Sequence[bytes]) -> np.ndarray:
    """(N, B) uint8 of each perceptual hash's bytes (all of one length)."""
    return np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(len(hashes), -1)


def bands(nbytes: int, max_distance: int) -> list[tuple[int, int]]:
    """(start, end) byte ranges of the max_distance+1 pigeonhole bands over a hash of nbytes."""
    n = max_distance + 1
    if n > nbytes:
        raise ValueError(f"max_distance {max_distance} needs {n} bands but the hash has {nbytes} bytes: "
                         f"use a longer hash (hash_size) or a smaller distance")
    out, start = [], 0
    for i in range(n):
        width = nbytes // n + (1 if i < nbytes % n else 0)
        out.append((start, start + width))
        start += width
    return out


def band_keys(phashes: np.ndarray, max_distance: int) -> np.ndarray:
    """(N, max_distance+1) uint64 bucket keys: a mix of (band index, the band's bytes)."""
    n, nbytes = phashes.shape
    keys = np.empty((n, max_distance + 1), dtype=np.uint64)
    for b, (start, end) in enumerate(bands(nbytes, max_distance)):
        width = end - start
        padded = np.zeros((n, -(-width // 8) * 8), dtype=np.uint8)
        padded[:, :width] = phashes[:, start:end]
        words = padded.view(np.uint64)
        key = mix64(np.full(n, b + 1, dtype=np.uint64))
        for w in range(words.shape[1]):
            key = mix64(key ^ words[:, w])
        keys[:, b] = key
    return keys


@dataclass(frozen=True)
class Records:
    """Index records of one partition: exact (gid, content) and near (gid, band key, phash)."""

    exact_gid: np.ndarray  # (E,) uint64
    content: np.ndarray  # (E, 2) uint64
    near_gid: np.ndarray  # (M,) uint64
    band: np.ndarray  # (M,) uint64 bucket key
    phash: np.ndarray  # (M, B) uint8

    @classmethod
    def empty(cls, phash_bytes_: int) -> Records:
        u = np.empty(0, dtype=np.uint64)
        return cls(u, np.empty((0, 2), np.uint64), u, u, np.empty((0, phash_bytes_), np.uint8))

    @classmethod
    def concat(cls, parts: Sequence[Records], phash_bytes_: int) -> Records:
        if not parts:
            return cls.empty(phash_bytes_)
        return cls(np.concatenate([p.exact_gid for p in parts]), np.concatenate([p.content for p in parts]),
                   np.concatenate([p.near_gid for p in parts]), np.concatenate([p.band for p in parts]),
                   np.concatenate([p.phash for p in parts]))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.exact_gid, self.content, self.near_gid, self.band, self.phash))


def partitioned(gids: np.ndarray, contents: np.ndarray | None, phashes: np.ndarray | None,
                max_distance: int, partitions: int) -> dict[int, Records]:
    """One shard's records split by partition: exact by content, near by bucket (one per band).

    The pure steps, each on numpy arrays:

        exact, near = index_records(gids, contents, phashes, max_distance, partitions)
        part_of(exact)/part_of(near) -> the partition of every record
        edges = exact_edges(exact_part) + near_edges(near_part, max_distance)   # within one partition
        dropped, reasons = resolve(edges)        # connected components, smallest gid of each kept

    Near duplicates use the pigeonhole principle: the hash's bytes are split into max_distance+1
    bands; two hashes within the distance agree on at least one band, so they meet in that band's
    bucket. Buckets are keyed by a 64-bit mix of (band, band bytes) and candidates are verified by
    their exact Hamming distance (popcount), so a bucket collision never makes a false edge. A pair
    that agrees on several bands meets in several buckets (often in different partitions); only the
    bucket of the first band they agree on gives its edge, so each pair is one edge in all.
    """
    nb = 0 if phashes is None else phashes.shape[1]
    none = np.empty(0, np.uint64)
    out: dict[int, list[Records]] = {}
    if contents is not None and len(gids):
        parts = (contents[:, 1] % np.uint64(partitions)).astype(np.int64)
        for p in np.unique(parts):
            m = parts == p
            out.setdefault(int(p), []).append(
                Records(gids[m], contents[m], none, none, np.empty((0, nb), np.uint8)))
    if phashes is not None and len(gids):
        keys = band_keys(phashes, max_distance)
        flat_keys = keys.reshape(-1)
        flat_rows = np.repeat(np.arange(len(gids)), keys.shape[1])
        parts = (mix64(flat_keys) % np.uint64(partitions)).astype(np.int64)
        for p in np.unique(parts):
            m = parts == p
            rows = flat_rows[m]
            out.setdefault(int(p), []).append(
                Records(none, np.empty((0, 2), np.uint64), gids[rows], flat_keys[m], phashes[rows]))
    return {p: Records.concat(rs, nb) for p, rs in out.items()}


def exact_edges(r: Records) -> np.ndarray:
    """(K, 3) uint64 edges (member, smallest gid of its content group, EXACT) within a partition."""
    if len(r.exact_gid) < 2:
        return np.empty((0, 3), dtype=np.uint64)
    order = np.lexsort((r.exact_gid, r.content[:, 1], r.content[:, 0]))
    c, g = r.content[order], r.exact_gid[order]
    same = np.all(c[1:] == c[:-1], axis=1)
    starts = np.flatnonzero(np.concatenate(([True], ~same)))
    first = np.repeat(g[starts], np.diff(np.concatenate((starts, [len(g)]))))
    m = g != first
    return np.stack([g[m], first[m], np.full(int(m.sum()), EXACT, np.uint64)], axis=1)


def near_edges(r: Records, max_distance: int) -> np.ndarray:
    """(K, 3) uint64 edges (a, b, NEAR) between records of one bucket within max_distance bits."""
    if len(r.near_gid) < 2:
        return np.empty((0, 3), dtype=np.uint64)
    order = np.lexsort((r.near_gid, *r.phash.T[::-1], r.band))
    band, g, ph = r.band[order], r.near_gid[order], r.phash[order]
    # Records with the very same hash (e.g. thousands of blank images) are chained to their
    # bucket's first copy and leave the pairwise search: it stays linear in a crowded bucket.
    same = np.concatenate(([False], (band[1:] == band[:-1]) & np.all(ph[1:] == ph[:-1], axis=1)))
    head = np.maximum.accumulate(np.where(~same, np.arange(len(g)), 0))
    first = _first_band(ph[same], max_distance) == band[same]  # equal hashes: band 0's bucket only
    found = [np.stack([g[same][first], g[head[same]][first]], axis=1)]
    band, g, ph = band[~same], g[~same], ph[~same]
    k = 1
    while k < len(g):
        same = band[k:] == band[:-k]  # records k apart in sort order share a bucket
        if not same.any():
            break
        i = np.flatnonzero(same)
        a, b = i, i + k
        dist = np.bitwise_count(ph[a] ^ ph[b]).sum(axis=1)
        close = np.flatnonzero((dist <= max_distance) & (g[a] != g[b]))
        a, b = a[close], b[close]
        here = _first_band(ph[a], max_distance, ph[b]) == band[a]  # their first common band's bucket
        found.append(np.stack([g[b[here]], g[a[here]]], axis=1))
        k += 1
    pairs = np.concatenate(found)
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)  # once, even where two band keys collide
    return np.concatenate([pairs, np.full((len(pairs), 1), NEAR, np.uint64)], axis=1).astype(np.uint64)


def _first_band(ph: np.ndarray, max_distance: int, other: np.ndarray | None = None) -> np.ndarray:
    """The bucket key of the first band on which each row of ph agrees with the same row of other
    (other None: an equal hash, so band 0). Within max_distance bits there is always one."""
    keys = band_keys(ph, max_distance)
    if other is None or not len(ph):
        return keys[:, 0]
    spans = bands(ph.shape[1], max_distance)
    agree = np.stack([np.all(ph[:, s:e] == other[:, s:e], axis=1) for s, e in spans], axis=1)
    return keys[np.arange(len(ph)), agree.argmax(axis=1)]


def resolve(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dropped gids sorted, their reasons: EXACT or NEAR) from all duplicate edges.

    Connected components over every edge; each keeps its smallest gid. A dropped sample is an
    exact duplicate when it has the kept sample's very content (same exact-edge component),
    else a near duplicate. A pure function of the edge set: any partitioning, any world size.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(edges) == 0:
        return np.empty(0, np.uint64), np.empty(0, np.uint8)
    nodes, inv = np.unique(edges[:, :2], return_inverse=True)
    inv = inv.reshape(-1, 2)
    n = len(nodes)

    def labels(rows: np.ndarray) -> np.ndarray:
        graph = coo_matrix((np.ones(len(rows), np.int8), (rows[:, 0], rows[:, 1])), shape=(n, n))
        return connected_components(graph, directed=False)[1]

    comp = labels(inv)
    # nodes are sorted by gid, so the first node of each component (in node order) is its smallest
    first_of = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(first_of, comp, np.arange(n))
    root = first_of[comp]
    same_content = labels(inv[edges[:, 2] == EXACT])
    dropped = np.flatnonzero(root != np.arange(n))
    reasons = np.where(same_content[dropped] == same_content[root[dropped]], EXACT, NEAR).astype(np.uint8)
    return nodes[dropped], reasons


def content_digest(mode: str, size: tuple[int, int], pixels: bytes) -> bytes:
    """sha256 of mode, size and pixels: identical for identical pixels however encoded."""
    h = hashlib.sha256(f"{mode}:{size[0]}x{size[1]}:".encode())
    h.update(pixels)
    return h.digest()
