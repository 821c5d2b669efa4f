"""The one settings object. Read from the environment (`AMBER_` prefix); nothing is built at import time."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AMBER_", extra="ignore")

    env: Literal["development", "test", "production"] = "development"
    state_dir: Path = Path(".amber")
    # None means SQLite in state_dir; set a postgresql+psycopg:// URL for the scale-out store.
    database_url: str | None = None
    catalog: Path = Path("amber.yaml")
    host: str = "127.0.0.1"
    port: int = 8080
    # The URL users and the CLI reach amber at; also the dev issuer's `iss`.
    public_url: str | None = None
    # How often the worker looks for due work at most; it also wakes when told something changed.
    worker_interval_s: float = Field(default=0.1, gt=0, le=5)
    # How often the reconciler compares target roles with live grants.
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    log_level: str = "INFO"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'amber.db').resolve()}"

    @property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
