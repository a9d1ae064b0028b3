"""Config pieces shared by the training kinds (pretrain, sft): model source, data mix, sub-stages."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TrainablePart = Literal["projector", "vision", "llm"]


def _all_parts() -> list[TrainablePart]:
    return ["projector", "vision", "llm"]


def _projector_only() -> list[TrainablePart]:
    return ["projector"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(_Strict):
    """Where the starting weights come from: a preset (random init) or a saved model."""

    preset: Literal["tiny", "sail-vl-2b"] = "tiny"
    # A model saved by a previous stage: a store prefix of this run's store ("models/pretrain"),
    # a store URI (file://, s3://) or a local directory. Overrides the preset's random weights.
    init_from: str | None = None
    # Pretrained parts for a fresh preset (paths or store URIs), shape-checked when loaded.
    vision_from: str | None = None
    llm_from: str | None = None

    @model_validator(mode="after")
    def _exclusive(self) -> ModelSource:
        if self.init_from and (self.vision_from or self.llm_from):
            raise ValueError("init_from excludes vision_from/llm_from (the saved model has both)")
        return self


class MixEntry(_Strict):
    """One data source of a sub-stage's mix: a store prefix of WebDataset shards and its weight."""

    prefix: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)
    # caption: image + caption text; conversation: LLaVA turns; text: pure text (no image);
    # auto: conversation when the sample has `conversations`, else caption.
    format: Literal["auto", "caption", "conversation", "text"] = "auto"
    # Fields tried in order for the caption/text of caption-format samples.
    text_fields: list[str] = Field(default_factory=lambda: ["recaption", "caption", "text"], min_length=1)
    # SFT on caption data: the user turn that asks for the caption (an `<image>` is prepended).
    prompt: str | None = None

    @field_validator("prefix")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/"):
            raise ValueError(f"{v!r} is not a relative store prefix like 'data/filtered'")
        return v.rstrip("/")


class SubStage(_Strict):
    """A sub-stage: what trains, on which data mix, for how long and at which learning rate."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    train: list[TrainablePart] = Field(default_factory=_all_parts, min_length=1)
    mix: list[MixEntry] = Field(default_factory=list)
    # Budget in real (non-pad) tokens; max_steps caps optimizer steps. At least one is needed.
    token_budget: int | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    lr: float = Field(default=2e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    # Sequences per optimizer step over all ranks, and per rank per micro step.
    global_batch: int = Field(default=8, ge=1)
    micro_batch: int = Field(default=4, ge=1)
    # Loss weight of each target token: uniform (plain mean cross-entropy), or idf: tokens that
    # few samples' targets hold (the image-dependent content of templated captions) weigh
    # 1 + idf_strength * ln((N+1)/(df+1)), df counted over the first idf_samples of the mix.
    token_weighting: Literal["uniform", "idf"] = "uniform"
    idf_strength: float = Field(default=4.0, gt=0, le=100)
    idf_samples: int = Field(default=4096, ge=16, le=1_000_000)

    @field_validator("mix")
    @classmethod
    def _mix(cls, v: list[MixEntry]) -> list[MixEntry]:
        if not v:
            raise ValueError("empty data mix: list at least one {prefix, weight}")
        return v

    @model_validator(mode="after")
    def _budget(self) -> SubStage:
        if self.token_budget is None and self.max_steps is None:
            raise ValueError(f"sub-stage {self.name!r}: set token_budget or max_steps")
        return self


class TrainingConfig(_Strict):
    """Everything a training stage shares, besides its sub-stages."""

    model: ModelSource = Field(default_factory=ModelSource)
    seq_len: int = Field(default=512, ge=16, le=131072)
    packing: bool = True
    # A sample longer than seq_len: cut (never inside an image) or drop; both are counted.
    on_too_long: Literal["truncate", "drop"] = "truncate"
    max_tiles: int = Field(default=1, ge=1, le=40)
    deepspeed: bool = True
    # ZeRO 0-2 (2 shards gradients and optimizer state). ZeRO-3 would partition the weights too,
    # which the checkpoint and export paths (full safetensors from rank 0) do not gather yet.
    zero_stage: Literal[0, 1, 2] = 2
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_clipping: float = Field(default=1.0, ge=0)
    checkpoint_every: int = Field(default=200, ge=1)
    keep_latest: int = Field(default=2, ge=1)
    seed: int = 0
    # Where the final model is exported (transformers format); default: the stage's first output.
    export_to: str | None = None
    log_every: int = Field(default=10, ge=1)

    @field_validator("export_to")
    @classmethod
    def _export(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("/") or ".." in v.split("/")):
            raise ValueError(f"{v!r} is not a relative store prefix like 'models/sft'")
        return v


def unique_names(stages: list[SubStage]) -> list[SubStage]:
    """Reject duplicate sub-stage names (they key checkpoints and progress)."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"duplicate sub-stage name {s.name!r}")
        seen.add(s.name)
    return stages
