"""SCIM groups: create, replace (PUT), patch (members, displayName, externalId), delete, get and list.

Invariants:
- Whoever leaves a group has their browser sessions ended (a session keeps the groups of its sign-in) and
  is re-checked (amber.scim.reevaluation); members must be known, live users.
- After a rename, the amber names the group stood for stay managed by the directory (a deleted row holds
  them), so a token that still carries an old name does not bring it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber.core.errors import Conflict, InvalidInput, NotFound
from amber.core.ids import new_id
from amber.identity.directory import ScimGroup, ScimMember, ScimUser, amber_names
from amber.identity.sessions import end_sessions_of
from amber.scim import shapes
from amber.scim.base import Person
from amber.scim.reevaluation import Reevaluation


class Groups(Reevaluation):
    """The Groups part of ScimService."""

    def create_group(self, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        name = shapes.required_str(body, "displayName")
        with self._uow() as session:
            existing = session.scalar(
                select(ScimGroup.id).where(ScimGroup.display_name == name, ScimGroup.deleted_at.is_(None))
            )
            if existing is not None:
                raise shapes.scim_error(Conflict, f"a group named {name!r} already exists", "uniqueness")
            now = self._clock.now()
            managed_before = self._managed_names(session)
            group = ScimGroup(
                id=new_id("scg"),
                display_name=name,
                external_id=shapes.opt_str(shapes.lower_keys(body).get("externalid")),
                created_at=now,
                updated_at=now,
            )
            session.add(group)
            session.flush()
            added = self._set_members(session, group, shapes.member_ids(shapes.lower_keys(body).get("members")))[0]
            self._record(session, "scim.group_created", group.id, call, {"displayName": name, "added": added}, now=now)
            changes = self._newly_managed(session, group, managed_before)
            self._after_change(session, changes, call=call)
            result = self._group_out(session, group, members=True)
        self._recheck(changes, call=call)
        return result

    def replace_group(self, group_id: str, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        with self._uow() as session:
            group = self._group(session, group_id)
            before = (group.display_name, group.external_id)
            group.display_name = shapes.required_str(body, "displayName")
            lowered = shapes.lower_keys(body)
            if "externalid" in lowered:
                group.external_id = shapes.opt_str(lowered["externalid"])
            result, changes = self._save_members(
                session, group, shapes.member_ids(lowered.get("members")), "scim.group_replaced", call, before=before
            )
        self._recheck(changes, call=call)
        return result

    def patch_group(self, group_id: str, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        operations = shapes.patch_operations(body)
        with self._uow() as session:
            group = self._group(session, group_id)
            before = (group.display_name, group.external_id)
            current = set(self._member_ids_of(session, group.id))
            wanted = set(current)
            for op, path, value in operations:
                target = (path or "").lower()
                if op == "replace" and path is None and isinstance(value, Mapping):
                    lowered = shapes.lower_keys(value)
                    if "displayname" in lowered:
                        group.display_name = str(lowered["displayname"])
                    if "externalid" in lowered:
                        group.external_id = shapes.opt_str(lowered["externalid"])
                    if "members" in lowered:
                        wanted = set(shapes.member_ids(lowered["members"]))
                elif target == "displayname" and op in ("replace", "add"):
                    group.display_name = str(value)
                elif target == "externalid":
                    group.external_id = None if op == "remove" else shapes.opt_str(value)
                elif target == "members" or (target.startswith("members[") and op == "remove"):
                    wanted = shapes.patch_ids(wanted, op, path or "members", value)
                else:
                    raise shapes.scim_error(InvalidInput, f"unsupported Group PATCH {op} {path!r}", "invalidPath")
            result, changes = self._save_members(
                session, group, sorted(wanted), "scim.group_updated", call, before=before
            )
        self._recheck(changes, call=call)
        return result

    def _save_members(
        self,
        session: Session,
        group: ScimGroup,
        wanted: list[str],
        event: str,
        call: str,
        *,
        before: tuple[str, str | None],
    ) -> tuple[dict[str, Any], dict[Person, str]]:
        """Set a group's members, record the change, and return the group as SCIM shows it and whose groups
        changed (issuer and subject -> what happened to them)."""
        managed_before = self._managed_names(session, besides=group.id) | amber_names(
            before[0], before[1], self._settings().group_map
        )
        added, removed = self._set_members(session, group, wanted)
        now = self._clock.now()
        group.updated_at = now
        payload: dict[str, Any] = {"displayName": group.display_name, "added": added, "removed": removed}
        left = dict.fromkeys(removed, f"left group {before[0]!r}")
        if self._keep_old_names(session, group, before, now=now):
            payload["renamedFrom"] = {"displayName": before[0], "externalId": before[1]}
            for user_id in self._member_ids_of(session, group.id):
                left.setdefault(user_id, f"group {before[0]!r} renamed to {group.display_name!r}")
        self._record(session, event, group.id, call, payload, now=now)
        changes = self._newly_managed(session, group, managed_before) | self._people(session, left)
        self._after_change(session, changes, call=call)
        return self._group_out(session, group, members=True), changes

    def _keep_old_names(
        self, session: Session, group: ScimGroup, before: tuple[str, str | None], *, now: datetime
    ) -> bool:
        """After a rename, keep the amber names the group stood for managed by the directory, so that a token
        that still carries an old name does not bring it back: a deleted row (no members) holds them.
        Returns whether any amber name went away."""
        group_map = self._settings().group_map
        old = amber_names(before[0], before[1], group_map)
        if old <= amber_names(group.display_name, group.external_id, group_map):
            return False
        # NOTE: a deleted group row is how the directory remembers a name it manages (groups_now reads them).
        session.add(
            ScimGroup(
                id=new_id("scg"),
                display_name=before[0],
                external_id=before[1],
                created_at=now,
                updated_at=now,
                deleted_at=now,
            )
        )
        return True

    def delete_group(self, group_id: str, *, call: str) -> None:
        with self._uow() as session:
            group = self._group(session, group_id)
            removed = self._set_members(session, group, [])[1]
            now = self._clock.now()
            group.deleted_at = now
            group.updated_at = now
            self._record(
                session,
                "scim.group_deleted",
                group.id,
                call,
                {"displayName": group.display_name, "removed": removed},
                now=now,
            )
            changes = self._people(session, dict.fromkeys(removed, f"left group {group.display_name!r}"))
            self._after_change(session, changes, call=call)
        self._recheck(changes, call=call)

    def get_group(self, group_id: str, *, members: bool = True) -> dict[str, Any]:
        with self._uow() as session:
            return self._group_out(session, self._group(session, group_id), members=members)

    def list_groups(self, filter_: str | None, *, start: int, count: int, members: bool) -> dict[str, Any]:
        field_map = {"displayname": ScimGroup.display_name, "externalid": ScimGroup.external_id, "id": ScimGroup.id}
        with self._uow() as session:
            query = select(ScimGroup).where(ScimGroup.deleted_at.is_(None)).order_by(ScimGroup.created_at)
            if filter_:
                _, column, value = shapes.filter_on(filter_, field_map)
                query = query.where(column == value)
            rows = list(session.scalars(query))
            page = rows[max(start, 1) - 1 : max(start, 1) - 1 + count]
            resources = [self._group_out(session, g, members=members) for g in page]
            return shapes.list_response(resources, total=len(rows), start=start)

    # -- helpers -------------------------------------------------------------------------------------------

    def _group(self, session: Session, group_id: str) -> ScimGroup:
        group = session.get(ScimGroup, group_id)
        if group is None or group.deleted_at is not None:
            raise shapes.scim_error(NotFound, f"no SCIM group {group_id}")
        return group

    def _member_ids_of(self, session: Session, group_id: str) -> list[str]:
        return list(session.scalars(select(ScimMember.user_id).where(ScimMember.group_id == group_id)))

    def _set_members(self, session: Session, group: ScimGroup, wanted: list[str]) -> tuple[list[str], list[str]]:
        current = set(self._member_ids_of(session, group.id))
        target = set(wanted)
        for user_id in sorted(target - current):
            self._user(session, user_id)  # members must be known, live users
            session.add(ScimMember(group_id=group.id, user_id=user_id))
        for user_id in sorted(current - target):
            member = session.get(ScimMember, (group.id, user_id))
            if member is not None:
                session.delete(member)
            # A browser session keeps the groups of its sign-in: whoever leaves a group signs in again.
            user = session.get(ScimUser, user_id)
            if user is not None and user.subject is not None:
                end_sessions_of(
                    session, user.issuer, user.subject, now=self._clock.now(), reason=f"left group {group.display_name}"
                )
        session.flush()
        return sorted(target - current), sorted(current - target)

    def _group_out(self, session: Session, group: ScimGroup, *, members: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "id": group.id,
            "displayName": group.display_name,
            "meta": shapes.meta("Group", group.id, group.created_at, group.updated_at),
        }
        if group.external_id is not None:
            out["externalId"] = group.external_id
        if members:
            rows = session.execute(
                select(ScimUser.id, ScimUser.user_name)
                .join(ScimMember, ScimMember.user_id == ScimUser.id)
                .where(ScimMember.group_id == group.id)
                .order_by(ScimUser.id)
            ).all()
            out["members"] = [{"value": uid, "display": name} for uid, name in rows]
        return out
