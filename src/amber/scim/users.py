"""SCIM users: create, replace (PUT), patch (including the `groups` a provider sets on the user), delete, get
and list.

Invariants:
- Deactivating or deleting a person, in that transaction: ends their browser sessions, cancels their pending
  requests (nobody approves them later) and records that the approvals they gave on pending requests no
  longer count. Then it revokes every live grant of theirs (each revocation ends the target's sessions
  before the call returns); each `grant.revoked` reason names the SCIM call. From that commit on, amber
  refuses their tokens.
- Group memberships set on the user are applied as the same change made on each group; leaving a group
  re-checks the person (amber.scim.reevaluation).
- The subject a token names sticks once known: a later update that drops the attribute does not unlink the
  person. amber never stores a password.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from amber.core.errors import Conflict, InvalidInput
from amber.core.ids import new_id
from amber.identity.directory import ScimGroup, ScimMember, ScimUser
from amber.identity.sessions import end_sessions_of
from amber.scim import shapes
from amber.scim.base import Person, ScimSettings
from amber.scim.reevaluation import Reevaluation


class Users(Reevaluation):
    """The Users part of ScimService."""

    def create_user(self, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        settings = self._settings()
        user_name = shapes.required_str(body, "userName")
        with self._uow() as session:
            if self._user_by_name(session, user_name) is not None:
                raise shapes.scim_error(Conflict, f"a user with userName {user_name!r} already exists", "uniqueness")
            now = self._clock.now()
            user = ScimUser(
                id=new_id("scu"),
                issuer=settings.issuer,
                user_name=user_name,
                created_at=now,
                updated_at=now,
                active=True,
            )
            _apply_user(user, body, settings)
            session.add(user)
            session.flush()
            self._record(session, "scim.user_created", user.id, call, _user_summary(user), now=now)
            if not user.active:
                self._deprovision_requests(session, user, call=call, why="created inactive")
            result = self._user_out(session, user)
            deprovision = not user.active
        if deprovision:
            self._revoke_all(result["id"], call=call, why="created inactive")
        return result

    def replace_user(self, user_id: str, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        settings = self._settings()
        with self._uow() as session:
            user = self._user(session, user_id)
            was_active = user.active
            user.user_name = shapes.required_str(body, "userName")
            if "active" not in shapes.lower_keys(body):
                body = {**body, "active": True}  # PUT replaces: an absent `active` means the default, true
            _apply_user(user, body, settings)
            now = self._clock.now()
            user.updated_at = now
            event = _activity_event(was_active, user.active) or "scim.user_replaced"
            self._record(session, event, user.id, call, _user_summary(user), now=now)
            if was_active and not user.active:
                self._end_sessions(session, user, call, now)
                self._deprovision_requests(session, user, call=call, why="deactivated")
            result = self._user_out(session, user)
        if was_active and not result["active"]:
            self._revoke_all(user_id, call=call, why="deactivated")
        return result

    def patch_user(self, user_id: str, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        settings = self._settings()
        operations = shapes.patch_operations(body)
        with self._uow() as session:
            user = self._user(session, user_id)
            was_active = user.active
            current = set(self._group_ids_of(session, user.id))
            groups = set(current)
            for op, path, value in operations:
                if op not in ("add", "replace", "remove"):
                    raise shapes.scim_error(InvalidInput, f"unsupported PATCH op {op!r}", "invalidSyntax")
                if path is None:
                    if not isinstance(value, Mapping):
                        raise shapes.scim_error(
                            InvalidInput, "a PATCH without a path needs an object value", "invalidValue"
                        )
                    lowered = shapes.lower_keys(value)
                    if "groups" in lowered:
                        groups = shapes.patch_ids(groups, op, "groups", lowered.pop("groups"))
                    _apply_user(user, lowered, settings)
                elif path.lower() == "groups" or path.lower().startswith("groups["):
                    # Group memberships set on the user (RFC 7643 calls them read-only; some providers send them):
                    # applied as the same change made on each group, never silently ignored.
                    groups = shapes.patch_ids(groups, op, path, value)
                else:
                    _apply_user(user, {path: None if op == "remove" else value}, settings)
            now = self._clock.now()
            user.updated_at = now
            event = _activity_event(was_active, user.active) or "scim.user_updated"
            summary = _user_summary(user)
            changes: dict[Person, str] = {}
            if groups != current:
                added, removed = self._set_groups(session, user, groups, current, call=call)
                summary |= {"groupsAdded": added, "groupsRemoved": removed}
                changes = self._changes_of(session, user, added, removed)
            self._record(session, event, user.id, call, summary, now=now)
            if was_active and not user.active:
                self._end_sessions(session, user, call, now)
                self._deprovision_requests(session, user, call=call, why="deactivated")
            elif changes:
                self._after_change(session, changes, call=call)
            result = self._user_out(session, user)
        if was_active and not result["active"]:
            self._revoke_all(user_id, call=call, why="deactivated")
        elif changes:
            self._recheck(changes, call=call)
        return result

    def delete_user(self, user_id: str, *, call: str) -> None:
        with self._uow() as session:
            user = self._user(session, user_id)
            now = self._clock.now()
            user.deleted_at = now
            user.active = False
            user.updated_at = now
            groups = list(session.scalars(select(ScimMember).where(ScimMember.user_id == user_id)))
            for member in groups:
                session.delete(member)
            self._record(session, "scim.user_deleted", user.id, call, _user_summary(user), now=now)
            self._end_sessions(session, user, call, now)
            self._deprovision_requests(session, user, call=call, why="deleted")
        self._revoke_all(user_id, call=call, why="deleted")

    def get_user(self, user_id: str) -> dict[str, Any]:
        with self._uow() as session:
            return self._user_out(session, self._user(session, user_id))

    def list_users(self, filter_: str | None, *, start: int, count: int) -> dict[str, Any]:
        field_map = {"username": ScimUser.user_name, "externalid": ScimUser.external_id, "id": ScimUser.id}
        with self._uow() as session:
            query = select(ScimUser).where(ScimUser.deleted_at.is_(None)).order_by(ScimUser.created_at, ScimUser.id)
            if filter_:
                attribute, column, value = shapes.filter_on(filter_, field_map)
                # userName is case-insensitive in SCIM (RFC 7643 section 4.1.1).
                query = query.where(
                    func.lower(column) == value.lower() if attribute.lower() == "username" else column == value
                )
            rows = list(session.scalars(query))
            page = rows[max(start, 1) - 1 : max(start, 1) - 1 + count]
            return shapes.list_response([self._user_out(session, u) for u in page], total=len(rows), start=start)

    # -- helpers -------------------------------------------------------------------------------------------

    def _set_groups(
        self, session: Session, user: ScimUser, wanted: set[str], current: set[str], *, call: str
    ) -> tuple[list[str], list[str]]:
        """Set one user's group memberships (a PATCH on the user); returns the group ids added and removed."""
        now = self._clock.now()
        for group_id in sorted(wanted - current):
            group = session.get(ScimGroup, group_id)
            if group is None or group.deleted_at is not None:
                raise shapes.scim_error(InvalidInput, f"no SCIM group {group_id}", "invalidValue")
            session.add(ScimMember(group_id=group_id, user_id=user.id))
            group.updated_at = now
        for group_id in sorted(current - wanted):
            member = session.get(ScimMember, (group_id, user.id))
            if member is not None:
                session.delete(member)
            group = session.get(ScimGroup, group_id)
            if group is not None:
                group.updated_at = now
        if current - wanted and user.subject is not None:
            end_sessions_of(session, user.issuer, user.subject, now=now, reason=f"scim {call}: left groups")
        session.flush()
        return sorted(wanted - current), sorted(current - wanted)

    def _changes_of(self, session: Session, user: ScimUser, added: list[str], removed: list[str]) -> dict[Person, str]:
        """What a user PATCH did to their groups, as the re-checks name it; only leaving a group can deny."""
        del added  # joining a group never takes access away: the directory only removes groups (decision 0014)
        if not removed:
            return {}
        names = list(session.scalars(select(ScimGroup.display_name).where(ScimGroup.id.in_(removed))))
        return self._people(session, {user.id: "left group " + ", ".join(repr(name) for name in sorted(names))})

    def _end_sessions(self, session: Session, user: ScimUser, call: str, now: datetime) -> None:
        if user.subject is not None:
            end_sessions_of(session, user.issuer, user.subject, now=now, reason=f"scim {call}")

    def _user_by_name(self, session: Session, user_name: str) -> ScimUser | None:
        return session.scalar(
            select(ScimUser).where(func.lower(ScimUser.user_name) == user_name.lower(), ScimUser.deleted_at.is_(None))
        )

    def _group_ids_of(self, session: Session, user_id: str) -> list[str]:
        return list(session.scalars(select(ScimMember.group_id).where(ScimMember.user_id == user_id)))

    def _user_out(self, session: Session, user: ScimUser) -> dict[str, Any]:
        groups = session.execute(
            select(ScimGroup.id, ScimGroup.display_name)
            .join(ScimMember, ScimMember.group_id == ScimGroup.id)
            .where(ScimMember.user_id == user.id)
        ).all()
        out: dict[str, Any] = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": user.id,
            "userName": user.user_name,
            "active": user.active,
            "emails": shapes.json_list_of_dicts(user.emails),
            "groups": [{"value": gid, "display": name} for gid, name in groups],
            "meta": shapes.meta("User", user.id, user.created_at, user.updated_at),
        }
        if user.external_id is not None:
            out["externalId"] = user.external_id
        if user.display_name is not None:
            out["displayName"] = user.display_name
        return out


