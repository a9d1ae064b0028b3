"""Config block of `ingest` stages: where images come from and how they are sharded."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SetName = Literal["raw", "reference", "sft-knowledge", "sft-instruction", "eval", "caption-eval", "judge",
                  "judge-eval"]
SET_NAMES: tuple[SetName, ...] = ("raw", "reference", "sft-knowledge", "sft-instruction", "eval",
                                  "caption-eval", "judge", "judge-eval")


class SampleSizes(BaseModel):
    """Sizes of the built-in sample sets (`source: samples`); see jobs/core/samples.py."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # frozen: hashable, cached per size

    raw_digits: int = Field(default=600, ge=0, le=100_000)
    reference_digits: int = Field(default=60, ge=0, le=100_000)
    reference_photos: int = Field(default=12, ge=0, le=100)
    sft_knowledge_digits: int = Field(default=300, ge=0, le=100_000)
    sft_instruction_digits: int = Field(default=1000, ge=0, le=100_000)
    eval_digits: int = Field(default=200, ge=1, le=1500)
    # Held-out checks drawn from the eval digits: the captioner's, and the judge's pairs.
    caption_eval_digits: int = Field(default=200, ge=0, le=1500)
    judge_eval_pairs: int = Field(default=200, ge=0, le=1500)
    duplicates: int = Field(default=12, ge=0, le=10_000)
    thumbnails: int = Field(default=6, ge=0, le=10_000)
    image_size: int = Field(default=64, ge=8, le=1024)
    photo_max_side: int = Field(default=256, ge=16, le=4096)
    seed: int = 0


class Config(BaseModel):
    """`source: samples` (built-in sets) or images from a local folder / JSONL / CSV file.

    folder: every image file below `path` (sorted), alt-text from a sidecar `<name>.txt`.
    jsonl:  one object per line with `image_field` (a path, relative to the file) and
            `text_field`. csv: a header row with the same two columns.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["samples", "folder", "jsonl", "csv"] = "samples"
    path: str | None = None
    image_field: str = "image"
    text_field: str = "alt_text"
    shard_size: int = Field(default=256, ge=1, le=1_000_000)
    # keep: store jpg/png bytes as they are (others are re-encoded as png); png/jpg: re-encode all.
    image_format: Literal["keep", "png", "jpg"] = "keep"
    max_pixels: int = Field(default=64_000_000, ge=1)
    sets: list[SetName] = Field(default_factory=lambda: list(SET_NAMES))
    samples: SampleSizes = Field(default_factory=SampleSizes)

    @model_validator(mode="after")
    def _path_for_files(self) -> Config:
        if self.source != "samples" and not self.path:
            raise ValueError(f"source {self.source!r} needs `path` (a folder, .jsonl or .csv file)")
        if self.source == "samples" and self.path:
            raise ValueError("source 'samples' takes no `path`")
        return self
