"""Config block of `pretrain` stages: sub-stages with freeze policies (SAIL-VL alignment, advance)."""

from __future__ import annotations

from pydantic import Field, field_validator

from sailk8s.stageconfig.training import (
    SubStage,
    TrainablePart,
    TrainingConfig,
    _projector_only,
    unique_names,
)


class PretrainSubStage(SubStage):
    """A pretrain sub-stage; trains only the projector unless told otherwise."""

    train: list[TrainablePart] = Field(default_factory=_projector_only, min_length=1)


class Config(TrainingConfig):
    """Pretrain: ordered sub-stages, each continuing from the previous one's weights."""

    substages: list[PretrainSubStage] = Field(min_length=1)

    _names = field_validator("substages")(unique_names)
