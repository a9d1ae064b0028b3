"""Caption quality without labels: a mergeable per-shard summary, the stage's figures, and the gate."""

from __future__ import annotations

import bisect
import hashlib
import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from jobs.filters.basic import repeated_ngram_ratio
from sailk8s.stageconfig.caption import QualityGate

K = 4096  # distinct-value sketch size
TOP = 32  # most common captions kept per shard
SAMPLES = 8  # (key, prompt, caption) examples kept for a human to read
_MAX_LEN = 512  # words; longer captions share the last histogram bin


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest(), "big")


def normalize(text: str) -> str:
    """Lower case, words only: what 'the same text' means for copies and duplicates."""
    return " ".join(re.findall(r"\w+", text.lower()))


@dataclass
class KMV:
    """k minimum values of a 64-bit hash: a mergeable distinct-count sketch (within ~2% above K)."""

    values: list[int] = field(default_factory=list)  # sorted ascending, at most K

    def add(self, h: int) -> None:
        if len(self.values) >= K and h >= self.values[-1]:
            return
        at = bisect.bisect_left(self.values, h)
        if at < len(self.values) and self.values[at] == h:
            return
        self.values.insert(at, h)
        del self.values[K:]

    def merge(self, other: KMV) -> None:
        self.values = sorted(set(self.values) | set(other.values))[:K]

    def estimate(self) -> int:
        """Exact below K distinct values, else the KMV estimate (K - 1) / kth-smallest-fraction."""
        if len(self.values) < K:
            return len(self.values)
        return round((K - 1) / (self.values[-1] / 2**64))


