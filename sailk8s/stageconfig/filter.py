"""Config block of `filter` stages: an ordered chain of filters, each naming its drop reasons."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sailk8s.stageconfig.engine import EngineName

DEFAULT_JUDGE_PROMPT = (
    "Here is a caption of the image: \"{caption}\"\n"
    "Rate the caption from 1 to 5 for visual information richness and for image-text alignment. "
    "Answer exactly as: richness: <1-5>, alignment: <1-5>"
)
DEFAULT_ALIGNMENT_PROMPT = "Describe this image in detail."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageFilter(_Strict):
    """Decodes the image (decode reasons) and checks its size and shape."""

    type: Literal["image"]
    min_side: int = Field(default=32, ge=1)
    max_aspect_ratio: float = Field(default=3.0, ge=1.0)
    max_pixels: int = Field(default=64_000_000, ge=1)


class CaptionFilter(_Strict):
    """Caption length, repetition and degenerate output (the captioner's failure modes)."""

    type: Literal["caption"]
    min_words: int = Field(default=3, ge=0)
    max_words: int = Field(default=400, ge=1)
    # Share of word 3-grams that repeat an earlier 3-gram; above it the caption is a loop.
    max_repeated_ngram_ratio: float = Field(default=0.3, ge=0.0, le=1.0)
    # Share of characters that are letters; below it the caption is markup or noise.
    min_alpha_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    banned_phrases: list[str] = Field(default_factory=lambda: [
        "as an ai", "i'm sorry", "i cannot", "<unk>", "<|im_end|>", "lorem ipsum"])


class DedupFilter(_Strict):
    """Exact (pixel content hash) and near (perceptual hash) duplicates across ALL shards.

    Each group of duplicates (the connected components of "same pixels" and "pHashes within
    max_distance bits") keeps its first sample in (shard, key) order. Near duplicates are found
    through max_distance+1 pigeonhole bands of the hash's bytes; a band of b bytes puts about
    N / 256**b random hashes in each bucket, so the cost stays linear while b is large enough
    for N: hash_size 8 (64-bit) fits max_distance <= 7 and, at 10^8 images, <= 1 (4-byte
    bands); hash_size 16 (256-bit) fits <= 31 and, at 10^8 images, <= 7.
    """

    type: Literal["dedup"]
    exact: bool = True
    near: bool = True
    max_distance: int = Field(default=4, ge=0, le=31)  # Hamming distance of the pHashes
    hash_size: Literal[8, 16] = 8  # pHash side: 8 -> 64 bits, 16 -> 256 bits
    # Every dedup pass is split into this many partitions (index records by content and band
    # bucket, duplicate edges' nodes by bucket, decisions by shard group), rank r taking r, r + W,
    # ...: one partition in memory at a time, so memory per rank is ~ N / P (raise P with N:
    # benchmarks/dedup_scale.py uses 16 per rank), and the result is the same at any world size.
    partitions: int = Field(default=32, ge=1, le=65536)
    # Seconds with no unit finished by any rank before a rank does a missing one itself.
    steal_after_seconds: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupFilter:
        if self.near and self.max_distance + 1 > self.hash_size**2 // 8:
            raise ValueError(f"max_distance {self.max_distance} needs {self.max_distance + 1} bands but a "
                             f"{self.hash_size**2}-bit pHash has {self.hash_size**2 // 8} bytes: "
                             f"use hash_size 16 or a smaller max_distance")
        return self


class _ModelFilter(_Strict):
    model: str | None = None  # local dir, store URI (file://, s3://) or hub id
    # Random init: tests and smoke runs.
    preset: Literal["tiny", "tiny-vllm", "sail-vl-2b", "internvl-8b"] | None = None
    seed: int = 0
    batch_size: int = Field(default=16, ge=1, le=4096)
    engine: EngineName = "auto"
    # Held-out (image, text) pairs, a store prefix of this run's store, whose json says whether
    # the pair is mismatched (`eval_truth_field`, a bool): the filter's verdicts on them are
    # reported as `<type>_eval: {pairs, precision, recall}` (of the verdict "drop it").
    eval_prefix: str | None = None
    eval_text_field: str = "caption"
    eval_truth_field: str = "mismatched"

    @model_validator(mode="after")
    def _one_model(self) -> _ModelFilter:
        if (self.model is None) == (self.preset is None):
            raise ValueError("set exactly one of `model` (path or URI) and `preset`")
        return self


class JudgeFilter(_ModelFilter):
    """A VLM asked for 1-5 richness and alignment ratings (SAIL-VL2: drop below 3)."""

    type: Literal["judge"]
    prompt: str = DEFAULT_JUDGE_PROMPT
    min_score: int = Field(default=3, ge=1, le=5)
    # Per-rating bounds where they differ from min_score (1 keeps every rating: measured only).
    min_richness: int | None = Field(default=None, ge=1, le=5)
    min_alignment: int | None = Field(default=None, ge=1, le=5)
    max_new_tokens: int = Field(default=24, ge=4, le=256)
    # What to do with a reply that holds no ratings: drop (judge_unparseable) or keep.
    on_unparseable: Literal["drop", "keep"] = "drop"

    def bounds(self) -> tuple[int, int]:
        """(min richness, min alignment) a caption needs to be kept."""
        return (self.min_score if self.min_richness is None else self.min_richness,
                self.min_score if self.min_alignment is None else self.min_alignment)

    @model_validator(mode="after")
    def _prompt_has_caption(self) -> JudgeFilter:
        if "{caption}" not in self.prompt:
            raise ValueError("the judge prompt must contain {caption}")
        return self


class AlignmentFilter(_ModelFilter):
    """How much the image raises the caption's log-likelihood, per token, under the captioner."""

    type: Literal["alignment"]
    prompt: str = DEFAULT_ALIGNMENT_PROMPT
    min_score: float | None = 0.0  # None: record the score, drop nothing


class MiniLMFilter(_Strict):
    """Cosine similarity of the caption and the alt-text with the real all-MiniLM-L6-v2."""

    type: Literal["minilm"]
    min_similarity: float | None = Field(default=0.1, ge=-1.0, le=1.0)
    against: str = "alt_text"
    batch_size: int = Field(default=64, ge=1, le=4096)


Filter = Annotated[ImageFilter | CaptionFilter | DedupFilter | JudgeFilter | AlignmentFilter | MiniLMFilter,
                   Field(discriminator="type")]
MODEL_TYPES = ("judge", "alignment", "minilm")


def _default_filters() -> list[Filter]:
    """image -> caption -> dedup: the hygiene chain, no models."""
    return [ImageFilter(type="image"), CaptionFilter(type="caption"), DedupFilter(type="dedup")]


class Config(_Strict):
    """The filter chain, applied in order; a sample's first failing filter names its reason.

        config:
          text_fields: [recaption, caption, alt_text]   # the caption judged: first one present
          filters:
            - {type: image, min_side: 32, max_aspect_ratio: 3.0}
            - {type: caption, min_words: 3, max_words: 400}
            - {type: dedup, exact: true, near: true, max_distance: 4}
            - {type: alignment, preset: tiny}             # or model: file:///models/captioner
            - {type: judge, model: /models/judge, min_score: 3}
            - {type: minilm, min_similarity: 0.2}

    Dedup needs a global view (all shards) so it runs as an index pass before the main pass;
    model filters are expensive, so they must come after dedup (validated here).
    """

    text_fields: list[str] = Field(default_factory=lambda: ["recaption", "caption", "alt_text"], min_length=1)
    filters: list[Filter] = Field(default_factory=_default_filters)
    max_pixels: int = Field(default=64_000_000, ge=1)

    @model_validator(mode="after")
    def _order(self) -> Config:
        types = [f.type for f in self.filters]
        if types.count("dedup") > 1:
            raise ValueError("filters: at most one dedup filter")
        if "dedup" in types:
            first_model = next((i for i, t in enumerate(types) if t in MODEL_TYPES), len(types))
            if types.index("dedup") > first_model:
                raise ValueError("filters: dedup must come before model filters (judge, alignment, minilm)")
        return self
