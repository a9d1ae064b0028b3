"""Config block of `caption` stages."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    """Placeholder until the caption stage lands: accepts any keys."""

    model_config = ConfigDict(extra="allow", frozen=True)