def _apply_user(user: ScimUser, body: Mapping[str, Any], settings: ScimSettings) -> None:
    """Set the attributes amber keeps; others (name parts, locale, enterprise extension) are accepted and not kept."""
    for key, value in shapes.lower_keys(body).items():
        if key == "active":
            user.active = shapes.as_bool(value) if value is not None else True
        elif key == "username":
            if not isinstance(value, str) or not value.strip():
                raise shapes.scim_error(InvalidInput, "userName must be a non-empty string", "invalidValue")
            user.user_name = value.strip()
        elif key == "externalid":
            user.external_id = shapes.opt_str(value)
        elif key == "displayname":
            user.display_name = shapes.opt_str(value)
        elif key == "emails":
            user.emails = json.dumps(value if isinstance(value, list) else [])
        elif key.startswith("emails[") and key.endswith("].value"):
            emails = shapes.json_list_of_dicts(user.emails) or [{"type": "work", "primary": True}]
            emails[0]["value"] = value
            user.emails = json.dumps(emails)
        elif key in ("password",):
            continue  # Okta sends one on create; amber never stores it
    # NOTE: the subject sticks once known: a later update that drops the attribute must not unlink the person.
    attribute = {"externalId": user.external_id, "userName": user.user_name, "id": user.id}[settings.subject_attribute]
    if attribute:
        user.subject = attribute


def _activity_event(was_active: bool, active: bool) -> str | None:
    if was_active and not active:
        return "scim.user_deactivated"
    if active and not was_active:
        return "scim.user_reactivated"
    return None


def _user_summary(user: ScimUser) -> dict[str, Any]:
    return {"userName": user.user_name, "externalId": user.external_id, "active": user.active, "sub": user.subject}
