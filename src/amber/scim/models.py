"""SCIM tables: the people and groups the identity provider provisions into amber.

Rows are never hard-deleted: a SCIM DELETE sets `deleted_at`, so the person's tokens stay refused and the
ledger's `scim.*` entries keep pointing at something. Membership rows are plain state (the ledger holds
the history).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, ForeignKey, Index, String, Text, true
from sqlalchemy.orm import Mapped, mapped_column

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
