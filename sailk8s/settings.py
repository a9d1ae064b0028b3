"""Process settings from `SAIL_*` environment variables (pydantic-settings). Pure: no I/O."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Store endpoint and credentials, cluster coordinates and logging, from the environment."""

    model_config = SettingsConfigDict(env_prefix="SAIL_", extra="ignore", frozen=True)

    # S3/MinIO endpoint, e.g. "http://minio.sail.svc:9000" or "s3.amazonaws.com" (https).
    store_endpoint: str | None = None
    store_access_key: SecretStr | None = None
    store_secret_key: SecretStr | None = None
    store_region: str | None = None
    # Upper bound, in seconds, on retrying one transient store operation before giving up.
    store_retry_seconds: float = 60.0
    namespace: str = "default"
    kube_context: str | None = None
    # Run lock lease: a controller that dies (kill -9, lost node) blocks its successor at most
    # this long. Shorter takes over sooner; longer tolerates slower API/store round trips.
    lease_seconds: float = Field(default=30.0, ge=1.0)
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def load_settings() -> Settings:
    """Settings from the current environment."""
    return Settings()
