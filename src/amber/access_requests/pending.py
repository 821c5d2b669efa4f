"""What ends or re-judges a pending request apart from its approvers: the requester cancelling it, the worker
expiring it after the pending TTL, and the re-checks a SCIM change sets off.

Invariants:
- Only the requester cancels their request, and only while it is pending.
- After a SCIM change (amber.scim), in the same transaction: a person's pending requests that policy would
  now deny with their groups now are denied (`recheck_pending`), a deprovisioned person's are cancelled
  (`withdraw_pending`), and approvals they gave that no longer stand are recorded as lapsed
  (`recheck_approvals_by`). Each names the SCIM call.
- A request policy can no longer judge is treated as denied (fail closed, `denies_now`).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber.access_requests.base import Outcome, actor_of, json_list
from amber.access_requests.models import AccessRequest, Approval
from amber.access_requests.review import Review
from amber.core.clock import as_utc
from amber.core.db import is_postgres
from amber.core.errors import AmberError, Conflict, Forbidden
from amber.identity import REQUESTER, Principal, roles_for
from amber.identity.directory import groups_now
from amber.ledger import SYSTEM, Actor


class Pending(Review):
    """The cancel / expire / SCIM re-check part of AccessRequestService."""

    def cancel(self, request_id: str, principal: Principal) -> Outcome:
        with self._uow() as session:
            request = self._get(session, request_id, for_update=True)
            if (request.requester_issuer, request.requester_subject) != principal.key:
                raise Forbidden("only the requester can cancel a request")
            if request.status != "pending":
                raise Conflict(f"request {request_id} is {request.status}; only pending requests can be cancelled")
            self._move(session, request, "cancelled", actor_of(principal), {}, now=self._clock.now())
        return Outcome(request)

    def expire_pending(self) -> list[str]:
        with self._uow() as session:
            now = self._clock.now()
            query = (
                select(AccessRequest)
                .where(AccessRequest.status == "pending", AccessRequest.pending_expires_at <= now)
                .limit(500)
            )
            if is_postgres(session):
                query = query.with_for_update(skip_locked=True)
            due = list(session.scalars(query))
            for request in due:
                self._move(session, request, "expired", SYSTEM, {"by": "pending_ttl"}, now=now)
        return [request.id for request in due]

    def withdraw_pending(self, session: Session, issuer: str, subject: str, *, actor: Actor, reason: str) -> list[str]:
        """Cancel every pending request of one person (they were deprovisioned): nobody may approve them later.
        Runs in the caller's transaction, the one that deprovisions them."""
        now = self._clock.now()
        pending = self._pending_of(session, issuer, subject)
        for request in pending:
            self._move(session, request, "cancelled", actor, {"by": "deprovisioning", "reason": reason}, now=now)
        return [request.id for request in pending]

    def recheck_pending(self, session: Session, issuer: str, subject: str, *, actor: Actor, why: str) -> list[str]:
        """Ask the running policy again about each pending request of one person whose groups changed, with the
        groups they hold now (those recorded at submission, less what the directory took away) and everything
        else as at submission (reason, duration, the time it was submitted, so business hours do not deny at
        night); deny what it would now deny, the reason naming `why`. Runs in the caller's transaction.

        What this does NOT do: ask again about a request policy would still allow, even if it would now need
        other approvers or none (approvals already given are re-checked on their own, see `_counted`)."""
        now = self._clock.now()
        denied = []
        for request in self._pending_of(session, issuer, subject):
            groups = groups_now(session, self._directory(), issuer, subject, json_list(request.requester_groups))
            problem = self.denies_now(request, groups)
            if problem is not None:
                reason = f"{why}; policy now denies: {problem}"
                self._move(session, request, "denied", actor, {"by": "scim", "reason": reason}, now=now)
                denied.append(request.id)
        return denied

    def recheck_approvals_by(self, session: Session, issuer: str, subject: str, *, actor: Actor, why: str) -> list[str]:
        """Record, on each pending request this person approved, whether their approval still stands now that
        their groups changed; one that no longer does gets a `request.approval_lapsed` entry naming `why`
        (it stops counting whether or not this runs: `_counted` re-checks at completion). Caller's
        transaction. Returns the requests whose approval lapsed."""
        now = self._clock.now()
        rows = session.execute(
            select(AccessRequest, Approval)
            .join(Approval, Approval.request_id == AccessRequest.id)
            .where(
                Approval.approver_issuer == issuer,
                Approval.approver_subject == subject,
                Approval.verdict == "approve",
                AccessRequest.status == "pending",
            )
            .order_by(AccessRequest.id)
        ).all()
        lapsed = []
        for request, approval in rows:
            problem = self._lapsed(session, request, approval)
            if problem is None:
                continue
            self._record(
                session,
                request,
                "request.approval_lapsed",
                actor,
                {
                    "approver": {"iss": issuer, "sub": subject, "name": approval.approver_name},
                    "reason": f"{why}; {problem}",
                },
                now=now,
            )
            lapsed.append(request.id)
        return lapsed

    def denies_now(self, request: AccessRequest, groups: frozenset[str]) -> str | None:
        """Why the running policy would deny this request if its requester held `groups`, or None if it would
        not; everything else as at submission."""
        if REQUESTER not in roles_for(groups, self._catalog().identity.roles.model_dump()):
            return "no longer in a group with the requester role"
        principal = Principal(request.requester_issuer, request.requester_subject, request.requester_name, groups)
        try:
            decision = self.decide(
                principal,
                resource=request.resource,
                level=request.level,
                reason=request.reason,
                ttl=timedelta(seconds=request.requested_ttl_s),
                break_glass=request.break_glass,
                at=as_utc(request.submitted_at),
            )
        except AmberError as exc:  # fail closed: a request policy cannot judge any more is not allowed
            return f"policy cannot be asked: {exc.message}"
        if decision.outcome == "deny":
            return "; ".join(decision.reasons) or "denied"
        return None

    def _pending_of(self, session: Session, issuer: str, subject: str) -> list[AccessRequest]:
        query = (
            select(AccessRequest)
            .where(
                AccessRequest.requester_issuer == issuer,
                AccessRequest.requester_subject == subject,
                AccessRequest.status == "pending",
            )
            .order_by(AccessRequest.id)
        )
        if is_postgres(session):
            query = query.with_for_update()
        return list(session.scalars(query))
