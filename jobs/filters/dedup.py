"""Exact and near-duplicate removal across ALL shards, with the same survivors at any world size:
per-shard indexes of content and perceptual hashes, and one pure keep-first decision."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import imagehash
from PIL import Image

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"


@dataclass(frozen=True, order=True)
class IndexEntry:
    """One indexed sample: (shard, key) order is the keep-first order."""

    shard: str
    key: str
    content: str  # sha256 hex of the decoded pixels
    phash: int  # 64-bit perceptual hash


def content_hash(img: Image.Image) -> str:
    """sha256 of mode, size and pixels: re-encodes of the same pixels collide."""
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def perceptual_hash(img: Image.Image) -> int:
    """imagehash's 64-bit DCT pHash as an int."""
    return int(str(imagehash.phash(img, hash_size=8)), 16)


def _bands(value: int, n: int) -> list[tuple[int, int]]:
    """(band index, band bits) for n bands covering 64 bits."""
    out = []
    start = 0
    for i in range(n):
        width = 64 // n + (1 if i < 64 % n else 0)
        out.append((i, (value >> start) & ((1 << width) - 1)))
        start += width
    return out


def decide(entries: Iterable[IndexEntry], *, exact: bool = True, near: bool = True,
           max_distance: int = 4) -> dict[tuple[str, str], str]:
    """(shard, key) -> reason for every duplicate to drop; the first of each group is kept.

    Walks the entries in (shard id, key) order: a sample is an exact duplicate when an earlier kept
    one has its content hash, a near duplicate when an earlier kept one's pHash is within
    `max_distance` bits. Candidates come from the pigeonhole trick: with the 64 bits split into
    max_distance+1 bands, two hashes within the distance agree exactly on at least one band.
    """
    dropped: dict[tuple[str, str], str] = {}
    seen_content: set[str] = set()
    n_bands = max_distance + 1
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for e in sorted(entries):
        if exact and e.content in seen_content:
            dropped[(e.shard, e.key)] = EXACT_DUPLICATE
            continue
        bands = _bands(e.phash, n_bands)
        if near:
            candidates = {h for b in bands for h in buckets.get(b, ())}
            if any(bin(e.phash ^ h).count("1") <= max_distance for h in candidates):
                dropped[(e.shard, e.key)] = NEAR_DUPLICATE
                continue
            for b in bands:
                buckets[b].append(e.phash)
        seen_content.add(e.content)
    return dropped


def index_doc(entries: Sequence[IndexEntry]) -> dict[str, list[list[str]]]:
    """A shard's index as JSON: [[key, content, phash hex], ...]."""
    return {"entries": [[e.key, e.content, f"{e.phash:016x}"] for e in entries]}


def parse_index(shard: str, doc: dict[str, list[list[str]]]) -> list[IndexEntry]:
    """Inverse of index_doc."""
    return [IndexEntry(shard, key, content, int(ph, 16)) for key, content, ph in doc["entries"]]
