"""Access requests and approvals. The submitted columns are immutable: a database trigger refuses updates."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from amber.core.db import Base

# Written once at submission; the migration installs a trigger that refuses to change them.
IMMUTABLE_COLUMNS = (
    "requester_issuer",
    "requester_subject",
    "requester_name",
    "requester_groups",
    "resource",
    "level",
    "reason",
    "requested_ttl_s",
    "submitted_at",
    "supersedes_id",
)


class AccessRequest(Base):
    __tablename__ = "access_requests"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    requester_issuer: Mapped[str] = mapped_column(String(512))
    requester_subject: Mapped[str] = mapped_column(String(512))
    requester_name: Mapped[str] = mapped_column(String(512))
    requester_groups: Mapped[str] = mapped_column(Text)  # JSON list, as verified at submission
    resource: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    requested_ttl_s: Mapped[int] = mapped_column(Integer)
    supersedes_id: Mapped[str | None] = mapped_column(String(40))
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # pending -> approved | denied | cancelled;  or straight to approved / denied by policy
    status: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(24))
    decision_reasons: Mapped[str] = mapped_column(Text)  # JSON list
    policy_ids: Mapped[str] = mapped_column(Text)  # JSON list
    policy_hash: Mapped[str] = mapped_column(String(64))
    granted_ttl_s: Mapped[int] = mapped_column(Integer)
    approvals_required: Mapped[int] = mapped_column(Integer)
    approver_groups: Mapped[str] = mapped_column(Text)  # JSON list
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_access_requests_status", "status"),
        Index("ix_access_requests_requester", "requester_issuer", "requester_subject"),
    )


class Approval(Base):
    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"))
    approver_issuer: Mapped[str] = mapped_column(String(512))
    approver_subject: Mapped[str] = mapped_column(String(512))
    approver_name: Mapped[str] = mapped_column(String(512))
    verdict: Mapped[str] = mapped_column(String(8))  # approve | deny
    comment: Mapped[str] = mapped_column(Text, default="")
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("request_id", "approver_issuer", "approver_subject", name="uq_approvals_one_per_person"),
    )
