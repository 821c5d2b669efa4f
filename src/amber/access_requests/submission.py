"""Submitting a request: the input checks (reason, duration, start), the requester's history and the policy
decision, recorded as `request.submitted` and `request.decided` in one transaction.

Invariants:
- A malformed request (reason too long, duration out of bounds, a start without a time zone or too far
  ahead, a reason the level's justification rule refuses) is refused before policy is asked: never decided,
  never recorded, never counted in anyone's history.
- A request keeps the decision of the policy version that made it (hash and policy ids on record).
- Only one's own request can be superseded.
- Provisioning runs after the decision has committed (grants.GrantService.activate); a scheduled start is
  provisioned by the worker.
- Break-glass access is granted at once, its notice is queued in the same transaction (amber.access_requests.
  notices), and it stays `review: required` until an owner, a security reviewer or an admin completes it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from amber import ledger, policy
from amber.access_requests.base import POLICY_ACTOR, Outcome, actor_of
from amber.access_requests.lifecycle import OUTCOME_STATUS
from amber.access_requests.models import AccessRequest
from amber.access_requests.notices import Notices
from amber.core.clock import as_utc
from amber.core.durations import MAX_LEVEL_TTL, format_duration
from amber.core.errors import Forbidden, InvalidInput
from amber.core.ids import new_id
from amber.grants.lifecycle import LIVE
from amber.grants.models import Grant
from amber.identity import Principal

MAX_REASON = 2000


class Submission(Notices):
    """The submit part of AccessRequestService."""

    def _history(self, session: Session, principal: Principal, now: datetime) -> policy.History:
        since = now - timedelta(hours=24)
        mine = (
            AccessRequest.requester_issuer == principal.issuer,
            AccessRequest.requester_subject == principal.subject,
            AccessRequest.submitted_at >= since,
        )
        requests = session.scalar(select(func.count()).select_from(AccessRequest).where(*mine)) or 0
        denials = (
            session.scalar(
                select(func.count()).select_from(AccessRequest).where(*mine, AccessRequest.status == "denied")
            )
            or 0
        )
        active = (
            session.scalar(
                select(func.count())
                .select_from(Grant)
                .where(
                    Grant.grantee_issuer == principal.issuer,
                    Grant.grantee_subject == principal.subject,
                    Grant.status.in_(LIVE),
                )
            )
            or 0
        )
        return policy.History(requests_last_24h=requests, denials_last_24h=denials, active_grants=active)

    def submit(
        self,
        principal: Principal,
        *,
        resource: str,
        level: str,
        reason: str,
        ttl: timedelta,
        starts_at: datetime | None = None,
        break_glass: bool = False,
        supersedes: str | None = None,
    ) -> Outcome:
        reason = reason.strip()
        self._check_input(resource, level, reason, ttl)
        resource_spec = self._catalog().resource(resource)
        actor = actor_of(principal)
        with self._uow() as session:
            now = self._clock.now()
            self._check_start(starts_at, now)
            # NOTE: instants are stored in UTC: SQLite keeps a datetime's wall clock and drops its offset.
            starts_at = as_utc(starts_at) if starts_at is not None and starts_at > now else None
            history = self._history(session, principal, now)
            decision = self.decide(
                principal,
                resource=resource,
                level=level,
                reason=reason,
                ttl=ttl,
                starts_at=starts_at,
                break_glass=break_glass,
                history=history,
                at=now,
            )
            if supersedes is not None:
                old = self._get(session, supersedes)
                if (old.requester_issuer, old.requester_subject) != principal.key:
                    raise Forbidden("a request can only supersede one of your own requests")
            request = AccessRequest(
                id=new_id("req"),
                requester_issuer=principal.issuer,
                requester_subject=principal.subject,
                requester_name=principal.name,
                requester_groups=json.dumps(sorted(principal.groups)),
                resource=resource,
                level=level,
                reason=reason,
                requested_ttl_s=int(ttl.total_seconds()),
                requested_start_at=starts_at,
                break_glass=break_glass,
                supersedes_id=supersedes,
                submitted_at=now,
                status="submitted",
                outcome=decision.outcome,
                decision_reasons=json.dumps(list(decision.reasons)),
                policy_ids=json.dumps(list(decision.policy_ids)),
                policy_hash=decision.policy_hash,
                granted_ttl_s=int(decision.ttl.total_seconds()),
                approvals_required=decision.approvals_required,
                approver_groups=json.dumps(list(decision.approver_groups)),
                approver_all_groups=json.dumps(list(decision.approver_all_groups)),
                single_use=decision.single_use,
                window_end_at=as_utc(decision.window_end_at) if decision.window_end_at else None,
            )
            if decision.outcome == "require_approval":
                request.pending_expires_at = now + self._policies().settings.pending_ttl
            session.add(request)
            session.flush()
            self._record(
                session,
                request,
                "request.submitted",
                actor,
                {
                    "resource": resource,
                    "level": level,
                    "reason": reason,
                    "requested_ttl_s": request.requested_ttl_s,
                    "groups": sorted(principal.groups),
                    "supersedes": supersedes,
                    "break_glass": break_glass,
                    "starts_at": ledger.chain.format_at(starts_at) if starts_at else None,
                    "history": {
                        "requests_last_24h": history.requests_last_24h,
                        "denials_last_24h": history.denials_last_24h,
                        "active_grants": history.active_grants,
                    },
                },
                now=now,
            )
            self._record(
                session,
                request,
                "request.decided",
                POLICY_ACTOR,
                {
                    "outcome": decision.outcome,
                    "reasons": list(decision.reasons),
                    "policy_ids": list(decision.policy_ids),
                    "policy_hash": decision.policy_hash,
                    "granted_ttl_s": request.granted_ttl_s,
                    "approvals_required": decision.approvals_required,
                    "approver_groups": list(decision.approver_groups),
                    "conditions": decision.conditions,
                    "pending_expires_at": ledger.chain.format_at(request.pending_expires_at)
                    if request.pending_expires_at
                    else None,
                },
                now=now,
            )
            grant = self._move(
                session, request, OUTCOME_STATUS[decision.outcome], POLICY_ACTOR, {"by": "policy"}, now=now
            )
            if break_glass and grant is not None:
                self._break_glass(session, request, resource_spec.owners, now=now)
        self._metrics.requests.labels(decision.outcome).inc()
        if grant is None:
            return Outcome(request)
        if starts_at is not None:
            return Outcome(request, grant)  # scheduled: the worker provisions it when it starts
        activation = self._grants.activate(grant.id, with_credential=True)
        return Outcome(request, activation.grant, activation)

    def _check_input(self, resource: str, level: str, reason: str, ttl: timedelta) -> None:
        """Refuse malformed requests (422) before policy is asked: they are never decided, never recorded and
        never count in anyone's history. A duration within bounds but beyond the level's maximum is not an
        error: the decision shortens it and says which limit applied."""
        if len(reason) > MAX_REASON:
            raise InvalidInput(f"the reason is longer than {MAX_REASON} characters")
        if ttl <= timedelta(0):
            raise InvalidInput("the duration must be positive")
        if ttl > MAX_LEVEL_TTL:
            raise InvalidInput(
                f"the duration is longer than any access level allows ({format_duration(MAX_LEVEL_TTL)})"
            )
        problem = policy.justification_problem(resource, self._level_info(resource, level), reason)
        if problem is not None:
            raise InvalidInput(problem[0], extra={"rule": problem[1]})

    def _check_start(self, starts_at: datetime | None, now: datetime) -> None:
        if starts_at is None:
            return
        if starts_at.tzinfo is None:
            raise InvalidInput("give the start with a time zone")
        if starts_at - now > self._max_start_ahead:
            raise InvalidInput(
                f"the start is more than {format_duration(self._max_start_ahead)} ahead "
                f"(the latest start now is {as_utc(now + self._max_start_ahead).isoformat(timespec='seconds')}); "
                "ask again closer to the time"
            )
