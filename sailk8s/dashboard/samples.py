"""The sample browser's data: a done shard's samples (image, alt-text, recaption, scores)."""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import Any

from sailk8s.errors import ObjectNotFound
from sailk8s.ledger import ShardLedger
from sailk8s.store.base import ObjectStore

IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
MAX_SHARD_BYTES = 256 * 1024 * 1024  # a browser page never reads more than this of one shard


@dataclass
class BrowsedSample:
    """One sample of a shard: its key, metadata and where its image lies in the tar."""

    key: str
    meta: dict[str, Any] = field(default_factory=dict)
    image_ext: str | None = None
    stage: str = ""  # the stage whose shard holds it (an upstream one for a dropped sample)
    verdict: str = "kept"

    @property
    def alt_text(self) -> str:
        return str(self.meta.get("alt_text") or "")

    @property
    def caption(self) -> str:
        return str(self.meta.get("recaption") or self.meta.get("caption") or "")

    @property
    def scores(self) -> dict[str, Any]:
        scores = self.meta.get("scores")
        return scores if isinstance(scores, dict) else {}


def done_shards(store: ObjectStore, run: str, stage: str) -> list[str]:
    """The stage's done shard ids, in order (the ledger's markers)."""
    return ShardLedger(store, run, stage).done()


def _shard_bytes(store: ObjectStore, run: str, stage: str, shard: str) -> bytes | None:
    marker = ShardLedger(store, run, stage).read_marker(shard)
    if marker is None:
        return None
    try:
        return store.get(marker.output)
    except ObjectNotFound:
        return None


def _members(data: bytes) -> dict[str, dict[str, bytes]]:
    """key -> extension -> bytes, the webdataset way (split at the first dot of the base name)."""
    out: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                dirname, base = posixpath.split(info.name)
                stem, _, ext = base.partition(".")
                handle = tar.extractfile(info)
                if handle is not None:
                    out.setdefault(posixpath.join(dirname, stem), {})[ext.lower()] = handle.read()
    except tarfile.TarError:
        return out  # not a tar (or cut short): show what could be read
    return out


def read_samples(store: ObjectStore, run: str, stage: str, shard: str,
                 limit: int = 48) -> list[BrowsedSample]:
    """Up to `limit` samples of one done shard; [] when the shard has no marker or output."""
    data = _shard_bytes(store, run, stage, shard)
    if data is None or len(data) > MAX_SHARD_BYTES:
        return []
    out = []
    for key, files in list(_members(data).items())[:limit]:
        meta: dict[str, Any] = {}
        if "json" in files:
            try:
                loaded = json.loads(files["json"])
                meta = loaded if isinstance(loaded, dict) else {}
            except (ValueError, UnicodeDecodeError):
                meta = {}
        ext = next((e for e in IMAGE_TYPES if e in files), None)
        out.append(BrowsedSample(key=key, meta=meta, image_ext=ext, stage=stage))
    return out


def read_verdicts(store: ObjectStore, run: str, stage: str, upstream: str, shard: str,
                  limit: int = 48) -> list[BrowsedSample]:
    """The upstream stage's samples of `shard` (the same shard id: a stage keeps its input's shard
    ids), each marked kept or dropped by whether `stage` wrote it; a kept one shows its output
    (with the scores the stage added)."""
    kept = {s.key: s for s in read_samples(store, run, stage, shard, limit=10**9)}
    out = []
    for s in read_samples(store, run, upstream, shard, limit=limit):
        if s.key in kept:
            out.append(kept[s.key])
        else:
            s.verdict = "dropped"
            out.append(s)
    return out


def sample_image(store: ObjectStore, run: str, stage: str, shard: str, key: str) -> tuple[bytes, str] | None:
    """(image bytes, media type) of one sample, None when it has none."""
    data = _shard_bytes(store, run, stage, shard)
    if data is None or len(data) > MAX_SHARD_BYTES:
        return None
    files = _members(data).get(key, {})
    ext = next((e for e in IMAGE_TYPES if e in files), None)
    return (files[ext], IMAGE_TYPES[ext]) if ext else None
