"""A deterministic stream of raw samples from a weighted mix of store prefixes, repeating epochs."""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import structlog

from jobs.core.shards import BadSample, Sample, read_shard
from jobs.training.encoding import field_value
from sailk8s.errors import InputError
from sailk8s.stageconfig.training import MixEntry
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)


def list_shards(store: ObjectStore, prefix: str) -> list[str]:
    """The .tar shards directly or indirectly under prefix/, sorted; InputError when none."""
    keys = [k for k in store.list(prefix.rstrip("/") + "/") if k.endswith(".tar")]
    if not keys:
        raise InputError(f"no WebDataset shards (*.tar) under {store.describe(prefix)}: "
                         "check the mix prefix and that the stage producing it ran")
    return sorted(keys)


class SourceReader:
    """Endless samples of one mix entry, epoch after epoch, with a position that can be restored.

    Shards are read in an order shuffled per epoch, each shard's samples in an order shuffled
    per (epoch, shard): no random state crosses shards, so `state()` is three numbers and
    `restore()` reads one shard, whatever the distance travelled. With `order_by` (the SFT
    curriculum option, for SFT-sized sets) the source is instead read whole and sorted by that
    json field. A budget larger than the data starts a new epoch, and the log says so.
    """

    def __init__(self, store: ObjectStore, entry: MixEntry, *, seed: int, order_by: str | None = None,
                 descending: bool = False, dropped: Counter[str] | None = None) -> None:
        self.store, self.entry, self.seed = store, entry, seed
        self.order_by, self.descending = order_by, descending
        self.shards = list_shards(store, entry.prefix)
        self.need_image = entry.format not in ("text",)
        self.dropped: Counter[str] = dropped if dropped is not None else Counter()
        self.epoch = 0
        self.shard_pos = 0  # index in this epoch's shard order of the shard being read
        self.sample_pos = 0  # samples of it already yielded (or, with order_by, of the sorted list)
        self._sorted: list[Sample] | None = None
        self._count_drops = True

    def state(self) -> dict[str, int]:
        """Where the next sample comes from."""
        return {"epoch": self.epoch, "shard": self.shard_pos, "sample": self.sample_pos}

    def restore(self, state: dict[str, int]) -> None:
        """Continue from a state() of a reader with the same store, entry and seed."""
        self.epoch, self.shard_pos = int(state["epoch"]), int(state["shard"])
        self.sample_pos = int(state["sample"])
        # The bad samples of the shard resumed mid-way were counted by the run that read it first.
        self._count_drops = False

    def _items(self, key: str) -> Iterator[Sample | BadSample]:
        """One shard's samples and bad samples, in file order; samples know their shard."""
        need_image = self.need_image and self.entry.format != "auto"
        for item in read_shard(io.BytesIO(self.store.get(key)), need_image=need_image):
            if not isinstance(item, BadSample):
                item.shard = key
            yield item

    def _read(self, key: str) -> list[Sample]:
        out: list[Sample] = []
        for item in self._items(key):
            if isinstance(item, BadSample):
                if self.epoch == 0 and self._count_drops:  # each bad sample once, not once per epoch
                    self.dropped[item.reason] += 1
            else:
                out.append(item)
        self._count_drops = True
        return out

    def fetch(self, key: str) -> dict[str, Sample]:
        """One shard's usable samples by sample key (a resume's random access; no drop counting)."""
        return {item.key: item for item in self._items(key) if not isinstance(item, BadSample)}

    def _score(self, s: Sample) -> tuple[int, float]:
        v = field_value(s.meta, self.order_by or "")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return (1, 0.0)  # unscored samples go last either way
        return (0, -float(v) if self.descending else float(v))

    def shard_order(self, epoch: int) -> list[str]:
        """The shards in the order epoch `epoch` reads them."""
        order = list(self.shards)
        random.Random(f"{self.seed}:{self.entry.prefix}:{epoch}").shuffle(order)
        return order

    def shard_samples(self, key: str, epoch: int) -> list[Sample]:
        """One shard's usable samples in the order epoch `epoch` yields them."""
        samples = self._read(key)
        random.Random(f"{self.seed}:{self.entry.prefix}:{epoch}:{key}").shuffle(samples)
        return samples

    def __iter__(self) -> Iterator[Sample]:
        while True:
            produced = self.shard_pos + self.sample_pos  # > 0: resumed mid-epoch, data exists
            if self.epoch > 0 and produced == 0:
                log.info("data source repeats: the budget is larger than the data",
                         source=self.entry.prefix, epoch=self.epoch + 1)
            if self.order_by:
                if self._sorted is None:
                    everything = [s for k in self.shards for s in self._read(k)]
                    self._sorted = sorted(everything, key=self._score)  # stable: ties keep shard order
                while self.sample_pos < len(self._sorted):
                    self.sample_pos += 1
                    produced += 1
                    yield self._sorted[self.sample_pos - 1]
            else:
                order = self.shard_order(self.epoch)
                while self.shard_pos < len(order):
                    samples = self.shard_samples(order[self.shard_pos], self.epoch)
                    while self.sample_pos < len(samples):
                        self.sample_pos += 1
                        produced += 1
                        yield samples[self.sample_pos - 1]
                    self.shard_pos, self.sample_pos = self.shard_pos + 1, 0
            if produced == 0:
                raise InputError(f"no usable samples under {self.store.describe(self.entry.prefix)} "
                                 f"(dropped: {dict(self.dropped) or 'none'})")
            self.epoch, self.shard_pos, self.sample_pos = self.epoch + 1, 0, 0


