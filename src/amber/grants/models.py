"""The grants table: one row per grant, its lifecycle state and what amber did on the target."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from amber.core.db import Base


class Grant(Base):
    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"), unique=True)
    grantee_issuer: Mapped[str] = mapped_column(String(512))
    grantee_subject: Mapped[str] = mapped_column(String(512))
    grantee_name: Mapped[str] = mapped_column(String(512))
    resource: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(64))
    role_name: Mapped[str] = mapped_column(String(63), unique=True)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # issued -> active -> expired | revoked   (issued -> expired | revoked when provisioning never finished)
    status: Mapped[str] = mapped_column(String(16))
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(Text)
    ended_by: Mapped[str | None] = mapped_column(String(512))
    credential_shown_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deprovisioned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Operational bookkeeping for retries; not lifecycle state, so not replayed from the ledger.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    connect_host: Mapped[str | None] = mapped_column(String(255))
    connect_port: Mapped[int | None] = mapped_column(Integer)
    connect_database: Mapped[str | None] = mapped_column(String(255))
    starts_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # scheduled access begins
    single_use: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    session_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    via: Mapped[str] = mapped_column(String(16), default="direct", server_default="direct")
    gateway_token_hash: Mapped[str | None] = mapped_column(String(64))  # HMAC of the token shown once
    # SCRAM-SHA-256 verifier of the same token (PostgreSQL format), so clients can log in without sending it.
    gateway_scram_verifier: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_grants_status_expires", "status", "expires_at"),
        Index("ix_grants_grantee", "grantee_issuer", "grantee_subject"),
    )
