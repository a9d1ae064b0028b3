"""The stage-kind registry: each kind's config model, the workload module its pods run, its image."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from sailk8s.stageconfig import caption, evaluate, filter, ingest, pretrain, sft

# The workload images (images/workload/Dockerfile targets; the chart's image.workloads keys).
IMAGES = ("caption", "filter", "train")


@dataclass(frozen=True)
class StageKind:
    """What a stage kind is: the model of its `config:` block, its workload module and image."""

    name: str
    config: type[BaseModel]
    image: str  # one of IMAGES

    @property
    def workload(self) -> str:
        """The module its pods run: `python -m jobs.launch ... -m <workload>`."""
        return f"jobs.{self.name}"


KINDS: dict[str, StageKind] = {k.name: k for k in (
    StageKind("ingest", ingest.Config, "filter"),
    StageKind("caption", caption.Config, "caption"),
    StageKind("filter", filter.Config, "filter"),
    StageKind("pretrain", pretrain.Config, "train"),
    StageKind("sft", sft.Config, "train"),
    StageKind("evaluate", evaluate.Config, "train"),
)}
STAGE_KINDS: tuple[str, ...] = tuple(KINDS)


def kind(name: str) -> StageKind:
    """The registered kind, or ValueError listing the known ones."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown stage kind {name!r}; known kinds: {', '.join(KINDS)}") from None
