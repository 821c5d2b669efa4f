"""The one settings object. Read from the environment (`AMBER_` prefix); nothing is built at import time."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from amber.core.durations import parse_duration

# Appended to every refusal that only production makes, for whoever forgot to say where amber runs.
PRODUCTION_HINT = (
    "(AMBER_ENV is production unless set otherwise; to try amber on your machine, set AMBER_ENV=development "
    "as `make run` does)"
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AMBER_", extra="ignore")

    # Unset means production: whoever forgets to say gets the strict checks (http issuers, the dev issuer, an
    # unsigned ledger, a self-signed gateway certificate are refused). `make run` sets development explicitly.
    env: Literal["development", "test", "production"] = "production"
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
    # amber's secret key (hex, 0600): hashes of amber-issued tokens, derived upstream passwords.
    # Default: <state_dir>/secret.key, created on first start.
    secret_key_file: Path | None = None
    # The PostgreSQL gateway: off unless a port is set (6432 is conventional). public host/port go into
    # connection strings when amber runs behind a load balancer.
    gateway_host: str = "127.0.0.1"
    gateway_port: int | None = None
    gateway_public_host: str | None = None
    gateway_public_port: int | None = None
    gateway_tls_cert: Path | None = None
    gateway_tls_key: Path | None = None
    # In production the gateway refuses to start with a self-signed certificate (its own generated one, or a
    # configured one that signs itself) unless this says the operator means it (clients then pin it themselves).
    gateway_allow_self_signed: bool = False
    # Bounds before login (decision 0010): connections waiting to log in, in all and per source address, and how
    # long a login may take (PostgreSQL's authentication_timeout).
    gateway_max_pending_logins: int = Field(default=256, ge=1)
    gateway_max_pending_logins_per_source: int = Field(default=32, ge=1)
    gateway_login_timeout_s: float = Field(default=60.0, gt=0, le=600)
    # How often the gateway compares each upstream's catalogs with what its lookup cache was filled from.
    gateway_schema_poll_s: float = Field(default=1.0, gt=0, le=60)
    # Write the gateway's per-statement ledger entries from a child process (keeps hashing off the gateway).
    gateway_recorder_process: bool = True
    # How often the gateway asks the state database whether a grant with a live session here ended in another
    # amber process (replicas sharing one state database). In-process revocations cut at once regardless.
    gateway_watch_interval_s: float = Field(default=0.5, gt=0, le=1.0)
    # The ledger's checkpoint signing key, by reference only: `file:/path` or `env:NAME` holding a
    # `PRIVATE+KEY+...` Ed25519 note key (`amber audit keygen`). Unset outside production: a dev key in state_dir.
    ledger_signing_key: str | None = None
    # The checkpoint origin line (a log's unique name); default `amber/<installation id>`.
    ledger_origin: str | None = None
    # Sign a checkpoint every N entries or S seconds (whichever comes first) while `amber serve` runs.
    ledger_checkpoint_every_entries: int = Field(default=1000, ge=1)
    ledger_checkpoint_interval_s: float = Field(default=60.0, gt=0)
    # How often (real seconds) the checkpoint thread looks whether N entries or S seconds are reached.
    ledger_checkpoint_poll_s: float = Field(default=1.0, gt=0, le=60)
    # Where every checkpoint is also delivered (JSON list): {"kind": "file", "path": ...},
    # {"kind": "webhook", "url": ..., "secret": "env:NAME"}, {"kind": "s3", "endpoint": ..., "bucket": ...,
    # "access_key": "env:NAME", "secret_key": "env:NAME", "retention_days": 3650}. Secrets only by reference.
    ledger_witnesses: list[dict[str, Any]] = Field(default_factory=list)
    # How far ahead a scheduled start may be (`30d`, `12h`, or seconds); a later start is refused (422).
    max_start_ahead: timedelta = timedelta(days=30)
    # Where break-glass notices go (a chat or paging bridge); without it they are logged as warnings.
    notify_webhook_url: str | None = None
    notify_webhook_secret: str | None = Field(default=None, repr=False)

    @field_validator("max_start_ahead", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        if isinstance(value, str | int | float | timedelta):
            return parse_duration(value)
        raise ValueError(f"not a duration: {value!r}")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'amber.db').resolve()}"

    @property
    def resolved_secret_key_file(self) -> Path:
        return self.secret_key_file or self.state_dir / "secret.key"

    @property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
