"""What SCIM changes set off: revoking a deprovisioned person's grants, and re-asking policy after someone
loses a group.

Invariants:
- Losing a group (leaving it by a group PATCH or PUT, a group DELETE or a PATCH of the user's `groups`; a
  rename that takes a group name away; or SCIM starting to manage a name, by a new group or a rename, that
  a pending request, an approval on one or a live grant recorded for a non-member) re-asks the running
  policy with the groups the person holds now (decision 0014) and everything else as at the original
  decision (reason, requested duration, the time of submission, so business hours do not deny or revoke
  at night): in the same transaction about each pending request of theirs (one policy would now deny is
  denied) and each approval they gave on a pending request (one they could no longer give is recorded as
  lapsed; access_requests stops counting it), then about each live grant (one policy would now deny is
  revoked).
- Revoking a deprovisioned person's grants also finishes what an earlier deprovisioning left live.

What this does NOT do: re-check anyone when someone joins a group (the directory only takes groups away, so
joining cannot deny); re-check after a catalog reload changes `group_map` (the next call and decision
already use the new names).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber.access_requests import AccessRequest, Approval
from amber.core.errors import Conflict
from amber.grants import LIVE, Grant
from amber.identity.directory import ScimGroup, ScimMember, ScimUser, amber_names, groups_now, is_deprovisioned
from amber.scim.base import SCIM_ACTOR, Person, Revocation, ScimBase
from amber.scim.shapes import json_list

log = logging.getLogger(__name__)


class Reevaluation(ScimBase):
    """What a SCIM change sets off, for the Users and Groups parts of ScimService."""

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
            held = sorted(names & set(json_list(groups)))
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
                        groups_now(session, settings.scope, issuer, subject, json_list(request.requester_groups)),
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
