"""Access requests: submit, approve, deny, cancel. The orchestration layer of the lifecycle.

Invariants:
- A submitted request is immutable; changing anything means a new request that supersedes the old one.
- Every transition is appended to the ledger in the same transaction as the state it changes.
- Nobody approves their own request, and each approver counts once.
- Policy is consulted with the identity verified for *this* action (groups as the token says now).
- Provisioning runs after the decision has committed (grants.GrantService.activate).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from amber import grants, ledger, policy
from amber.access_requests.lifecycle import OUTCOME_STATUS, check_move
from amber.access_requests.models import AccessRequest, Approval
from amber.catalog import Catalog
from amber.core.clock import Clock
from amber.core.db import UnitOfWork, is_postgres
from amber.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from amber.core.ids import new_id
from amber.core.observability import Metrics
from amber.grants.models import Grant
from amber.grants.service import Activation, GrantService
from amber.identity import Principal
from amber.ledger import Actor

POLICY_ACTOR = Actor(issuer="amber", subject="policy", name="policy v0")
MAX_REASON = 2000

Scope = Literal["mine", "to_approve", "all"]


@dataclass(frozen=True)
class Outcome:
    request: AccessRequest
    grant: Grant | None = None
    activation: Activation | None = None


def actor_of(principal: Principal) -> Actor:
    return Actor(issuer=principal.issuer, subject=principal.subject, name=principal.name)


def subject_of(principal: Principal) -> policy.Subject:
    return policy.Subject(principal.issuer, principal.subject, principal.name, principal.groups)


def is_admin(catalog: Catalog, principal: Principal) -> bool:
    return principal.in_any(catalog.identity.admins)


def is_auditor(catalog: Catalog, principal: Principal) -> bool:
    return principal.in_any(catalog.identity.auditors) or is_admin(catalog, principal)


class AccessRequestService:
    def __init__(
        self,
        *,
        uow: UnitOfWork,
        clock: Clock,
        catalog: Callable[[], Catalog],
        grant_service: GrantService,
        metrics: Metrics,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._catalog = catalog
        self._grants = grant_service
        self._metrics = metrics

    def submit(
        self,
        principal: Principal,
        *,
        resource: str,
        level: str,
        reason: str,
        ttl: timedelta,
        supersedes: str | None = None,
    ) -> Outcome:
        reason = reason.strip()
        if len(reason) > MAX_REASON:
            raise InvalidInput(f"the reason is longer than {MAX_REASON} characters")
        if ttl <= timedelta(0):
            raise InvalidInput("the duration must be positive")
        catalog = self._catalog()
        resource_spec = catalog.resource(resource)
        level_spec = catalog.level(resource, level)
        rules = level_spec.policy
        inp = policy.PolicyInput(
            requester=subject_of(principal),
            resource=resource,
            level=level,
            resource_owners=frozenset(resource_spec.owners),
            rules=policy.LevelRules(
                requesters=frozenset(rules.requesters) if rules.requesters is not None else None,
                auto_approve=frozenset(rules.auto_approve),
                approvals_required=rules.approvals,
                approver_groups=frozenset(rules.approvers),
                owners_approve=rules.owners_approve,
                max_ttl=level_spec.max_ttl,
                min_reason_length=level_spec.min_reason_length,
            ),
            requested_ttl=ttl,
            reason=reason,
            policy_hash=catalog.policy_hash,
        )
        decision = policy.decide(inp)
        actor = actor_of(principal)
        with self._uow() as session:
            now = self._clock.now()
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
            )
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
                },
                now=now,
            )
            target = OUTCOME_STATUS[decision.outcome]
            grant = self._move(session, request, target, POLICY_ACTOR, {"by": "policy"}, now=now)
        self._metrics.requests.labels(decision.outcome).inc()
        if grant is None:
            return Outcome(request)
        activation = self._grants.activate(grant.id, with_credential=True)
        return Outcome(request, activation.grant, activation)

    def approve(self, request_id: str, principal: Principal, *, comment: str = "") -> Outcome:
        return self._review(request_id, principal, "approve", comment)

    def deny(self, request_id: str, principal: Principal, *, comment: str = "") -> Outcome:
        return self._review(request_id, principal, "deny", comment)

    def _review(self, request_id: str, principal: Principal, verdict: str, comment: str) -> Outcome:
        with self._uow() as session:
            request = self._get(session, request_id, for_update=True)
            if request.status != "pending":
                raise Conflict(f"request {request_id} is {request.status}; only pending requests can be reviewed")
            verdict_check = policy.may_approve(
                policy.ApprovalInput(
                    request=self._policy_view(request),
                    approver=subject_of(principal),
                    approver_groups=frozenset(json.loads(request.approver_groups)),
                )
            )
            if not verdict_check.allowed:
                raise Forbidden(f"you cannot review request {request_id}: {verdict_check.reason}")
            already = session.scalar(
                select(Approval.id).where(
                    Approval.request_id == request_id,
                    Approval.approver_issuer == principal.issuer,
                    Approval.approver_subject == principal.subject,
                )
            )
            if already is not None:
                raise Conflict(f"you already reviewed request {request_id}; each approver counts once")
            now = self._clock.now()
            session.add(
                Approval(
                    request_id=request_id,
                    approver_issuer=principal.issuer,
                    approver_subject=principal.subject,
                    approver_name=principal.name,
                    verdict=verdict,
                    comment=comment,
                    decided_at=now,
                )
            )
            actor = actor_of(principal)
            self._record(
                session,
                request,
                "request.reviewed",
                actor,
                {
                    "verdict": verdict,
                    "comment": comment,
                    "via": verdict_check.reason,
                    "groups": sorted(principal.groups),
                },
                now=now,
            )
            grant = None
            if verdict == "deny":
                self._move(session, request, "denied", actor, {"by": "approver"}, now=now)
            else:
                session.flush()
                approvals = len(
                    list(
                        session.scalars(
                            select(Approval.id).where(Approval.request_id == request_id, Approval.verdict == "approve")
                        )
                    )
                )
                if approvals >= request.approvals_required:
                    grant = self._move(
                        session,
                        request,
                        "approved",
                        actor,
                        {"by": "approvals", "approvals": approvals},
                        now=now,
                    )
        if grant is None:
            return Outcome(request)
        activation = self._grants.activate(grant.id, with_credential=False)
        return Outcome(request, activation.grant, activation)

    def cancel(self, request_id: str, principal: Principal) -> Outcome:
        with self._uow() as session:
            request = self._get(session, request_id, for_update=True)
            if (request.requester_issuer, request.requester_subject) != principal.key:
                raise Forbidden("only the requester can cancel a request")
            if request.status != "pending":
                raise Conflict(f"request {request_id} is {request.status}; only pending requests can be cancelled")
            self._move(session, request, "cancelled", actor_of(principal), {}, now=self._clock.now())
        return Outcome(request)

    def get(self, request_id: str, principal: Principal) -> tuple[AccessRequest, list[Approval], Grant | None]:
        with self._uow() as session:
            request = self._get(session, request_id)
            if not self._may_see(request, principal):
                raise NotFound(f"no request {request_id}")
            approvals = list(
                session.scalars(select(Approval).where(Approval.request_id == request_id).order_by(Approval.id))
            )
            grant = session.scalar(select(Grant).where(Grant.request_id == request_id))
            return request, approvals, grant

    def list(
        self, principal: Principal, *, scope: Scope = "mine", status: str | None = None, limit: int = 100
    ) -> list[AccessRequest]:
        with self._uow() as session:
            query = select(AccessRequest).order_by(AccessRequest.submitted_at.desc())
            if status:
                query = query.where(AccessRequest.status == status)
            if scope == "mine":
                query = query.where(
                    AccessRequest.requester_issuer == principal.issuer,
                    AccessRequest.requester_subject == principal.subject,
                )
            elif scope == "to_approve":
                query = query.where(
                    AccessRequest.status == "pending",
                    or_(
                        AccessRequest.requester_issuer != principal.issuer,
                        AccessRequest.requester_subject != principal.subject,
                    ),
                )
            elif not is_auditor(self._catalog(), principal):
                raise Forbidden("listing every request needs the auditor or admin role")
            rows = list(session.scalars(query.limit(limit * 5 if scope == "to_approve" else limit)))
        if scope == "to_approve":
            rows = [row for row in rows if principal.groups & set(json.loads(row.approver_groups))][:limit]
        return rows

    # -- helpers ----------------------------------------------------------------------------------------

    def _may_see(self, request: AccessRequest, principal: Principal) -> bool:
        if (request.requester_issuer, request.requester_subject) == principal.key:
            return True
        if principal.groups & set(json.loads(request.approver_groups)):
            return True
        return is_auditor(self._catalog(), principal)

    def _policy_view(self, request: AccessRequest) -> policy.PolicyInput:
        requester = policy.Subject(
            request.requester_issuer,
            request.requester_subject,
            request.requester_name,
            frozenset(json.loads(request.requester_groups)),
        )
        rules = policy.LevelRules(
            requesters=None,
            auto_approve=frozenset(),
            approvals_required=request.approvals_required,
            approver_groups=frozenset(json.loads(request.approver_groups)),
            owners_approve=False,
            max_ttl=timedelta(seconds=request.granted_ttl_s),
        )
        return policy.PolicyInput(
            requester=requester,
            resource=request.resource,
            level=request.level,
            resource_owners=frozenset(),
            rules=rules,
            requested_ttl=timedelta(seconds=request.requested_ttl_s),
            reason=request.reason,
            policy_hash=request.policy_hash,
        )

    def _get(self, session: Session, request_id: str, *, for_update: bool = False) -> AccessRequest:
        query = select(AccessRequest).where(AccessRequest.id == request_id)
        if for_update and is_postgres(session):
            query = query.with_for_update()
        request = session.scalar(query)
        if request is None:
            raise NotFound(f"no request {request_id}")
        return request

    def _record(
        self,
        session: Session,
        request: AccessRequest,
        event: str,
        actor: Actor,
        payload: dict[str, object],
        *,
        now: datetime,
    ) -> None:
        ledger.append(
            session,
            at=now,
            event_type=event,
            actor=actor,
            subject_kind="request",
            subject_id=request.id,
            payload=payload,
        )

    def _move(
        self,
        session: Session,
        request: AccessRequest,
        target: str,
        actor: Actor,
        payload: dict[str, object],
        *,
        now: datetime,
    ) -> Grant | None:
        check_move(request.id, request.status, target)
        request.status = target
        if target != "pending":
            request.closed_at = now
        if target == "pending":
            return None
        self._record(session, request, f"request.{target}", actor, payload, now=now)
        if target != "approved":
            return None
        return grants.issue(
            session,
            catalog=self._catalog(),
            request_id=request.id,
            grantee=Actor(request.requester_issuer, request.requester_subject, request.requester_name),
            resource=request.resource,
            level=request.level,
            ttl=timedelta(seconds=request.granted_ttl_s),
            now=now,
            actor=actor,
        )
