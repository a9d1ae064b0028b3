"""Per-kind config models for a stage's `config:` block. Pure pydantic, no ML imports.

Each kind has a module here (`sailk8s.stageconfig.<kind>`) defining `Config`; the controller
validates it at `validate` time and the workload parses the same model from the env contract.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ValidationError


def config_model(kind: str) -> type[BaseModel]:
    """The Config model of a stage kind."""
    module = importlib.import_module(f"sailk8s.stageconfig.{kind}")
    model: type[BaseModel] = module.Config
    return model


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
