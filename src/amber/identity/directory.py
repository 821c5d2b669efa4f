"""The directory: the people and groups the identity provider provisions into amber over SCIM.

Owns the `scim_users`, `scim_groups` and `scim_members` tables (amber.scim drives them and the revocations
that follow). Protects:
- a person SCIM deactivated or deleted is refused at every authentication (`is_deprovisioned`), whatever
  token they still hold;
- the groups SCIM manages follow the directory at once (`groups_now`): for the issuer SCIM provisions, a
  group name any SCIM group maps to (live, deleted or renamed away) counts only for the people the
  directory lists in it now, whatever a still-valid token or browser session says; the directory only
  takes groups away, never adds one. Token groups SCIM has never managed still count. Roles, policy
  decisions, approvals and re-checks all read groups through it.

Rows are never hard-deleted: a SCIM DELETE sets `deleted_at`, so the person's tokens stay refused and the
ledger's `scim.*` entries keep pointing at something. Membership rows are plain state (the ledger holds
the history).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class DirectoryScope:
    """Whose groups the directory decides, and how its group names read as amber groups.

    `issuer` is the issuer whose people SCIM provisions, or None when SCIM is off (tokens alone decide);
    `group_map` maps a SCIM group's displayName or externalId to an amber group name (as tokens' groups are).
    """

    issuer: str | None = None
    group_map: Mapping[str, str] = field(default_factory=dict)


NO_DIRECTORY = DirectoryScope()


def amber_names(display_name: str, external_id: str | None, group_map: Mapping[str, str]) -> set[str]:
    """The amber group names one SCIM group stands for."""
    names = {group_map.get(display_name, display_name)}
    if external_id and external_id in group_map:
        names.add(group_map[external_id])
    return names


def groups_now(
    session: Session, scope: DirectoryScope, issuer: str, subject: str, claimed: Collection[str]
) -> frozenset[str]:
    """The amber groups a person holds now: `claimed` (from a token, a browser session or a recorded decision)
    less every group SCIM manages that the directory does not list them in now.

    For the issuer SCIM provisions, a name any SCIM group maps to (a live group, a deleted one, or a name a
    group was renamed from) counts only if the person is an active directory user listed in a live group
    with that name; a person the directory does not know holds none of them (fail closed: SCIM pushes a
    person before their memberships). Names SCIM has never managed are taken from `claimed` as they are.
    People of other issuers, or anyone when SCIM is off, keep `claimed`.

    The directory only takes groups away, never adds one `claimed` lacks: a group counts when the signed
    token and the directory agree, so whoever holds the SCIM provisioning token cannot give anyone a role.

    What this does NOT check: whether the person is deprovisioned (`is_deprovisioned` refuses them first).
    """
    if scope.issuer is None or issuer != scope.issuer:
        return frozenset(claimed)
    wanted = set(claimed)
    if not wanted:
        return frozenset()
    member_of = set(
        session.scalars(
            select(ScimMember.group_id)
            .join(ScimUser, ScimUser.id == ScimMember.user_id)
            .where(
                ScimUser.issuer == issuer,
                ScimUser.subject == subject,
                ScimUser.active.is_(True),
                ScimUser.deleted_at.is_(None),
            )
        )
    )
    # Only the SCIM groups that could stand for a claimed name (by the index on display_name, or externalId):
    # a directory of any size costs one small lookup per call.
    mapped_from = {key for key, value in scope.group_map.items() if value in wanted}
    managed: set[str] = set()
    held: set[str] = set()
    for group_id, display_name, external_id, deleted_at in session.execute(
        select(ScimGroup.id, ScimGroup.display_name, ScimGroup.external_id, ScimGroup.deleted_at).where(
            or_(ScimGroup.display_name.in_(wanted | mapped_from), ScimGroup.external_id.in_(mapped_from))
        )
    ):
        names = amber_names(display_name, external_id, scope.group_map)
        managed |= names
        if deleted_at is None and group_id in member_of:
            held |= names
    return frozenset(name for name in wanted if name not in managed or name in held)
