"""Config block of `sft` stages: an ordered curriculum of sub-stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sailk8s.stageconfig.training import SubStage, TrainingConfig, unique_names


class Config(TrainingConfig):
    """SFT: curriculum stages in order, each from the previous one's final weights."""

    stages: list[SubStage] = Field(min_length=1)
    # Optional ordering of the samples inside each source by a score field the filter stage
    # wrote (dotted path into the sample json, e.g. "scores.richness"); missing scores go last.
    order_by: str | None = None
    order: Literal["ascending", "descending"] = "ascending"

    _names = field_validator("stages")(unique_names)
