"""SCIM 2.0 provisioning and what it sets off: deprovisioning people and re-checking grants, pending requests
and approvals after group changes.

Owns the orchestration between the directory (amber.identity.directory), the requests, the grants and the
running policy. Invariants:
- Every SCIM change is written with a `scim.*` ledger entry naming the SCIM call, in one transaction with
  what it sets off in amber's own state: sessions ended, pending requests denied or cancelled, approvals
  recorded as lapsed (each entry's reason names the call). Only revocations, which reach target systems,
  follow after the commit.
- Deactivating or deleting a person, in that transaction: ends their browser sessions, cancels their pending
  requests (nobody approves them later) and records that the approvals they gave on pending requests no
  longer count. Then it revokes every live grant of theirs (each revocation ends the target's sessions
  before the call returns); each `grant.revoked` reason names the SCIM call. From that commit on, amber
  refuses their tokens.
- Losing a group (leaving it by a group PATCH or PUT, a group DELETE or a PATCH of the user's `groups`; a
  rename that takes a group name away; or SCIM starting to manage a name, by a new group or a rename, that
  a pending request, an approval on one or a live grant recorded for a non-member) re-asks the running
  policy with the groups the person holds now (decision 0014) and everything else as at the original
  decision (reason, requested duration, the time of submission, so business hours do not deny or revoke
  at night): in the same transaction about each pending request of theirs (one policy would now deny is
  denied) and each approval they gave on a pending request (one they could no longer give is recorded as
  lapsed; access_requests stops counting it), then about each live grant (one policy would now deny is
  revoked).

What this does NOT do: authenticate the caller (amber.api.scim_routes checks the bearer token); re-check
anyone when someone joins a group (the directory only takes groups away, so joining cannot deny); re-check
after a catalog reload changes `group_map` (the next call and decision already use the new names).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from amber import ledger
from amber.access_requests import AccessRequest, AccessRequestService, Approval
from amber.core.clock import Clock, as_utc
from amber.core.db import UnitOfWork
from amber.core.errors import AmberError, Conflict, InvalidInput, NotFound
from amber.core.ids import new_id
from amber.grants import LIVE, Grant, GrantService
from amber.identity.directory import (
    NO_DIRECTORY,
    DirectoryScope,
    ScimGroup,
    ScimMember,
    ScimUser,
    amber_names,
    groups_now,
    is_deprovisioned,
)
from amber.identity.sessions import end_sessions_of
from amber.ledger import Actor

log = logging.getLogger(__name__)

Person = tuple[str, str]  # (issuer, subject): who a token names
SCIM_ACTOR = Actor(issuer="amber", subject="scim", name="scim")
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


def scim_error(kind: type[AmberError], message: str, scim_type: str | None = None) -> AmberError:
    """An AmberError that also reads as a SCIM error (RFC 7644 section 3.12) to Okta and Entra ID."""
    extra: dict[str, Any] = {"schemas": [ERROR_SCHEMA]}
    if scim_type:
        extra["scimType"] = scim_type
    return kind(message, extra=extra)


@dataclass(frozen=True)
class ScimSettings:
    """The SCIM view of the identity configuration, read from the running catalog at each call."""

    issuer: str
    subject_attribute: str
    group_map: Mapping[str, str]
    scope: DirectoryScope = NO_DIRECTORY


@dataclass(frozen=True)
class Revocation:
    grant_id: str
    reason: str


class ScimService:
    def __init__(
        self,
        *,
        uow: UnitOfWork,
        clock: Clock,
        settings: Callable[[], ScimSettings],
        grants: GrantService,
        requests: AccessRequestService,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._settings = settings
        self._grants = grants
        self._requests = requests

    # -- users ---------------------------------------------------------------------------------------------

    def create_user(self, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        settings = self._settings()
        user_name = _required_str(body, "userName")
        with self._uow() as session:
            if self._user_by_name(session, user_name) is not None:
                raise scim_error(Conflict, f"a user with userName {user_name!r} already exists", "uniqueness")
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
            user.user_name = _required_str(body, "userName")
            if "active" not in _lower_keys(body):
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
        operations = _operations(body)
        with self._uow() as session:
            user = self._user(session, user_id)
            was_active = user.active
            current = set(self._group_ids_of(session, user.id))
            groups = set(current)
            for op, path, value in operations:
                if op not in ("add", "replace", "remove"):
                    raise scim_error(InvalidInput, f"unsupported PATCH op {op!r}", "invalidSyntax")
                if path is None:
                    if not isinstance(value, Mapping):
                        raise scim_error(InvalidInput, "a PATCH without a path needs an object value", "invalidValue")
                    lowered = _lower_keys(value)
                    if "groups" in lowered:
                        groups = _patch_ids(groups, op, "groups", lowered.pop("groups"))
                    _apply_user(user, lowered, settings)
                elif path.lower() == "groups" or path.lower().startswith("groups["):
                    # Group memberships set on the user (RFC 7643 calls them read-only; some providers send them):
                    # applied as the same change made on each group, never silently ignored.
                    groups = _patch_ids(groups, op, path, value)
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
                attribute, value = _parse_filter(filter_)
                column = field_map.get(attribute.lower())
                if column is None:
                    raise scim_error(InvalidInput, f"filtering on {attribute!r} is not supported", "invalidFilter")
                # userName is case-insensitive in SCIM (RFC 7643 section 4.1.1).
                query = query.where(
                    func.lower(column) == value.lower() if attribute.lower() == "username" else column == value
                )
            rows = list(session.scalars(query))
            page = rows[max(start, 1) - 1 : max(start, 1) - 1 + count]
            return _list_response([self._user_out(session, u) for u in page], total=len(rows), start=start)

    # -- groups --------------------------------------------------------------------------------------------

    def create_group(self, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        name = _required_str(body, "displayName")
        with self._uow() as session:
            existing = session.scalar(
                select(ScimGroup.id).where(ScimGroup.display_name == name, ScimGroup.deleted_at.is_(None))
            )
            if existing is not None:
                raise scim_error(Conflict, f"a group named {name!r} already exists", "uniqueness")
            now = self._clock.now()
            managed_before = self._managed_names(session)
            group = ScimGroup(
                id=new_id("scg"),
                display_name=name,
                external_id=_opt_str(_lower_keys(body).get("externalid")),
                created_at=now,
                updated_at=now,
            )
            session.add(group)
            session.flush()
            added = self._set_members(session, group, _member_ids(_lower_keys(body).get("members")))[0]
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
            group.display_name = _required_str(body, "displayName")
            lowered = _lower_keys(body)
            if "externalid" in lowered:
                group.external_id = _opt_str(lowered["externalid"])
            result, changes = self._save_members(
                session, group, _member_ids(lowered.get("members")), "scim.group_replaced", call, before=before
            )
        self._recheck(changes, call=call)
        return result

    def patch_group(self, group_id: str, body: Mapping[str, Any], *, call: str) -> dict[str, Any]:
        operations = _operations(body)
        with self._uow() as session:
            group = self._group(session, group_id)
            before = (group.display_name, group.external_id)
            current = set(self._member_ids_of(session, group.id))
            wanted = set(current)
            for op, path, value in operations:
                target = (path or "").lower()
                if op == "replace" and path is None and isinstance(value, Mapping):
                    lowered = _lower_keys(value)
                    if "displayname" in lowered:
                        group.display_name = str(lowered["displayname"])
                    if "externalid" in lowered:
                        group.external_id = _opt_str(lowered["externalid"])
                    if "members" in lowered:
                        wanted = set(_member_ids(lowered["members"]))
                elif target == "displayname" and op in ("replace", "add"):
                    group.display_name = str(value)
                elif target == "externalid":
                    group.external_id = None if op == "remove" else _opt_str(value)
                elif target == "members" or (target.startswith("members[") and op == "remove"):
                    wanted = _patch_ids(wanted, op, path or "members", value)
                else:
                    raise scim_error(InvalidInput, f"unsupported Group PATCH {op} {path!r}", "invalidPath")
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
                attribute, value = _parse_filter(filter_)
                column = field_map.get(attribute.lower())
                if column is None:
                    raise scim_error(InvalidInput, f"filtering on {attribute!r} is not supported", "invalidFilter")
                query = query.where(column == value)
            rows = list(session.scalars(query))
            page = rows[max(start, 1) - 1 : max(start, 1) - 1 + count]
            resources = [self._group_out(session, g, members=members) for g in page]
            return _list_response(resources, total=len(rows), start=start)

    # -- what SCIM changes set off --------------------------------------------------------------------------

    def _revoke_all(self, user_id: str, *, call: str, why: str) -> list[Revocation]:
        """Revoke every live grant of a deprovisioned person. Each revocation ends the target sessions.

        Also finishes what an earlier deprovisioning left live (a crash between its commit and its
        revocations): every live grant of anyone the directory says is deactivated or deleted goes too.
        """
        with self._uow() as session:
            rows = session.execute(
                select(Grant.id, ScimUser.id)
                .join(
                    ScimUser,
                    (ScimUser.issuer == Grant.grantee_issuer) & (ScimUser.subject == Grant.grantee_subject),
                )
                .where(
                    Grant.status.in_(LIVE),
                    (ScimUser.active.is_(False)) | (ScimUser.deleted_at.is_not(None)),
                )
            ).all()
        done = []
        for grant_id, owner in rows:
            reason = (
                f"scim {call}: user {why}" if owner == user_id else f"scim {call}: finishing earlier deprovisioning"
            )
            revocation = self._revoke(grant_id, reason)
            if revocation is not None:
                done.append(revocation)
        return done

    def _after_change(self, session: Session, changes: Mapping[Person, str], *, call: str) -> None:
        """In the transaction of a membership change: re-ask policy about the pending requests of each person
        whose groups changed (denying what it now denies) and record the approvals they gave that lapsed."""
        for (issuer, subject), change in changes.items():
            why = f"scim {call}: {change}"
            denied = self._requests.recheck_pending(session, issuer, subject, actor=SCIM_ACTOR, why=why)
            if denied:
                log.info("scim: denied %d pending request(s) policy no longer allows", len(denied))
            self._requests.recheck_approvals_by(session, issuer, subject, actor=SCIM_ACTOR, why=why)

    def _people(self, session: Session, changes: Mapping[str, str]) -> dict[Person, str]:
        """Directory users (by id) as the people tokens name: the active ones matched to a token subject."""
        people: dict[Person, str] = {}
        for user_id, change in changes.items():
            user = session.get(ScimUser, user_id)
            if user is None or user.subject is None or not user.active or user.deleted_at is not None:
                continue  # never signed in, or deprovisioning already handled them
            people.setdefault((user.issuer, user.subject), change)
        return people

    def _managed_names(self, session: Session, *, besides: str | None = None) -> set[str]:
        """Every amber group name the directory manages (groups_now's rule), leaving out one group's row."""
        group_map = self._settings().group_map
        names: set[str] = set()
        for group_id, display_name, external_id in session.execute(
            select(ScimGroup.id, ScimGroup.display_name, ScimGroup.external_id)
        ):
            if group_id != besides:
                names |= amber_names(display_name, external_id, group_map)
        return names

    def _newly_managed(self, session: Session, group: ScimGroup, managed_before: set[str]) -> dict[Person, str]:
        """People who lose a group because SCIM starts to manage its name (a new group, or a rename to a new
        name) and does not list them in it: whoever holds the name in a pending request, an approval given on
        one, or a live grant's request, as recorded, and is not a member."""
        names = amber_names(group.display_name, group.external_id, self._settings().group_map) - managed_before
        issuer = self._settings().issuer
        if not names:
            return {}
        members = {
            (row[0], row[1])
            for row in session.execute(
                select(ScimUser.issuer, ScimUser.subject)
                .join(ScimMember, ScimMember.user_id == ScimUser.id)
                .where(ScimMember.group_id == group.id)
            )
        }
        live = select(Grant.request_id).where(Grant.status.in_(LIVE))
        recorded = session.execute(
            select(AccessRequest.requester_subject, AccessRequest.requester_groups).where(
                AccessRequest.requester_issuer == issuer,
                (AccessRequest.status == "pending") | AccessRequest.id.in_(live),
            )
        ).all()
        approvals = session.execute(
            select(Approval.approver_subject, Approval.approver_groups)
            .join(AccessRequest, AccessRequest.id == Approval.request_id)
            .where(Approval.approver_issuer == issuer, Approval.verdict == "approve", AccessRequest.status == "pending")
        ).all()
        people: dict[Person, str] = {}
        for subject, groups in [(row[0], row[1]) for row in [*recorded, *approvals]]:
            held = sorted(names & set(_json_list(groups)))
            if held and (issuer, subject) not in members:
                people.setdefault((issuer, subject), f"SCIM now manages group {held[0]!r} and does not list them in it")
        return people

    def _deprovision_requests(self, session: Session, user: ScimUser, *, call: str, why: str) -> None:
        """In the deprovisioning transaction: cancel the person's pending requests, so nobody approves them
        later, and record that the approvals they gave on others' pending requests no longer count."""
        if user.subject is None:
            return  # never matched to a token subject: this person never signed in, so never asked or approved
        reason = f"scim {call}: user {why}"
        withdrawn = self._requests.withdraw_pending(session, user.issuer, user.subject, actor=SCIM_ACTOR, reason=reason)
        if withdrawn:
            log.info("scim: cancelled %d pending request(s) of a deprovisioned user", len(withdrawn))
        self._requests.recheck_approvals_by(session, user.issuer, user.subject, actor=SCIM_ACTOR, why=reason)

    def _set_groups(
        self, session: Session, user: ScimUser, wanted: set[str], current: set[str], *, call: str
    ) -> tuple[list[str], list[str]]:
        """Set one user's group memberships (a PATCH on the user); returns the group ids added and removed."""
        now = self._clock.now()
        for group_id in sorted(wanted - current):
            group = session.get(ScimGroup, group_id)
            if group is None or group.deleted_at is not None:
                raise scim_error(InvalidInput, f"no SCIM group {group_id}", "invalidValue")
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

    def _recheck(self, changes: Mapping[Person, str], *, call: str) -> list[Revocation]:
        """Ask policy again about each live grant of people whose groups changed; revoke what it now denies."""
        done: list[Revocation] = []
        settings = self._settings()
        for (issuer, subject), change in changes.items():
            with self._uow() as session:
                if is_deprovisioned(session, issuer, subject):
                    continue  # deprovisioning revokes all of theirs
                rows = [
                    (row[0], row[1])
                    for row in session.execute(
                        select(Grant.id, AccessRequest)
                        .join(AccessRequest, AccessRequest.id == Grant.request_id)
                        .where(
                            Grant.grantee_issuer == issuer,
                            Grant.grantee_subject == subject,
                            Grant.status.in_(LIVE),
                        )
                    )
                ]
                checks = [
                    (
                        grant_id,
                        request,
                        groups_now(session, settings.scope, issuer, subject, _json_list(request.requester_groups)),
                    )
                    for grant_id, request in rows
                ]
                session.expunge_all()
            for grant_id, request, groups in checks:
                denied = self._requests.denies_now(request, groups)
                if denied is not None:
                    reason = f"scim {call}: {change}; policy now denies: {denied}"
                    revocation = self._revoke(grant_id, reason)
                    if revocation is not None:
                        done.append(revocation)
        return done

    def _revoke(self, grant_id: str, reason: str) -> Revocation | None:
        try:
            self._grants.revoke(grant_id, actor=SCIM_ACTOR, reason=reason, is_admin=True)
        except Conflict:
            return None  # it ended on its own meanwhile
        log.info("grant %s revoked by SCIM", grant_id)
        return Revocation(grant_id, reason)

    # -- helpers -------------------------------------------------------------------------------------------

    def _end_sessions(self, session: Session, user: ScimUser, call: str, now: datetime) -> None:
        if user.subject is not None:
            end_sessions_of(session, user.issuer, user.subject, now=now, reason=f"scim {call}")

    def _record(
        self, session: Session, event: str, subject_id: str, call: str, payload: dict[str, Any], *, now: datetime
    ) -> None:
        ledger.append(
            session,
            at=now,
            event_type=event,
            actor=SCIM_ACTOR,
            subject_kind="scim_user" if event.startswith("scim.user") else "scim_group",
            subject_id=subject_id,
            payload={"call": call, **payload},
        )

    def _user_by_name(self, session: Session, user_name: str) -> ScimUser | None:
        return session.scalar(
            select(ScimUser).where(func.lower(ScimUser.user_name) == user_name.lower(), ScimUser.deleted_at.is_(None))
        )

    def _user(self, session: Session, user_id: str, *, include_deleted: bool = False) -> ScimUser:
        user = session.get(ScimUser, user_id)
        if user is None or (user.deleted_at is not None and not include_deleted):
            raise scim_error(NotFound, f"no SCIM user {user_id}")
        return user

    def _group(self, session: Session, group_id: str) -> ScimGroup:
        group = session.get(ScimGroup, group_id)
        if group is None or group.deleted_at is not None:
            raise scim_error(NotFound, f"no SCIM group {group_id}")
        return group

    def _member_ids_of(self, session: Session, group_id: str) -> list[str]:
        return list(session.scalars(select(ScimMember.user_id).where(ScimMember.group_id == group_id)))

    def _group_ids_of(self, session: Session, user_id: str) -> list[str]:
        return list(session.scalars(select(ScimMember.group_id).where(ScimMember.user_id == user_id)))

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
            "emails": _json_list_of_dicts(user.emails),
            "groups": [{"value": gid, "display": name} for gid, name in groups],
            "meta": _meta("User", user.id, user.created_at, user.updated_at),
        }
        if user.external_id is not None:
            out["externalId"] = user.external_id
        if user.display_name is not None:
            out["displayName"] = user.display_name
        return out

    def _group_out(self, session: Session, group: ScimGroup, *, members: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "id": group.id,
            "displayName": group.display_name,
            "meta": _meta("Group", group.id, group.created_at, group.updated_at),
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


# -- parsing the request shapes Okta and Entra ID send ----------------------------------------------------------


def _lower_keys(value: Mapping[str, Any]) -> dict[str, Any]:
    """SCIM attribute names are case-insensitive (RFC 7643 section 2.1); Entra ID capitalises some."""
    return {str(k).lower(): v for k, v in value.items()}


def _required_str(body: Mapping[str, Any], name: str) -> str:
    value = _lower_keys(body).get(name.lower())
    if not isinstance(value, str) or not value.strip():
        raise scim_error(InvalidInput, f"{name} is required", "invalidValue")
    return value.strip()


def _opt_str(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def _bool(value: object) -> bool:
    # Entra ID sends "True"/"False" as strings in PATCH operations.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise scim_error(InvalidInput, f"not a boolean: {value!r}", "invalidValue")


def _apply_user(user: ScimUser, body: Mapping[str, Any], settings: ScimSettings) -> None:
    """Set the attributes amber keeps; others (name parts, locale, enterprise extension) are accepted and not kept."""
    for key, value in _lower_keys(body).items():
        if key == "active":
            user.active = _bool(value) if value is not None else True
        elif key == "username":
            if not isinstance(value, str) or not value.strip():
                raise scim_error(InvalidInput, "userName must be a non-empty string", "invalidValue")
            user.user_name = value.strip()
        elif key == "externalid":
            user.external_id = _opt_str(value)
        elif key == "displayname":
            user.display_name = _opt_str(value)
        elif key == "emails":
            user.emails = json.dumps(value if isinstance(value, list) else [])
        elif key.startswith("emails[") and key.endswith("].value"):
            emails = _json_list_of_dicts(user.emails) or [{"type": "work", "primary": True}]
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


def _operations(body: Mapping[str, Any]) -> list[tuple[str, str | None, Any]]:
    operations = _lower_keys(body).get("operations")
    if not isinstance(operations, list) or not operations:
        raise scim_error(InvalidInput, "a PATCH needs Operations", "invalidSyntax")
    out = []
    for operation in operations:
        if not isinstance(operation, Mapping):
            raise scim_error(InvalidInput, "each operation must be an object", "invalidSyntax")
        lowered = _lower_keys(operation)
        op = str(lowered.get("op", "")).lower()
        path = lowered.get("path")
        out.append((op, str(path) if path else None, lowered.get("value")))
    return out


def _patch_ids(current: set[str], op: str, path: str, value: object) -> set[str]:
    """A group's members (or a user's groups) after one PATCH operation, in the shapes Okta and Entra ID send."""
    target = path.lower()
    name = target.split("[", 1)[0]
    if target == name:
        if op == "add":
            return current | set(_member_ids(value))
        if op == "replace":
            return set(_member_ids(value))
        if op == "remove":
            # Entra ID names the members in `value`; without a value, all of them go (RFC 7644 3.5.2.2).
            return current - set(_member_ids(value)) if value is not None else set()
    elif op == "remove" and target.endswith("]"):
        # Okta: {"op": "remove", "path": "members[value eq \"<id>\"]"}
        attribute, member = _parse_filter(path[len(name) + 1 : -1])
        if attribute.lower() != "value":
            raise scim_error(InvalidInput, f"unsupported {name} filter {path!r}", "invalidFilter")
        return current - {member}
    raise scim_error(InvalidInput, f"unsupported PATCH {op} {path!r}", "invalidPath")


def _member_ids(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise scim_error(InvalidInput, "members must be a list of {value: id}", "invalidValue")
    ids = []
    for member in value:
        member_id = _lower_keys(member).get("value") if isinstance(member, Mapping) else None
        if not isinstance(member_id, str) or not member_id:
            raise scim_error(InvalidInput, "each member needs a value (the user id)", "invalidValue")
        ids.append(member_id)
    return ids


def _parse_filter(text: str) -> tuple[str, str]:
    """The one filter shape Okta and Entra ID send: `attribute eq "value"`."""
    parts = text.strip().split(" ", 2)
    if len(parts) != 3 or parts[1].lower() != "eq" or not (parts[2].startswith('"') and parts[2].endswith('"')):
        raise scim_error(InvalidInput, f'unsupported filter {text!r}; only `attribute eq "value"`', "invalidFilter")
    value = json.loads(parts[2])
    return parts[0], str(value)


def _json_list(text: str) -> list[str]:
    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else []


def _json_list_of_dicts(text: str) -> list[dict[str, Any]]:
    value = json.loads(text)
    return [dict(v) for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _user_summary(user: ScimUser) -> dict[str, Any]:
    return {"userName": user.user_name, "externalId": user.external_id, "active": user.active, "sub": user.subject}


def _meta(kind: str, rid: str, created: datetime, updated: datetime) -> dict[str, str]:
    return {
        "resourceType": kind,
        "created": as_utc(created).isoformat(),
        "lastModified": as_utc(updated).isoformat(),
        "location": f"/scim/v2/{kind}s/{rid}",
    }


def _list_response(resources: list[dict[str, Any]], *, total: int, start: int) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "startIndex": max(start, 1),
        "itemsPerPage": len(resources),
        "Resources": resources,
    }
