"""Config block of `evaluate` stages: a model against question/answer shards."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sailk8s.stageconfig.engine import EngineName


class Config(BaseModel):
    """Which model, which metric; the QA shards are the stage's inputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A saved model: a prefix of this run's store, a store URI, or a local directory.
    model: str = Field(min_length=1)
    # exact_match: generate and compare; multiple_choice: pick the choice of highest
    # log-likelihood (needs `choices` in the sample); auto: multiple_choice when choices exist;
    # names_answer: generate (e.g. a caption) and check it names the answer (or one of its
    # `choice_aliases`) as a whole word and names no other choice.
    metric: Literal["auto", "exact_match", "multiple_choice", "names_answer"] = "auto"
    max_new_tokens: int = Field(default=16, ge=1, le=4096)
    batch_size: int = Field(default=16, ge=1)
    max_tiles: int = Field(default=1, ge=1, le=40)
    engine: EngineName = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    # Case and surrounding space/punctuation are ignored when comparing answers.
    normalize: bool = True
    # At most this many samples, spread evenly over the input shards (ceil(limit / shards) from
    # each, first ones first); the report counts the first `limit` predictions in shard order.
    limit: int | None = Field(default=None, ge=1)
    # A quality gate: below this accuracy the stage fails as permanent (exit 5) after writing its
    # report, so the stages that depend on the model (e.g. a recaption) never run on a bad one.
    min_accuracy: float | None = Field(default=None, ge=0, le=1)
