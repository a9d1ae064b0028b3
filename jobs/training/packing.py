"""Stream packing of tokenized samples into fixed-length sequences, and the padded baseline."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

IGNORE = -100


@dataclass(eq=False)
class TokenizedSample:
    """One sample ready for training: ids, labels (-100 = not a target), its image tiles.

    A *planned* sample has its tokens but not yet its pixels: `tiles` says how many image
    tiles its image tokens stand for and `load_pixels` produces them (jobs.training.encoding materializes
    it); packing needs only the length, so pixels are made only for the sequences trained on.
    """

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None = field(default=None, repr=False)  # (tiles, 3, H, W), in order
    source: str = ""
    truncated: bool = False
    tiles: int = 0  # image tiles behind the image tokens (== pixel_values.shape[0] once made)
    load_pixels: Callable[[], torch.Tensor] | None = field(default=None, repr=False)
    # Where it was read: (mix entry, shard key, sample key); saved in data-position checkpoints.
    origin: tuple[int, str, str] = (0, "", "")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def planned(self) -> bool:
        """True while the pixels are still to be made."""
        return self.pixel_values is None and self.load_pixels is not None

    @property
    def target_tokens(self) -> int:
        """Tokens that count in the loss (after the model's one-token shift)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


@dataclass(eq=False)
class Bin:
    """An open or finished packed sequence: which samples, how many tokens."""

    items: list[TokenizedSample] = field(default_factory=list)
    used: int = 0
    born: int = 0  # the packer's sample count when this sequence was opened


class StreamPacker:
    """Best-fit packing over a small window of open sequences; deterministic for a given order.

    Each sample goes into the open sequence with the least room that still fits it; when more
    than `window` sequences are open, the fullest is emitted. A window of 1 is plain
    next-fit (what a naive stream packer does); 8-16 gets above 0.97 fill on SAIL-like lengths.
    A sequence still open `max_age` samples after it opened is emitted too: the samples a
    checkpoint's data position must hold (jobs.training.binstream) then come from recent shards only.
    """

    def __init__(self, seq_len: int, window: int = 16, max_age: int = 512) -> None:
        if seq_len < 2:
            raise ValueError("seq_len must be at least 2")
        self.seq_len = seq_len
        self.window = max(1, window)
        self.max_age = max(1, max_age)
        self.seen = 0  # samples placed so far
        self.open: list[Bin] = []

    def add(self, sample: TokenizedSample) -> list[Bin]:
        """Place one sample (len <= seq_len); return the sequences this closes."""
        n = len(sample)
        if n > self.seq_len:
            raise ValueError(f"sample of {n} tokens exceeds seq_len {self.seq_len}: truncate or drop it")
        self.seen += 1
        best: Bin | None = None
        for b in self.open:
            room = self.seq_len - b.used
            if room >= n and (best is None or room < self.seq_len - best.used):
                best = b
        if best is None:
            best = Bin(born=self.seen)
            self.open.append(best)
        best.items.append(sample)
        best.used += n
        closed: list[Bin] = []
        # A full sequence leaves at once; otherwise the fullest leaves when the window overflows.
        if best.used == self.seq_len:
            self.open.remove(best)
            closed.append(best)
        while len(self.open) > self.window:
            fullest = max(self.open, key=lambda b: b.used)
            self.open.remove(fullest)
            closed.append(fullest)
        stale = [b for b in self.open if self.seen - b.born >= self.max_age]
        for b in stale:
            self.open.remove(b)
            closed.append(b)
        return closed

    def flush(self) -> list[Bin]:
        """Emit every open sequence (end of data)."""
        out, self.open = self.open, []
        return out

    def pack(self, samples: Iterable[TokenizedSample]) -> Iterator[Bin]:
        """Pack a whole stream."""
        for s in samples:
            yield from self.add(s)
        yield from self.flush()


def fill_rate(batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Fraction of real (non-pad) tokens over all positions of the batches."""
    real = sum(int(b["real_tokens"]) for b in batches)
    total = sum(int(b["input_ids"].numel()) for b in batches)
    return real / total if total else 0.0


def _pixels(samples: Sequence[TokenizedSample]) -> torch.Tensor | None:
    if any(s.planned for s in samples):
        raise ValueError("collate of a planned sample: materialize its pixel_values first "
                         "(jobs.training.encoding)")
    tiles = [s.pixel_values for s in samples if s.pixel_values is not None and len(s.pixel_values)]
    return torch.cat(tiles, dim=0) if tiles else None


def collate_packed(bins: Sequence[Bin], seq_len: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Packed tensors: (B, seq_len) ids/labels/position_ids, no attention mask, image tiles in order.

    `position_ids` restart at 0 for each sample, so transformers' packed-sequence masking keeps
    every sample's attention to itself (run the model with `use_cache=False`: with a cache the
    packed mask is not applied). Each sample's first token gets label -100, as it is never a
    target unpacked either: the summed loss equals the unpacked batch's exactly. Planned samples
    (pixels not made yet) are refused: materialize them first (jobs.training.encoding).
    """
    ids = torch.full((len(bins), seq_len), pad_id, dtype=torch.long)
    labels = torch.full((len(bins), seq_len), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(bins), seq_len), dtype=torch.long)
    real = 0
    for r, b in enumerate(bins):
        at = 0
        for s in b.items:
            n = len(s)
            ids[r, at:at + n] = torch.tensor(s.input_ids)
            lab = torch.tensor(s.labels)
            lab[0] = IGNORE  # would be predicted from the previous sample's last token
            labels[r, at:at + n] = lab
            pos[r, at:at + n] = torch.arange(n)
            at += n
            real += n
        # The pad tail is its own "sample" (positions restart) so it never joins the last one.
        pos[r, at:] = torch.arange(seq_len - at)
    out = {"input_ids": ids, "labels": labels, "position_ids": pos,
           "real_tokens": torch.tensor(real), "target_tokens": (labels != IGNORE).sum()}
    px = _pixels([s for b in bins for s in b.items])
    if px is not None:
        out["pixel_values"] = px
    return out


def collate_padded(samples: Sequence[TokenizedSample], pad_id: int,
                   length: int | None = None) -> dict[str, torch.Tensor]:
    """The baseline: one sample per row, right-padded to the longest (or `length`), with a mask."""
    width = length or max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for r, s in enumerate(samples):
        n = len(s)
        ids[r, :n] = torch.tensor(s.input_ids)
        labels[r, :n] = torch.tensor(s.labels)
        labels[r, 0] = IGNORE
        mask[r, :n] = 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask,
           "real_tokens": mask.sum(), "target_tokens": (labels != IGNORE).sum()}
    px = _pixels(samples)
    if px is not None:
        out["pixel_values"] = px
    return out
