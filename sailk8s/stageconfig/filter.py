"""Config block of `filter` stages."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    """Placeholder until the filter stage lands: accepts any keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
