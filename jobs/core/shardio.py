"""One shard of work: its unit, its input's samples, its output, and what happened to them."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from PIL import Image

from jobs.core.shards import (
    DEFAULT_MAX_PIXELS,
    BadSample,
    BadSampleError,
    Sample,
    ShardWriter,
    read_shard,
    shard_name,
)
from sailk8s.errors import InputError, ObjectNotFound
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)


@dataclass(frozen=True, order=True)
class WorkUnit:
    """One shard of work: its id (ledger key), input key (None for generators), output key."""

    shard_id: str
    output_key: str
    input_key: str | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        """A producer-specific parameter of this unit."""
        return dict(self.params).get(name, default)


def list_input_shards(store: ObjectStore, prefixes: Sequence[str]) -> list[tuple[str, str]]:
    """(shard_id, key) of every `*.tar` directly under each prefix, in order.

    One input prefix keeps the file stems as ids (shard-000003); with several, ids are
    renumbered over the concatenation so they stay unique.
    """
    if not prefixes:
        raise InputError("the stage has no inputs: set `inputs:` to the prefix of its input shards")
    found: list[list[str]] = []
    for prefix in prefixes:
        base = prefix.rstrip("/") + "/"
        try:
            keys = [k for k in store.list(base) if k.endswith(".tar") and "/" not in k[len(base):]]
        except ObjectNotFound:
            keys = []
        if not keys:
            raise InputError(f"input prefix {prefix!r} has no shards (*.tar) in {store.describe(base)}")
        found.append(sorted(keys))
    if len(found) == 1:
        return [(k.rsplit("/", 1)[-1][: -len(".tar")], k) for k in found[0]]
    flat = [k for keys in found for k in keys]
    return [(shard_name(i)[: -len(".tar")], k) for i, k in enumerate(flat)]


@dataclass
class ShardStats:
    """What happened to one shard's samples; summed across shards into the report.

    The accounting rule: samples_in == samples_out + sum(dropped). A bad sample found while
    reading counts as in and as dropped under its reason (see jobs.core.shards).
    """

    samples_in: int = 0
    samples_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)  # shard-level: empty/truncated shard
    extra: Counter[str] = field(default_factory=Counter)  # stage-specific numeric counters
    # A stage-specific JSON summary of the shard (e.g. caption quality), merged by the stage itself.
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (stats files); the summary only where the stage wrote one."""
        doc = {"samples_in": self.samples_in, "samples_out": self.samples_out,
               "dropped": dict(sorted(self.dropped.items())), "events": dict(sorted(self.events.items())),
               "extra": dict(sorted(self.extra.items()))}
        return {**doc, "summary": self.summary} if self.summary else doc

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ShardStats:
        """Inverse of to_json."""
        return cls(int(data.get("samples_in", 0)), int(data.get("samples_out", 0)),
                   Counter(data.get("dropped", {})), Counter(data.get("events", {})),
                   Counter(data.get("extra", {})), dict(data.get("summary", {})))

    def add(self, other: ShardStats) -> None:
        """Accumulate another shard's stats."""
        self.samples_in += other.samples_in
        self.samples_out += other.samples_out
        self.dropped.update(other.dropped)
        self.events.update(other.events)
        self.extra.update(other.extra)


class ShardInput:
    """Iterates one local input shard's samples; bad ones are counted as dropped and skipped."""

    def __init__(self, unit: WorkUnit, path: Path | None, stats: ShardStats, tick: Callable[[], None],
                 required: Sequence[str] = (), need_image: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.unit, self.path, self.stats = unit, path, stats
        self.required, self.need_image, self.max_pixels = required, need_image, max_pixels
        self._tick = tick

    @property
    def shard_id(self) -> str:
        return self.unit.shard_id

    def __iter__(self) -> Iterator[Sample]:
        if self.path is None:
            return
        for item in read_shard(self.path, required=self.required, need_image=self.need_image):
            if isinstance(item, BadSample):
                if item.key == "":  # shard-level: no sample behind it
                    self.stats.events[item.reason] += 1
                    log.warning("shard problem", shard=self.shard_id, reason=item.reason, detail=item.detail)
                else:
                    self.stats.samples_in += 1
                    self.stats.dropped[item.reason] += 1
                continue
            self.stats.samples_in += 1
            self._tick()
            yield item

    def decoded(self) -> Iterator[tuple[Sample, Image.Image]]:
        """(sample, RGB image) pairs; undecodable images are dropped under their reason."""
        for sample in self:
            try:
                yield sample, sample.decode(self.max_pixels)
            except BadSampleError as err:
                self.stats.dropped[err.reason] += 1

    def batches(self, size: int) -> Iterator[list[tuple[Sample, Image.Image]]]:
        """Decoded pairs in lists of up to `size` (for batched models)."""
        batch: list[tuple[Sample, Image.Image]] = []
        for pair in self.decoded():
            batch.append(pair)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch


class ShardOutput:
    """Collects one output shard: kept samples are written, dropped ones counted by reason."""

    def __init__(self, writer: ShardWriter, stats: ShardStats) -> None:
        self.writer, self.stats = writer, stats

    def write(self, sample: Sample) -> None:
        """Keep a sample (written to the output shard in call order)."""
        self.writer.write(sample)
        self.stats.samples_out += 1

    def drop(self, sample: Sample | str, reason: str) -> None:
        """Count a sample as dropped under `reason` (a read sample that is not written)."""
        self.stats.dropped[reason] += 1

    def count(self, name: str, value: int = 1) -> None:
        """Add to a stage-specific counter reported under `extra`."""
        self.stats.extra[name] += value

    def reject(self, reason: str) -> None:
        """Count a generated or listed item that never became a sample (in + dropped)."""
        self.stats.samples_in += 1
        self.stats.dropped[reason] += 1

    def new_sample(self, key: str, meta: dict[str, Any], files: dict[str, bytes] | None = None,
                   image_ext: str | None = None) -> Sample:
        """A generated sample (generator stages): counted as in, then written with write()."""
        self.stats.samples_in += 1
        return Sample(key=key, meta=meta, image_ext=image_ext, files=files or {})


def local_tmp_root() -> Path:
    """Where shards are staged locally ($SAIL_TMPDIR or the system temp dir)."""
    root = Path(os.environ.get("SAIL_TMPDIR") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    return root
