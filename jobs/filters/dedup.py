"""Exact and near-duplicate removal across all shards, partitioned over the stage's ranks."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import imagehash
import numpy as np
from PIL import Image

from jobs.filters import dupgraph

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
REASONS = {dupgraph.EXACT: EXACT_DUPLICATE, dupgraph.NEAR: NEAR_DUPLICATE}


def content_hash(img: Image.Image) -> bytes:
    """sha256 of mode, size and pixels: re-encodes of the same pixels collide."""
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.digest()


def perceptual_hash(img: Image.Image, hash_size: int = 8) -> bytes:
    """imagehash's DCT pHash (hash_size**2 bits) as bytes."""
    return bytes.fromhex(str(imagehash.phash(img, hash_size=hash_size)))


def decide(entries: Sequence[tuple[str, str, bytes, bytes]], *, exact: bool = True, near: bool = True,
           max_distance: int = 4) -> dict[tuple[str, str], str]:
    """(shard, key) -> reason for every duplicate among (shard, key, content hash, pHash) entries.

    The whole decision in memory (tests, small corpora): the stage runs the same steps
    partitioned over its ranks (jobs.filters.dedupstore). Each connected component of exact
    and near edges keeps its smallest (shard, key).
    """
    if not entries:
        return {}
    ordered = sorted(entries)
    shard_rank = {s: i for i, s in enumerate(sorted({e[0] for e in ordered}))}
    seen: dict[str, int] = {}
    ranks = []
    for s, _, _, _ in ordered:  # ordered by (shard, key): ranks count up within each shard
        ranks.append(seen.get(s, 0))
        seen[s] = ranks[-1] + 1
    gids = dupgraph.gid(np.array([shard_rank[s] for s, _, _, _ in ordered]), np.array(ranks))
    contents = dupgraph.content_words([c for _, _, c, _ in ordered]) if exact else None
    phashes = dupgraph.phash_bytes([p for _, _, _, p in ordered]) if near else None
    nbytes = len(ordered[0][3])
    records = dupgraph.Records.concat(
        list(dupgraph.partitioned(gids, contents, phashes, max_distance, 1).values()), nbytes)
    edges = [np.empty((0, 3), np.uint64)]
    edges += [dupgraph.exact_edges(records)] if exact else []
    edges += [dupgraph.near_edges(records, max_distance)] if near else []
    dropped, reasons = dupgraph.resolve(np.concatenate(edges))
    where = {int(g): (s, k) for g, (s, k, _, _) in zip(gids, ordered, strict=True)}
    return {where[int(g)]: REASONS[int(r)] for g, r in zip(dropped, reasons, strict=True)}
