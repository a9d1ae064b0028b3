"""A sub-stage's planned training sequences, with a data position that resumes without a replay."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from jobs.core.shards import Sample
from jobs.training.mixstream import MixStream
from jobs.training.packing import Bin, StreamPacker, TokenizedSample
from sailk8s.errors import InputError

# (entry index, sample) -> a planned sample, or None when it is dropped (counted by the planner).
Planner = Callable[[int, Sample], TokenizedSample | None]


class BinStream:
    """Iterator of planned sequences (packed, or one sample per row) over a MixStream."""

    def __init__(self, stream: MixStream, plan: Planner, packer: StreamPacker | None) -> None:
        self.stream, self.plan, self.packer = stream, plan, packer
        self.pending: deque[Bin] = deque()  # closed, not handed out yet
        self._samples: Iterator[tuple[int, Sample]] | None = None
        self.shards_read_on_restore = 0

    def __iter__(self) -> BinStream:
        return self

    def __next__(self) -> Bin:
        while not self.pending:
            if self._samples is None:
                self._samples = iter(self.stream)
            idx, sample = next(self._samples)
            enc = self._planned(idx, sample)
            if enc is None:
                continue
            if self.packer is None:
                self.pending.append(Bin([enc], len(enc)))
            else:
                self.pending.extend(self.packer.add(enc))
        return self.pending.popleft()

    def _planned(self, idx: int, sample: Sample) -> TokenizedSample | None:
        enc = self.plan(idx, sample)
        if enc is not None:
            enc.origin = (idx, sample.shard, sample.key)
        return enc

    # -- position ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Where the stream stands, as plain JSON: the mix position and the samples the packer holds.

        The packer holds a window of open sequences, plus closed ones not handed out yet; their
        samples are saved by address (mix entry, shard key, sample key), so a resume reads the
        shards behind those few samples and one shard per source: the same cost after ten steps
        or ten million, where replaying the stream from its start grows with the position.
        """
        def addresses(bins: Any) -> list[list[list[Any]]]:
            return [[list(s.origin) for s in b.items] for b in bins]

        packer = self.packer
        return {"stream": self.stream.state(),
                "open": addresses(packer.open if packer is not None else []),
                "born": [b.born for b in packer.open] if packer is not None else [],
                "seen": packer.seen if packer is not None else 0,
                "pending": addresses(self.pending)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a state() of an equal stream (same data, mix, seed, planner); call before next()."""
        if self._samples is not None:
            raise RuntimeError("restore() must come before the first next()")
        self.stream.restore(state["stream"])
        saved = [b for group in ("open", "pending") for b in state[group]]
        wanted = {(int(i), str(shard)) for b in saved for i, shard, _ in b}
        found: dict[tuple[int, str], dict[str, Sample]] = {
            (i, shard): self.stream.readers[i].fetch(shard) for i, shard in sorted(wanted)}
        self.shards_read_on_restore = len(found)

        def rebuild(saved: list[list[list[Any]]]) -> list[Bin]:
            out = []
            for b in saved:
                items = []
                for i, shard, key in b:
                    sample = found[(int(i), str(shard))].get(str(key))
                    enc = None if sample is None else self._planned(int(i), sample)
                    if enc is None:
                        raise InputError(f"cannot resume the data position: sample {key!r} of {shard} "
                                         "is gone or no longer usable (the input data changed since the "
                                         "checkpoint)")
                    items.append(enc)
                out.append(Bin(items, sum(len(x) for x in items)))
            return out

        if self.packer is not None:
            self.packer.open = rebuild(state["open"])
            for b, born in zip(self.packer.open, state["born"], strict=True):
                b.born = int(born)
            self.packer.seen = int(state["seen"])
        self.pending = deque(rebuild(state["pending"]))
