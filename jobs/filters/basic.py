"""Per-sample filters: image decode/size/shape and caption hygiene. Pure functions of a sample."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from jobs.core.shards import (
    DECOMPRESSION_BOMB,
    EMPTY_IMAGE,
    MISSING_IMAGE,
    NOT_AN_IMAGE,
    TRUNCATED_IMAGE,
    BadSampleError,
    Sample,
)
from sailk8s.stageconfig.filter import CaptionFilter, ImageFilter

DECODE_REASONS = (EMPTY_IMAGE, NOT_AN_IMAGE, TRUNCATED_IMAGE, DECOMPRESSION_BOMB,
                  MISSING_IMAGE)
IMAGE_TOO_SMALL = "image_too_small"
BAD_ASPECT_RATIO = "bad_aspect_ratio"
CAPTION_MISSING = "caption_missing"
CAPTION_TOO_SHORT = "caption_too_short"
CAPTION_TOO_LONG = "caption_too_long"
CAPTION_REPETITIVE = "caption_repetitive"
CAPTION_DEGENERATE = "caption_degenerate"

_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


@dataclass
class Candidate:
    """A sample moving through the chain: its text under judgement, decoded image, scores."""

    sample: Sample
    text: str | None
    image: Image.Image | None = None
    scores: dict[str, Any] = field(default_factory=dict)

    def load_image(self, max_pixels: int) -> Image.Image:
        """Decode once (BadSampleError with the decode reason if it cannot be)."""
        if self.image is None:
            if self.sample.image_ext is None:
                raise BadSampleError(MISSING_IMAGE)
            self.image = self.sample.decode(max_pixels)
        return self.image


def pick_text(meta: dict[str, Any], fields: list[str]) -> str | None:
    """The first non-empty string among the configured text fields."""
    for name in fields:
        value = meta.get(name)
        if isinstance(value, str) and value.strip():
            return value
    return None


class ImageCheck:
    """Decode + min side + max aspect ratio."""

    name = "image"
    reasons: tuple[str, ...] = (*DECODE_REASONS, IMAGE_TOO_SMALL, BAD_ASPECT_RATIO)

    def __init__(self, cfg: ImageFilter) -> None:
        self.cfg = cfg

    def check(self, cand: Candidate) -> str | None:
        """The drop reason, or None to keep."""
        try:
            img = cand.load_image(self.cfg.max_pixels)
        except BadSampleError as err:
            return err.reason
        w, h = img.size
        if min(w, h) < self.cfg.min_side:
            return IMAGE_TOO_SMALL
        if max(w, h) / min(w, h) > self.cfg.max_aspect_ratio:
            return BAD_ASPECT_RATIO
        return None


def repeated_ngram_ratio(words: list[str], n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 for texts shorter than n)."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


class CaptionCheck:
    """Length in words, repeated 3-grams, letter share, banned phrases."""

    name = "caption"
    reasons: tuple[str, ...] = (CAPTION_MISSING, CAPTION_TOO_SHORT, CAPTION_TOO_LONG, CAPTION_REPETITIVE,
                                CAPTION_DEGENERATE)

    def __init__(self, cfg: CaptionFilter) -> None:
        self.cfg = cfg
        self.banned = [p.lower() for p in cfg.banned_phrases]

    def check(self, cand: Candidate) -> str | None:
        """The drop reason, or None to keep."""
        text = cand.text
        if text is None or not text.strip():
            return CAPTION_MISSING
        lowered = text.lower()
        if any(p in lowered for p in self.banned):
            return CAPTION_DEGENERATE
        stripped = re.sub(r"\s", "", text)
        alpha = sum(c.isalpha() for c in stripped) / max(len(stripped), 1)
        if alpha < self.cfg.min_alpha_ratio:
            return CAPTION_DEGENERATE
        words = [w.lower() for w in _WORD.findall(text)]
        if len(words) < self.cfg.min_words:
            return CAPTION_TOO_SHORT
        if len(words) > self.cfg.max_words:
            return CAPTION_TOO_LONG
        # A single word repeated, or a loop of a phrase, is the classic decoding failure.
        if len(words) >= 4 and len(set(words)) == 1:
            return CAPTION_REPETITIVE
        if repeated_ngram_ratio(words) > self.cfg.max_repeated_ngram_ratio:
            return CAPTION_REPETITIVE
        return None
