"""Shard completion markers: output first, marker last; one listing tells a rerun what is left."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sailk8s.errors import ObjectNotFound
from sailk8s.ledger.digest import sha256_file
from sailk8s.ledger.paths import StagePaths
from sailk8s.store.base import ObjectStore, validate_key

log = structlog.get_logger(__name__)

# Marker reads run in a small pool: S3 latency, not bandwidth, is what they cost.
_READ_WORKERS = 8


class ShardMarker(BaseModel):
    """What `done/<shard>.json` holds."""

    model_config = ConfigDict(extra="allow", frozen=True)

    shard: str
    output: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    samples: int = Field(ge=0)
    attempt: int = Field(ge=0)
    time: float  # epoch seconds (UTC) when the marker was written


class ShardLedger:
    """Which shards of one stage are done, from the markers under runs/<run>/<stage>/done/."""

    def __init__(self, store: ObjectStore, run: str, stage: str, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.paths = StagePaths(run, stage)
        self._clock = clock
        # Markers that parsed fine, by shard id: rank 0 polls pending() and need not re-read them.
        self._cache: dict[str, ShardMarker] = {}
        self._lock = threading.Lock()

    def mark_done(self, shard_id: str, output_key: str, sha256: str, samples: int, attempt: int,
                  **extra: Any) -> ShardMarker:
        """Record a finished shard; its output must already be in the store (else ObjectNotFound)."""
        key = self.paths.done(shard_id)
        validate_key(output_key)
        if not self.store.exists(output_key):
            raise ObjectNotFound(f"cannot mark shard {shard_id!r} done: its output "
                                 f"{self.store.describe(output_key)} does not exist")
        marker = ShardMarker(shard=shard_id, output=output_key, sha256=sha256, samples=samples,
                             attempt=attempt, time=self._clock(), **extra)
        self.store.put(key, marker.model_dump_json().encode())
        with self._lock:
            self._cache[shard_id] = marker
        return marker

    def done(self) -> list[str]:
        """Ids of shards with a marker (one listing; outputs not checked), sorted."""
        ids = (self.paths.shard_id_of(k) for k in self.store.list(self.paths.done_prefix))
        return sorted(i for i in ids if i is not None)

    def read_marker(self, shard_id: str) -> ShardMarker | None:
        """The shard's marker, or None when absent or unreadable (a corrupt marker is not done)."""
        try:
            raw = self.store.get(self.paths.done(shard_id))
        except ObjectNotFound:
            return None
        try:
            marker = ShardMarker.model_validate_json(raw)
        except ValidationError as err:
            log.warning("ignoring unreadable shard marker", shard=shard_id,
                        key=self.paths.done(shard_id), error=str(err).splitlines()[0])
            return None
        if marker.shard != shard_id:
            log.warning("ignoring shard marker for another shard", shard=shard_id, marker_shard=marker.shard)
            return None
        return marker

    def pending(self, all_shards: Iterable[str], outputs: Mapping[str, str] | None = None,
                *, verify: bool = False) -> list[str]:
        """Shards of all_shards (in their order) that are not done.

        Done means: a marker exists (ONE listing of done/) and its output exists (one listing
        per distinct output directory, usually one). The output key comes from `outputs` when
        given, else from the marker itself (read once per shard, then cached). With verify=True
        every output is downloaded and its sha256 compared with the marker's.
        """
        wanted = list(dict.fromkeys(all_shards))
        marked = set(self.done()).intersection(wanted)
        if not marked:
            return wanted
        expected = self._expected_outputs(marked, outputs, fresh=verify)
        present = self._existing(set(expected.values()))
        ok = {sid for sid, out in expected.items() if out in present}
        if verify:
            ok = self._verified(ok)
        missing = sorted(marked.intersection(expected) - ok)
        if missing:
            log.warning("shards marked done but their output is missing or corrupt; redoing them",
                        stage=self.paths.stage, shards=missing[:10], count=len(missing))
        return [sid for sid in wanted if sid not in ok]

    def invalidate(self, shard_id: str) -> None:
        """Forget a shard (delete its marker) so the next run redoes it."""
        self.store.delete(self.paths.done(shard_id))
        with self._lock:
            self._cache.pop(shard_id, None)

    # -- helpers ----------------------------------------------------------------------------
    def _expected_outputs(self, marked: set[str], outputs: Mapping[str, str] | None,
                          fresh: bool) -> dict[str, str]:
        """shard id -> output key for marked shards whose output is known or whose marker reads."""
        result: dict[str, str] = {}
        if outputs is not None and not fresh:
            result = {sid: outputs[sid] for sid in marked if sid in outputs}
        for sid, marker in self._markers(marked - result.keys(), fresh).items():
            if outputs is not None and sid in outputs and outputs[sid] != marker.output:
                log.warning("shard marker names another output; redoing the shard", shard=sid,
                            marker_output=marker.output, expected=outputs[sid])
                continue
            result[sid] = marker.output
        return result

    def _markers(self, ids: set[str], fresh: bool) -> dict[str, ShardMarker]:
        with self._lock:
            known = {} if fresh else {sid: self._cache[sid] for sid in ids if sid in self._cache}
        todo = sorted(ids - known.keys())
        if todo:
            with ThreadPoolExecutor(max_workers=min(_READ_WORKERS, len(todo))) as pool:
                for sid, marker in zip(todo, pool.map(self.read_marker, todo), strict=True):
                    if marker is not None:
                        known[sid] = marker
            with self._lock:
                self._cache.update({sid: known[sid] for sid in todo if sid in known})
        return known

    def _existing(self, keys: set[str]) -> set[str]:
        """Which of keys exist, by listing each distinct parent directory once."""
        dirs = sorted({k.rpartition("/")[0] for k in keys})
        present: set[str] = set()
        for d in dirs:
            present.update(self.store.list(d + "/" if d else ""))
        return present & keys

    def _verified(self, ids: set[str]) -> set[str]:
        """Of ids, those whose output's sha256 matches the marker (downloads every output)."""
        good: set[str] = set()
        markers = self._markers(ids, fresh=True)
        with tempfile.TemporaryDirectory(prefix="sail-verify-") as tmp:
            for sid in sorted(ids):
                marker = markers.get(sid)
                if marker is None:
                    continue
                local = Path(tmp) / "output"
                try:
                    self.store.get_file(marker.output, local)
                except ObjectNotFound:
                    continue
                digest = sha256_file(local)
                if digest == marker.sha256:
                    good.add(sid)
                else:
                    log.warning("shard output checksum mismatch; redoing the shard", shard=sid,
                                output=marker.output, expected=marker.sha256, actual=digest)
        return good