class MixStream:
    """(entry index, sample) pairs from all sources, interleaved by smooth weighted round robin.

    The nginx scheme: over any window each source's share follows its weight exactly, with no
    random state to save. The same arguments always give the same sequence. Images stay encoded
    bytes: training decodes only those of the sequences its rank trains on.
    """

    def __init__(self, store: ObjectStore, entries: Sequence[MixEntry], *, seed: int = 0,
                 order_by: str | None = None, descending: bool = False) -> None:
        if not entries:
            raise InputError("empty data mix: the sub-stage lists no data source")
        self.entries = list(entries)
        self.dropped: Counter[str] = Counter()
        self.readers = [SourceReader(store, e, seed=seed + i, order_by=order_by, descending=descending,
                                     dropped=self.dropped) for i, e in enumerate(entries)]
        self.draws: Counter[str] = Counter()
        self.current = [0.0] * len(self.entries)  # the round robin's running weights

    @property
    def epochs(self) -> dict[str, int]:
        """Epochs started per source (1 = the data has not repeated)."""
        return {r.entry.prefix: r.epoch + 1 for r in self.readers}

    def state(self) -> dict[str, Any]:
        """The position of the whole mix: round-robin weights and each source's position."""
        return {"current": list(self.current), "draws": dict(self.draws),
                "readers": [r.state() for r in self.readers]}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a state() of a stream with the same store, entries and seed (before iterating)."""
        if len(state["readers"]) != len(self.readers):
            raise ValueError(f"the saved data position has {len(state['readers'])} sources, "
                             f"the mix has {len(self.readers)}")
        self.current = [float(x) for x in state["current"]]
        self.draws = Counter(state["draws"])
        for reader, rs in zip(self.readers, state["readers"], strict=True):
            reader.restore(rs)

    def __iter__(self) -> Iterator[tuple[int, Sample]]:
        iters = [iter(r) for r in self.readers]
        weights = [e.weight for e in self.entries]
        total = sum(weights)
        while True:
            for i, w in enumerate(weights):
                self.current[i] += w
            pick = max(range(len(self.current)), key=lambda i: self.current[i])
            self.current[pick] -= total
            self.draws[self.entries[pick].prefix] += 1
            yield pick, next(iters[pick])
