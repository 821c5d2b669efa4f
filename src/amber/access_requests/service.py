"""Access requests: submit, approve, deny, cancel, expire, review. The orchestration of the lifecycle.

Invariants:
- A submitted request is immutable; changing anything means a new request that supersedes the old one.
- Every transition is appended to the ledger in the same transaction as the state it changes.
- A request keeps the decision of the policy version that made it (hash and policy ids on record); each
  approval is checked against the policy version running *now*, with the approver's groups as their token
  says now less the groups the SCIM directory took away, read again inside the review's transaction (a
  removal that commits while the call is on its way still applies). Nobody approves their own request,
  and each approver counts once.
- An approval counts toward k-of-n only while its approver could still give it: when the request would
  complete, each earlier approval is re-checked with the approver's groups now (the groups recorded with
  it, less what the directory took away since, at the time it was given); one that fails (approver role
  lost, no longer in an approver group, deprovisioned) does not count, and the approval says which did not.
- After a SCIM change (amber.scim), in the same transaction: a person's pending requests that policy would
  now deny with their groups now are denied (`recheck_pending`), a deprovisioned person's are cancelled
  (`withdraw_pending`), and approvals they gave that no longer stand are recorded as lapsed
  (`recheck_approvals_by`). Each names the SCIM call.
- Provisioning runs after the decision has committed (grants.GrantService.activate).
- Break-glass access is granted at once, its notice is queued in the same transaction (delivered at least
  once), and it stays `review: required` until an owner, a security reviewer or an admin completes it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from amber import grants, ledger, policy
from amber.access_requests.lifecycle import OUTCOME_STATUS, check_move
from amber.access_requests.models import AccessRequest, Approval, Notification
from amber.access_requests.notify import LogNotifier, Notifier, NotifyError
from amber.catalog import Catalog
from amber.core.clock import Clock, as_utc
from amber.core.db import UnitOfWork, is_postgres
from amber.core.durations import MAX_LEVEL_TTL, format_duration
from amber.core.errors import AmberError, Conflict, Forbidden, InvalidInput, NotFound
from amber.core.ids import new_id
from amber.core.observability import Metrics
from amber.grants.lifecycle import LIVE
from amber.grants.models import Grant
from amber.grants.service import Activation, GrantService
from amber.identity import APPROVER, REQUESTER, Principal, roles_for
from amber.identity.directory import NO_DIRECTORY, DirectoryScope, groups_now, is_deprovisioned
from amber.ledger import SYSTEM, Actor

log = logging.getLogger(__name__)
INBOX_PAGE = 500  # candidates read per query when an inbox is filtered by group

POLICY_ACTOR = Actor(issuer="amber", subject="policy", name="policy")
MAX_REASON = 2000
MAX_NOTIFY_BACKOFF = timedelta(minutes=5)

Scope = Literal["mine", "to_approve", "to_review", "all"]
PolicySource = Callable[[], policy.PolicyBundle]


@dataclass(frozen=True)
class Outcome:
    request: AccessRequest
    grant: Grant | None = None
    activation: Activation | None = None


def actor_of(principal: Principal) -> Actor:
    return Actor(issuer=principal.issuer, subject=principal.subject, name=principal.name)


def subject_of(principal: Principal) -> policy.Subject:
    return policy.Subject(
        principal.issuer, principal.subject, principal.name, principal.groups, oncall="oncall" in principal.groups
    )


def is_admin(catalog: Catalog, principal: Principal) -> bool:
    return principal.in_any(catalog.identity.admins)


def is_auditor(catalog: Catalog, principal: Principal) -> bool:
    return principal.in_any(catalog.identity.auditors) or is_admin(catalog, principal)


def _json_list(text: str) -> list[str]:
    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else []


class AccessRequestService:
    def __init__(
        self,
        *,
        uow: UnitOfWork,
        clock: Clock,
        catalog: Callable[[], Catalog],
        policies: PolicySource,
        grant_service: GrantService,
        metrics: Metrics,
        notifier: Notifier | None = None,
        max_start_ahead: timedelta = timedelta(days=30),
        directory: Callable[[], DirectoryScope] | None = None,
    ) -> None:
        self._uow = uow
        self._directory = directory or (lambda: NO_DIRECTORY)
        self._max_start_ahead = max_start_ahead
        self._clock = clock
        self._catalog = catalog
        self._policies = policies
        self._grants = grant_service
        self._metrics = metrics
        self._notifier = notifier or LogNotifier()

    # -- policy inputs -------------------------------------------------------------------------------------

    def _resource_info(self, resource: str) -> policy.ResourceInfo:
        spec = self._catalog().resource(resource)
        return policy.ResourceInfo(
            name=spec.name,
            kind=spec.kind,
            environment=spec.environment,
            tags=frozenset(spec.tags),
            owners=frozenset(spec.owners),
        )

    def _level_info(self, resource: str, level: str) -> policy.LevelInfo:
        spec = self._catalog().level(resource, level)
        return policy.LevelInfo(
            name=level,
            max_ttl=spec.max_ttl,
            min_reason_length=spec.justification.min_length,
            reason_pattern=spec.justification.pattern,
        )

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

    def decide(
        self,
        principal: Principal,
        *,
        resource: str,
        level: str,
        reason: str,
        ttl: timedelta,
        starts_at: datetime | None = None,
        break_glass: bool = False,
        history: policy.History | None = None,
        at: datetime | None = None,
    ) -> policy.Decision:
        """Ask the running policy bundle. Used by submit and by `amber policy test`."""
        return policy.decide(
            policy.PolicyInput(
                bundle=self._policies(),
                requester=subject_of(principal),
                resource=self._resource_info(resource),
                level=self._level_info(resource, level),
                requested_ttl=ttl,
                reason=reason,
                at=at or self._clock.now(),
                starts_at=starts_at,
                history=history or policy.History(),
                action="break_glass" if break_glass else "request",
            )
        )

    # -- submit --------------------------------------------------------------------------------------------

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

    def _break_glass(self, session: Session, request: AccessRequest, owners: list[str], *, now: datetime) -> None:
        config = self._catalog().policy
        recipients = sorted(set(owners) | set(config.security_groups))
        request.review_status = "required"
        message = (
            f"BREAK-GLASS: {request.requester_name} took {request.level} access to {request.resource} "
            f"at once ({request.reason!r}); a review is required (request {request.id})."
        )
        session.add(
            Notification(
                created_at=now,
                request_id=request.id,
                kind="break_glass",
                recipients=json.dumps(recipients),
                message=message,
                attempts=0,
                next_attempt_at=now,
            )
        )
        self._record(
            session,
            request,
            "request.break_glass",
            POLICY_ACTOR,
            {"notified": recipients, "review": "required"},
            now=now,
        )

    # -- review by approvers -------------------------------------------------------------------------------

    def approve(self, request_id: str, principal: Principal, *, comment: str = "") -> Outcome:
        return self._review(request_id, principal, "approve", comment)

    def deny(self, request_id: str, principal: Principal, *, comment: str = "") -> Outcome:
        return self._review(request_id, principal, "deny", comment)

    def check_approver(self, request: AccessRequest, principal: Principal, now: datetime) -> policy.ApprovalDecision:
        requester = policy.Subject(
            request.requester_issuer,
            request.requester_subject,
            request.requester_name,
            frozenset(_json_list(request.requester_groups)),
        )
        return policy.may_approve(
            policy.ApprovalInput(
                bundle=self._policies(),
                requester=requester,
                approver=subject_of(principal),
                resource=self._resource_info(request.resource),
                level=self._level_info(request.resource, request.level),
                approver_groups=frozenset(_json_list(request.approver_groups)),
                approver_all_groups=frozenset(_json_list(request.approver_all_groups)),
                at=now,
            )
        )

    def _review(self, request_id: str, principal: Principal, verdict: str, comment: str) -> Outcome:
        with self._uow() as session:
            request = self._get(session, request_id, for_update=True)
            now = self._clock.now()
            if request.status != "pending":
                raise Conflict(f"request {request_id} is {request.status}; only pending requests can be reviewed")
            if request.pending_expires_at is not None and as_utc(request.pending_expires_at) <= now:
                raise Conflict(f"request {request_id} expired while pending; ask again")
            principal = self._as_directory_says(session, principal)
            check = self.check_approver(request, principal, now)
            if not check.allowed:
                raise Forbidden(f"you cannot review request {request_id}: {check.reason}")
            already = session.scalar(
                select(Approval.id).where(
                    Approval.request_id == request_id,
                    Approval.approver_issuer == principal.issuer,
                    Approval.approver_subject == principal.subject,
                )
            )
            if already is not None:
                raise Conflict(f"you already reviewed request {request_id}; each approver counts once")
            session.add(
                Approval(
                    request_id=request_id,
                    approver_issuer=principal.issuer,
                    approver_subject=principal.subject,
                    approver_name=principal.name,
                    verdict=verdict,
                    comment=comment,
                    decided_at=now,
                    approver_groups=json.dumps(sorted(principal.groups)),
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
                    "via": check.reason,
                    "policy_ids": list(check.policy_ids),
                    "policy_hash": self._policies().hash,
                    "groups": sorted(principal.groups),
                },
                now=now,
            )
            grant = None
            if verdict == "deny":
                self._move(session, request, "denied", actor, {"by": "approver"}, now=now)
            else:
                session.flush()
                approvals, lapsed = self._counted(session, request)
                if policy.approvals_satisfied(
                    request.approvals_required, frozenset(_json_list(request.approver_all_groups)), approvals
                ):
                    payload: dict[str, object] = {"by": "approvals", "approvals": len(approvals)}
                    if lapsed:
                        payload["not_counted"] = lapsed
                    grant = self._move(session, request, "approved", actor, payload, now=now)
        if grant is None:
            return Outcome(request)
        if grant.starts_at is not None and as_utc(grant.starts_at) > self._clock.now():
            return Outcome(request, grant)
        activation = self._grants.activate(grant.id, with_credential=False)
        return Outcome(request, activation.grant, activation)

    def _as_directory_says(self, session: Session, principal: Principal) -> Principal:
        """The reviewer as the directory says inside this transaction: a SCIM change that committed after their
        call was authenticated (deprovisioned, or a group taken away) applies to this review too."""
        if is_deprovisioned(session, principal.issuer, principal.subject):
            raise Forbidden("this account was deactivated at the identity provider")
        groups = groups_now(session, self._directory(), principal.issuer, principal.subject, principal.groups)
        if groups == principal.groups:
            return principal
        roles = roles_for(groups, self._catalog().identity.roles.model_dump())
        if APPROVER not in roles:
            raise Forbidden("you no longer have the approver role (the identity provider's directory changed)")
        return dataclasses.replace(principal, groups=groups, roles=roles)

    def _counted(self, session: Session, request: AccessRequest) -> tuple[list[frozenset[str]], list[dict[str, str]]]:
        """The approvals that count toward k-of-n (each approver's groups now) and those that no longer do."""
        counted: list[frozenset[str]] = []
        lapsed: list[dict[str, str]] = []
        rows = session.scalars(
            select(Approval)
            .where(Approval.request_id == request.id, Approval.verdict == "approve")
            .order_by(Approval.id)
        )
        for approval in rows:
            problem = self._lapsed(session, request, approval)
            if problem is not None:
                lapsed.append(
                    {"approver": f"{approval.approver_issuer}#{approval.approver_subject}", "reason": problem}
                )
                continue
            recorded = frozenset(_json_list(approval.approver_groups))
            counted.append(
                groups_now(session, self._directory(), approval.approver_issuer, approval.approver_subject, recorded)
            )
        return counted, lapsed

    def cancel(self, request_id: str, principal: Principal) -> Outcome:
        with self._uow() as session:
            request = self._get(session, request_id, for_update=True)
            if (request.requester_issuer, request.requester_subject) != principal.key:
                raise Forbidden("only the requester can cancel a request")
            if request.status != "pending":
                raise Conflict(f"request {request_id} is {request.status}; only pending requests can be cancelled")
            self._move(session, request, "cancelled", actor_of(principal), {}, now=self._clock.now())
        return Outcome(request)

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
            groups = groups_now(session, self._directory(), issuer, subject, _json_list(request.requester_groups))
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

    def _lapsed(self, session: Session, request: AccessRequest, approval: Approval) -> str | None:
        """Why an approval given earlier no longer counts, or None if it still stands.

        It stands while the approver's groups are those recorded with it (less nothing: the directory took
        none away). Otherwise the approver must still be active, hold the approver role, and be allowed by
        the running policy to approve this request with the groups they hold now, judged at the time the
        approval was given (a night-time group change does not fail a business-hours rule).
        What this does NOT check: groups a token-only approver lost at their provider (amber learns of those
        only through SCIM or their next call)."""
        issuer, subject = approval.approver_issuer, approval.approver_subject
        if is_deprovisioned(session, issuer, subject):
            return f"{approval.approver_name} was deprovisioned"
        recorded = frozenset(_json_list(approval.approver_groups))
        groups = groups_now(session, self._directory(), issuer, subject, recorded)
        if groups == recorded:
            return None
        if APPROVER not in roles_for(groups, self._catalog().identity.roles.model_dump()):
            return f"{approval.approver_name} no longer has the approver role"
        check = self.check_approver(
            request, Principal(issuer, subject, approval.approver_name, groups), as_utc(approval.decided_at)
        )
        return None if check.allowed else f"{approval.approver_name} could no longer approve: {check.reason}"

    def complete_review(self, request_id: str, principal: Principal, *, comment: str) -> AccessRequest:
        """Close the post-hoc review of a break-glass access. Owners, reviewers and admins; never the requester."""
        catalog = self._catalog()
        with self._uow() as session:
            request = self._get(session, request_id, for_update=True)
            if request.review_status != "required":
                raise Conflict(f"request {request_id} has no open review")
            if (request.requester_issuer, request.requester_subject) == principal.key:
                raise Forbidden("nobody reviews their own break-glass access")
            allowed = (
                set(catalog.resource(request.resource).owners)
                | set(catalog.policy.reviewers)
                | set(catalog.policy.security_groups)
            )
            if not (principal.groups & allowed or is_admin(catalog, principal)):
                raise Forbidden(f"break-glass reviews are for {', '.join(sorted(allowed)) or 'admins'}")
            if len(comment.strip()) < 3:
                raise InvalidInput("a review needs a comment saying what was checked")
            now = self._clock.now()
            request.review_status = "done"
            request.reviewed_at = now
            request.reviewed_by = f"{principal.issuer}#{principal.subject}"
            self._record(
                session, request, "request.review_completed", actor_of(principal), {"comment": comment.strip()}, now=now
            )
        return request

    # -- worker tasks --------------------------------------------------------------------------------------

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

    def deliver_notifications(self, *, limit: int = 50) -> int:
        with self._uow() as session:
            now = self._clock.now()
            due = list(
                session.scalars(
                    select(Notification)
                    .where(Notification.delivered_at.is_(None), Notification.next_attempt_at <= now)
                    .order_by(Notification.id)
                    .limit(limit)
                )
            )
            notices = [
                (
                    n.id,
                    {
                        "kind": n.kind,
                        "request_id": n.request_id,
                        "recipients": _json_list(n.recipients),
                        "message": n.message,
                        "id": n.id,
                    },
                )
                for n in due
            ]
        delivered = 0
        for notice_id, notice in notices:
            error = None
            try:
                self._notifier.send(notice)
            except NotifyError as exc:
                error = str(exc)
            with self._uow() as session:
                row = session.get(Notification, notice_id)
                if row is None or row.delivered_at is not None:
                    continue
                now = self._clock.now()
                row.attempts += 1
                if error is None:
                    row.delivered_at = now
                    delivered += 1
                else:
                    row.last_error = error
                    row.next_attempt_at = now + min(MAX_NOTIFY_BACKOFF, timedelta(seconds=2 ** min(row.attempts, 8)))
                    log.warning("notification %d for %s not delivered: %s", notice_id, notice["request_id"], error)
        return delivered

    # -- reads ---------------------------------------------------------------------------------------------

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

    def explain(self, request_id: str, principal: Principal) -> dict[str, Any]:
        """Why a request got its decision: the policies, where they are, and whether they still run."""
        request, approvals, grant = self.get(request_id, principal)
        bundle = self._policies()
        current = bundle.hash == request.policy_hash
        policies = []
        for policy_id in _json_list(request.policy_ids):
            statement = bundle.by_id(policy_id) if current else None
            policies.append(
                {
                    "id": policy_id,
                    "where": statement.where if statement else None,
                    "message": statement.message if statement else None,
                    "text": statement.text if statement else None,
                }
            )
        approved_groups = [frozenset(_json_list(a.approver_groups)) for a in approvals if a.verdict == "approve"]
        not_counted: list[dict[str, str]] = []
        if request.status == "pending":  # what would count if one more approval came now
            with self._uow() as session:
                approved_groups, not_counted = self._counted(session, request)
        return {
            "request_id": request.id,
            "status": request.status,
            "outcome": request.outcome,
            "reasons": _json_list(request.decision_reasons),
            "policy_hash": request.policy_hash,
            "decided_by_running_bundle": current,
            "running_policy_hash": bundle.hash,
            "policies": policies,
            "approvals": {
                "required": request.approvals_required,
                "received": len(approved_groups),
                "not_counted": not_counted,
                "from_any_of": _json_list(request.approver_groups),
                "one_from_each_of": _json_list(request.approver_all_groups),
                "satisfied": policy.approvals_satisfied(
                    request.approvals_required, frozenset(_json_list(request.approver_all_groups)), approved_groups
                ),
            },
            "conditions": {
                "single_use": request.single_use,
                "break_glass": request.break_glass,
                "window_end_at": as_utc(request.window_end_at).isoformat() if request.window_end_at else None,
                "review": request.review_status,
            },
            "grant": {"id": grant.id, "status": grant.status} if grant else None,
        }

    def list(
        self, principal: Principal, *, scope: Scope = "mine", status: str | None = None, limit: int = 100
    ) -> list[AccessRequest]:
        """The newest `limit` requests in `scope`. The inboxes (`to_approve`, `to_review`) are filtered by group
        after the query, so they page through the candidates until `limit` match or none are left."""
        catalog = self._catalog()
        query = select(AccessRequest).order_by(AccessRequest.submitted_at.desc(), AccessRequest.id.desc())
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
        elif scope == "to_review":
            query = query.where(AccessRequest.review_status == "required")
        elif not is_auditor(catalog, principal):
            raise Forbidden("listing every request needs the auditor or admin role")
        wanted = self._inbox_filter(scope, principal, catalog)
        if wanted is False:
            return []
        with self._uow() as session:
            if wanted is True:
                return list(session.scalars(query.limit(limit)))
            # Keyset pages (not OFFSET): each page is one index range, and a request submitted or decided
            # between two pages cannot make a row appear twice or be skipped.
            rows: list[AccessRequest] = []
            page = INBOX_PAGE
            batch = list(session.scalars(query.limit(page)))
            while True:
                rows += [row for row in batch if wanted(row)]
                if len(rows) >= limit or len(batch) < page:
                    return rows[:limit]
                last = batch[-1]
                after = or_(
                    AccessRequest.submitted_at < last.submitted_at,
                    and_(AccessRequest.submitted_at == last.submitted_at, AccessRequest.id < last.id),
                )
                batch = list(session.scalars(query.where(after).limit(page)))

    @staticmethod
    def _inbox_filter(scope: Scope, principal: Principal, catalog: Catalog) -> Callable[[AccessRequest], bool] | bool:
        """Which rows of an inbox the principal may act on: a test per row, True (the query alone decides) or
        False (none: the principal is in no group that could act on any request)."""
        if scope == "to_approve":
            if not principal.groups:
                return False
            return lambda row: bool(principal.groups & set(_json_list(row.approver_groups)))
        if scope == "to_review":
            if is_admin(catalog, principal):
                return True
            reviewers = set(catalog.policy.reviewers) | set(catalog.policy.security_groups)
            owners = {group for resource in catalog.resources.values() for group in resource.owners}
            if not principal.groups & (reviewers | owners):
                return False

            def may_review(row: AccessRequest) -> bool:
                resource = catalog.resources.get(row.resource)
                return bool(principal.groups & (reviewers | set(resource.owners if resource else [])))

            return may_review
        return True

    # -- helpers -------------------------------------------------------------------------------------------

    def _may_see(self, request: AccessRequest, principal: Principal) -> bool:
        if (request.requester_issuer, request.requester_subject) == principal.key:
            return True
        if principal.groups & set(_json_list(request.approver_groups)):
            return True
        return is_auditor(self._catalog(), principal)

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
        if target == "pending":
            return None
        request.closed_at = now
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
            starts_at=as_utc(request.requested_start_at) if request.requested_start_at else None,
            window_end_at=as_utc(request.window_end_at) if request.window_end_at else None,
            single_use=request.single_use,
        )
