"""Label-free caption quality: the figures, merging shard summaries, and the gate's verdicts."""

from __future__ import annotations

import random

from jobs.core.samples import NUMBER_WORDS
from jobs.filters.captionquality import KMV, CaptionQuality, K, gate_problems
from sailk8s.stageconfig.caption import QualityGate

WEIGHTS = ("thin", "medium-width", "thick, bold")


def digit_caption(d: int, w: int) -> str:
    return (f"A handwritten digit {d} ({NUMBER_WORDS[d]}) written in {WEIGHTS[w]} dark strokes on a light "
            f"background, centered in a small square, low-resolution scan.")


def healthy(n: int, seed: int = 0) -> CaptionQuality:
    """What a working digit captioner writes: 30 possible captions over n distinct images."""
    rng = random.Random(seed)
    q = CaptionQuality()
    for i in range(n):
        d, w = rng.randrange(10), rng.randrange(3)
        q.add(f"k{i:05d}", f"img{i}", "Describe this image in detail.", digit_caption(d, w), f"number {d}",
              truncated=False)
    return q


def collapsed(n: int) -> CaptionQuality:
    """The quickstart's old captioner: one text for (nearly) every image."""
    q = CaptionQuality()
    for i in range(n):
        text = "A handwritten digit 7 (seven) written in medium-width" if i % 40 else digit_caption(3, 2)
        q.add(f"k{i:05d}", f"img{i}", "p", text, "IMG_4821.JPG", truncated=i % 40 != 0)
    return q


def test_figures_of_a_known_set() -> None:
    q = CaptionQuality()
    q.add("a", "i1", "p", "a cat on a mat", "a cat on a mat", truncated=False)
    q.add("b", "i2", "p", "A cat on a mat!", "kitten", truncated=True)
    q.add("c", "i3", "p", "", None, truncated=False)
    q.add("d", "i3", "p", "the the the the the the", "x", truncated=False)
    f = q.figures()
    assert f["captions"] == 4 and f["distinct"] == 3  # case and punctuation do not make a new text
    assert f["input_distinct"] == 3
    assert f["top_share"] == 0.5 and f["top_caption"] == "a cat on a mat"
    assert f["empty_share"] == 0.25 and f["truncated_share"] == 0.25
    assert f["alt_copy_share"] == round(1 / 3, 4)  # three captions had an alt-text, one copies it
    assert f["words"] == {"p5": 0, "p50": 5, "p95": 6}
    assert 0 < f["repeated_ngram_ratio"] < 1
    assert {s["key"] for s in f["samples"]} == {"a", "b", "c", "d"}


def test_shard_summaries_merge_to_the_whole() -> None:
    rng = random.Random(1)
    rows = [(f"k{i:05d}", f"img{i}", digit_caption(rng.randrange(10), rng.randrange(3))) for i in range(500)]
    whole, parts = CaptionQuality(), [CaptionQuality() for _ in range(3)]
    for i, (key, image, text) in enumerate(rows):
        for q in (whole, parts[i % 3]):
            q.add(key, image, "Describe this image in detail.", text, "number 1", truncated=i % 7 == 0)
    merged = CaptionQuality()
    for p in parts:
        merged.merge(CaptionQuality.from_json(p.to_json()))  # through the stats file's JSON
    assert merged.figures() == whole.figures()
    assert 25 <= whole.figures()["distinct"] <= 30


def test_distinct_sketch_is_exact_below_k_and_close_above() -> None:
    small, big = KMV(), KMV()
    for i in range(1000):
        small.add(hash(("s", i)) & (2**64 - 1))
    for i in range(20 * K):
        big.add(random.Random(i).getrandbits(64))
    assert small.estimate() == 1000
    assert abs(big.estimate() - 20 * K) / (20 * K) < 0.05


def test_gate_fires_on_a_collapsed_captioner_with_a_message_that_says_what() -> None:
    problems = gate_problems(collapsed(128), QualityGate())
    assert any("same text" in p and "97%" in p for p in problems), problems
    assert any("distinct captions for 128 distinct images" in p for p in problems), problems


def test_gate_passes_a_working_captioner_and_small_or_repetitive_inputs() -> None:
    assert gate_problems(healthy(128), QualityGate()) == []
    # Few distinct images (e.g. one repeated photo): identical captions are what they deserve.
    q = CaptionQuality()
    for i in range(100):
        q.add(f"k{i}", f"img{i % 3}", "p", f"a photo of thing {i % 3}", None, truncated=False)
    assert gate_problems(q, QualityGate()) == []


def test_gate_fires_on_loops_and_empty_output() -> None:
    loops, empty = CaptionQuality(), CaptionQuality()
    for i in range(64):
        loops.add(f"k{i}", f"i{i}", "p", f"digit {i} " + "a cat a cat " * 10, None, truncated=True)
        empty.add(f"k{i}", f"i{i}", "p", "" if i % 4 else f"digit {i}", None, truncated=False)
    assert any("loop" in p for p in gate_problems(loops, QualityGate()))
    assert any("empty" in p for p in gate_problems(empty, QualityGate()))
