"""Config block of `caption` stages: which captioner, which mode and prompts, how to generate."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sailk8s.stageconfig.engine import EngineName

DEFAULT_CAPTION_PROMPT = "Describe this image in detail."
DEFAULT_RECAPTION_PROMPT = (
    "Here is the image's original alt-text: {alt_text}\n"
    "Using the alt-text only where the image confirms it, write a detailed, accurate description "
    "of the image."
)
PRESET_NAMES = ("tiny", "tiny-vllm", "sail-vl-2b", "internvl-8b")


def _fields(template: str) -> set[str]:
    """Names a str.format template uses; ValueError for a malformed template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


class QualityGate(BaseModel):
    """Stops a caption stage whose first captions are degenerate (a collapsed or looping captioner).

    Each rank judges its first `min_samples` captions of an attempt; any bound crossed fails
    the stage as permanent (exit 5) before the rest of the data is captioned.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    min_samples: int = Field(default=64, ge=8, le=1_000_000)
    # Share of the most common caption: above it "most captions are identical".
    max_top_share: float = Field(default=0.5, gt=0, le=1)
    # Distinct captions per distinct input image: below it the captioner ignores its input.
    min_distinct_ratio: float = Field(default=0.05, ge=0, le=1)
    max_empty_share: float = Field(default=0.5, ge=0, le=1)
    # Mean share of word 3-grams that repeat an earlier one: above it captions loop.
    max_repeated_ngram_ratio: float = Field(default=0.5, ge=0, le=1)


class Config(BaseModel):
    """A caption stage: exactly one of `model` (a saved captioner) or `preset` (random init, tests)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A prefix of the run's store (e.g. where an sft stage exported a fine-tuned captioner), a
    # store URI (file://, s3://), a local path, or a hub id where the cluster has internet.
    model: str | None = None
    preset: Literal["tiny", "tiny-vllm", "sail-vl-2b", "internvl-8b"] | None = None
    seed: int = 0  # random init of a preset model
    # A name recorded in each sample's `captioner` field; defaults to model or "preset:<name>".
    captioner_name: str | None = None
    mode: Literal["caption", "recaption"] = "recaption"
    caption_prompt: str = DEFAULT_CAPTION_PROMPT
    # May use {alt_text}; samples without alt-text fall back to caption_prompt (mode "caption").
    recaption_prompt: str = DEFAULT_RECAPTION_PROMPT
    alt_text_field: str = "alt_text"
    max_alt_text_chars: int = Field(default=500, ge=1)
    batch_size: int = Field(default=16, ge=1, le=4096)
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    repetition_penalty: float = Field(default=1.0, gt=0)
    max_tiles: int = Field(default=6, ge=1, le=40)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    engine: EngineName = "auto"
    # Batches decoded and tiled ahead of generation in a worker thread (0: none, inline).
    prefetch_batches: int = Field(default=2, ge=0, le=64)
    max_image_pixels: int = Field(default=64_000_000, ge=1)
    quality_gate: QualityGate = Field(default_factory=QualityGate)

    @field_validator("caption_prompt")
    @classmethod
    def _caption_prompt_plain(cls, v: str) -> str:
        """The caption prompt sees no alt-text: it may not use template fields."""
        try:
            names = _fields(v)
        except ValueError as err:
            raise ValueError(f"malformed template: {err}") from None
        if names:
            raise ValueError(f"caption mode has no fields to fill, but the prompt uses {sorted(names)}")
        return v

    @field_validator("recaption_prompt")
    @classmethod
    def _recaption_prompt_fields(cls, v: str) -> str:
        """Only {alt_text} can be filled in."""
        try:
            names = _fields(v)
        except ValueError as err:
            raise ValueError(f"malformed template: {err}") from None
        unknown = names - {"alt_text"}
        if unknown:
            raise ValueError(f"unknown template field(s) {sorted(unknown)}; only {{alt_text}} is available")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Config:
        """Exactly one of model and preset names the captioner: never a silent random model."""
        if self.model is not None and self.preset is not None:
            raise ValueError("set only one of `model` (path, store URI or hub id) and `preset`")
        if self.model is None and self.preset is None:
            raise ValueError("set `model` (a saved captioner: store prefix, store URI, path or hub id) "
                             "or `preset` (random weights: smoke tests only)")
        return self

    def preset_name(self) -> str | None:
        """The preset to build, when no model is given."""
        return None if self.model is not None else self.preset

    def captioner(self) -> str:
        """The name recorded in output samples."""
        return self.captioner_name or self.model or f"preset:{self.preset_name()}"
