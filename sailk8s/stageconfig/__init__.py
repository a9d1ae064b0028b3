"""Per-kind config models for a stage's `config:` block (pure pydantic), and the kind registry."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError


def config_model(kind: str) -> type[BaseModel]:
    """The Config model of a stage kind (sailk8s.stageconfig.registry)."""
    from sailk8s.stageconfig.registry import kind as registered

    return registered(kind).config


def parse_stage_config(kind: str, config: dict[str, Any]) -> BaseModel:
    """Parse a config block; problems are raised as one ValueError naming each field."""
    try:
        return config_model(kind).model_validate(config)
    except ValidationError as err:
        parts = []
        for e in err.errors():
            loc = "".join(f".{x}" for x in e["loc"])
            msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
            parts.append(f"config{loc}: {msg.removeprefix('Value error, ')}")
        raise ValueError("; ".join(parts)) from None
