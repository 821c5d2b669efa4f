"""Access requests and approvals. The submitted columns are immutable: a database trigger refuses updates."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
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
    requested_start_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    break_glass: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    pending_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approver_all_groups: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")  # JSON list
    single_use: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    window_end_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Break-glass access must be reviewed afterwards: required -> done.
    review_status: Mapped[str | None] = mapped_column(String(16), index=False)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    reviewed_by: Mapped[str | None] = mapped_column(String(512))

    __table_args__ = (
        Index("ix_access_requests_status", "status"),
        Index("ix_access_requests_review", "review_status"),
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
    approver_groups: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")  # JSON, at approval

    __table_args__ = (
        UniqueConstraint("request_id", "approver_issuer", "approver_subject", name="uq_approvals_one_per_person"),
    )


class Notification(Base):
    """An outbox row: who must be told about a request (break-glass), delivered at least once by the worker."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(32))
    recipients: Mapped[str] = mapped_column(Text)  # JSON list of groups
    message: Mapped[str] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_notifications_pending", "delivered_at", "next_attempt_at"),)
