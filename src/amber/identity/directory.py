"""The directory: the people and groups the identity provider provisions into amber over SCIM.

Owns the `scim_users`, `scim_groups` and `scim_members` tables (amber.scim drives them and the revocations
that follow). Protects: a person SCIM deactivated or deleted is refused at every authentication
(`is_deprovisioned`), whatever token they still hold.

Rows are never hard-deleted: a SCIM DELETE sets `deleted_at`, so the person's tokens stay refused and the
ledger's `scim.*` entries keep pointing at something. Membership rows are plain state (the ledger holds
the history).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, String, Text, or_, select, true
from sqlalchemy.orm import Mapped, Session, mapped_column

from amber.core.db import Base


class ScimUser(Base):
    __tablename__ = "scim_users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512))
    user_name: Mapped[str] = mapped_column(String(512), index=True)
    external_id: Mapped[str | None] = mapped_column(String(512))
    # The token subject this SCIM user is (from `scim.subject_attribute`); with `issuer`, the identity.
    subject: Mapped[str | None] = mapped_column(String(512))
    display_name: Mapped[str | None] = mapped_column(String(512))
    emails: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")  # JSON list of SCIM emails
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_scim_users_subject", "issuer", "subject"),)


class ScimGroup(Base):
    __tablename__ = "scim_groups"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(512), index=True)
    external_id: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ScimMember(Base):
    __tablename__ = "scim_members"

    group_id: Mapped[str] = mapped_column(ForeignKey("scim_groups.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("scim_users.id"), primary_key=True, index=True)


def is_deprovisioned(session: Session, issuer: str, subject: str) -> bool:
    """True if SCIM deactivated or deleted the person with this issuer and subject.

    What this does NOT check: people SCIM never provisioned (they are not in the directory and pass); amber
    does not require SCIM, so an unknown person is not refused here.
    """
    found = session.scalar(
        select(ScimUser.id)
        .where(
            ScimUser.issuer == issuer,
            ScimUser.subject == subject,
            or_(ScimUser.active.is_(False), ScimUser.deleted_at.is_not(None)),
        )
        .limit(1)
    )
    return found is not None