@dataclass
class CaptionQuality:
    """Label-free figures over a set of generated captions; mergeable across shards.

    A shard's summary stays a few KB at any scale: distinct counts are KMV sketches, the most
    common captions are kept per shard (top TOP) and merged, lengths go into a histogram.
    """

    captions: int = 0
    empty: int = 0
    truncated: int = 0
    alt_copies: int = 0
    with_alt: int = 0
    repeated_sum: float = 0.0
    lengths: Counter[int] = field(default_factory=Counter)  # words -> captions
    distinct: KMV = field(default_factory=KMV)
    inputs: KMV = field(default_factory=KMV)  # distinct images (by content digest)
    top: Counter[str] = field(default_factory=Counter)  # normalized caption -> count (top TOP)
    # Examples for a human: (-hash of the key, key, prompt, caption), the SAMPLES smallest hashes.
    samples: list[tuple[int, str, str, str]] = field(default_factory=list)

    def add(self, key: str, image_digest: str, prompt: str, caption: str, alt_text: str | None,
            truncated: bool) -> None:
        """Count one generated caption."""
        self.captions += 1
        words = caption.split()
        self.empty += not words
        self.truncated += truncated
        self.lengths[min(len(words), _MAX_LEN)] += 1
        self.repeated_sum += repeated_ngram_ratio([w.lower() for w in words])
        norm = normalize(caption)
        self.distinct.add(_h64(norm))
        self.inputs.add(_h64(image_digest))
        self.top[norm] += 1
        if alt_text and alt_text.strip():
            self.with_alt += 1
            self.alt_copies += bool(norm) and norm == normalize(alt_text)
        # A deterministic "random" sample: the SAMPLES smallest hashes of the keys.
        heapq.heappush(self.samples, (-_h64(key), key, prompt, caption))
        if len(self.samples) > SAMPLES:
            heapq.heappop(self.samples)

    def merge(self, other: CaptionQuality) -> None:
        """Add another summary (of other captions) into this one."""
        for name in ("captions", "empty", "truncated", "alt_copies", "with_alt", "repeated_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.lengths.update(other.lengths)
        self.distinct.merge(other.distinct)
        self.inputs.merge(other.inputs)
        self.top.update(other.top)
        self.top = Counter(dict(self.top.most_common(TOP)))
        for s in other.samples:
            heapq.heappush(self.samples, s)
            if len(self.samples) > SAMPLES:
                heapq.heappop(self.samples)

    # -- serialisation (a shard's stats file) -------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"captions": self.captions, "empty": self.empty, "truncated": self.truncated,
                "alt_copies": self.alt_copies, "with_alt": self.with_alt,
                "repeated_sum": round(self.repeated_sum, 6),
                "lengths": {str(k): v for k, v in sorted(self.lengths.items())},
                "distinct": [f"{v:016x}" for v in self.distinct.values],
                "inputs": [f"{v:016x}" for v in self.inputs.values],
                "top": dict(self.top.most_common(TOP)),
                "samples": [[-h, k, p, c] for h, k, p, c in sorted(self.samples, reverse=True)]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaptionQuality:
        q = cls(int(data["captions"]), int(data["empty"]), int(data["truncated"]), int(data["alt_copies"]),
                int(data["with_alt"]), float(data["repeated_sum"]),
                Counter({int(k): int(v) for k, v in data["lengths"].items()}),
                KMV([int(v, 16) for v in data["distinct"]]), KMV([int(v, 16) for v in data["inputs"]]),
                Counter({str(k): int(v) for k, v in data["top"].items()}))
        q.samples = [(-int(h), str(k), str(p), str(c)) for h, k, p, c in data["samples"]]
        heapq.heapify(q.samples)
        return q

    # -- the figures ------------------------------------------------------------------------
    def percentile(self, q: float) -> int:
        """The word length at quantile q (0..1) of the captions."""
        if not self.captions:
            return 0
        target, seen = q * self.captions, 0
        for length in sorted(self.lengths):
            seen += self.lengths[length]
            if seen >= target:
                return length
        return max(self.lengths)

    def figures(self) -> dict[str, Any]:
        """The stage report's `caption_quality` block."""
        n = max(self.captions, 1)
        distinct, inputs = self.distinct.estimate(), self.inputs.estimate()
        top_text, top_count = self.top.most_common(1)[0] if self.top else ("", 0)
        return {
            "captions": self.captions,
            "distinct": distinct,
            "distinct_ratio": round(distinct / n, 4),
            "input_distinct": inputs,
            "distinct_vs_input": round(distinct / max(inputs, 1), 4),
            "top_share": round(top_count / n, 4),
            "top_caption": top_text[:200],
            "empty_share": round(self.empty / n, 4),
            "truncated_share": round(self.truncated / n, 4),
            "alt_copy_share": round(self.alt_copies / max(self.with_alt, 1), 4),
            "repeated_ngram_ratio": round(self.repeated_sum / n, 4),
            "words": {"p5": self.percentile(0.05), "p50": self.percentile(0.5), "p95": self.percentile(0.95)},
            "samples": [{"key": k, "prompt": p, "caption": c}
                        for _, k, p, c in sorted(self.samples, reverse=True)],
        }


def gate_problems(q: CaptionQuality, gate: QualityGate) -> list[str]:
    """What makes these captions degenerate under the gate's bounds ([] when none)."""
    f = q.figures()
    out = []
    if f["top_share"] > gate.max_top_share:
        out.append(f"{f['top_share']:.0%} of {f['captions']} captions are the same text "
                   f"({f['top_caption'][:80]!r}; bound {gate.max_top_share:.0%})")
    if f["input_distinct"] >= gate.min_samples // 2 and f["distinct_vs_input"] < gate.min_distinct_ratio:
        out.append(f"{f['distinct']} distinct captions for {f['input_distinct']} distinct images "
                   f"(ratio {f['distinct_vs_input']:.3f} < {gate.min_distinct_ratio})")
    if f["empty_share"] > gate.max_empty_share:
        out.append(f"{f['empty_share']:.0%} of captions are empty (bound {gate.max_empty_share:.0%})")
    if f["repeated_ngram_ratio"] > gate.max_repeated_ngram_ratio:
        out.append(f"captions loop: {f['repeated_ngram_ratio']:.0%} of their word 3-grams repeat "
                   f"(bound {gate.max_repeated_ngram_ratio:.0%})")
    return out
