"""Fraction of real (non-pad) tokens in training batches: stream packing vs padded batching.

Two length distributions: the quickstart's own samples (built-in sample sets encoded by the
real tiny-model encoder) and a synthetic SAIL-VL-like one (captions of 50-300 tokens plus 256
image tokens per tile, 1-7 tiles, 8k sequences). Padded batching (the baseline) pads each
micro batch to its longest sample, as a dynamic-padding collator does.

    python benchmarks/packing.py [--quick]
Last stdout line: JSON with "ours" = packed fill on the SAIL-like data, "baseline" = padded.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.training.packing import StreamPacker


class _Len:
    """A stand-in sample that only has a length (the packer needs nothing else)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def packed_fill(lengths: list[int], seq_len: int) -> float:
    bins = list(StreamPacker(seq_len).pack(_Len(n) for n in lengths))  # type: ignore[misc]
    return sum(lengths) / (len(bins) * seq_len)


def padded_fill(lengths: list[int], micro_batch: int) -> float:
    total = 0
    for i in range(0, len(lengths), micro_batch):
        chunk = lengths[i:i + micro_batch]
        total += max(chunk) * len(chunk)
    return sum(lengths) / total


def sail_like(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        tiles = rng.randint(1, 7)
        out.append(rng.randint(50, 300) + 256 * tiles + 2)
    return out


def quickstart_lengths(limit: int) -> list[int]:
    """Token lengths of the quickstart's training samples under the real tiny encoder."""
    from jobs.core import samples
    from jobs.training.encoding import Dropped, SampleEncoder
    from jobs.vlm import model as vlm

    _, processor = vlm.build_model("tiny")
    enc = SampleEncoder(processor, seq_len=256, max_tiles=1)
    sizes = samples.SampleSizes()
    items = (samples.reference_items(sizes) + samples.sft_knowledge_items(sizes)
             + samples.sft_instruction_items(sizes))
    random.Random(0).shuffle(items)
    out = []
    for it in items[:limit]:
        s = enc.encode(it.meta, it.image, "auto", text_fields=("caption",),
                       prompt=None if "conversations" in it.meta else "Describe this image in detail.")
        if not isinstance(s, Dropped):
            out.append(len(s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 4000 if args.quick else 40000
    sail = sail_like(n)
    qs = quickstart_lengths(600 if args.quick else 2000)
    result = {
        "benchmark": "packing", "unit": "fraction of real tokens",
        "ours": round(packed_fill(sail, 8192), 4), "baseline": round(padded_fill(sail, 8), 4),
        "quickstart_packed": round(packed_fill(qs, 256), 4),
        "quickstart_padded": round(padded_fill(qs, 8), 4),
        "sail_like_samples": len(sail), "quickstart_samples": len(qs), "seq_len_sail_like": 8192,
        "seq_len_quickstart": 256, "padded_micro_batch": 8,
    }
    result["ratio"] = round(result["ours"] / result["baseline"], 4)
    print(f"SAIL-like: packed {result['ours']:.3f} vs padded {result['baseline']:.3f}; "
          f"quickstart: packed {result['quickstart_packed']:.3f} vs padded {result['quickstart_padded']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
