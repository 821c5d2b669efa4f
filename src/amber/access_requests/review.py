"""Review by approvers: approve, deny, the k-of-n count, and the post-hoc review of break-glass access.

Invariants:
- Each approval is checked against the policy version running *now*, with the approver's groups as their
  token says now less the groups the SCIM directory took away, read again inside the review's transaction
  (a removal that commits while the call is on its way still applies). Nobody approves their own request,
  and each approver counts once.
- An approval counts toward k-of-n only while its approver could still give it: when the request would
  complete, each earlier approval is re-checked with the approver's groups now (the groups recorded with
  it, less what the directory took away since, at the time it was given); one that fails (approver role
  lost, no longer in an approver group, deprovisioned) does not count, and the approval says which did not.
- Provisioning runs after the approval has committed (grants.GrantService.activate).
- A break-glass review is closed by an owner, a security reviewer or an admin, never the requester, with a
  comment saying what was checked.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber import policy
from amber.access_requests.base import Outcome, ServiceBase, actor_of, is_admin, json_list, subject_of
from amber.access_requests.models import AccessRequest, Approval
from amber.core.clock import as_utc
from amber.core.errors import Conflict, Forbidden, InvalidInput
from amber.identity import APPROVER, Principal, roles_for
from amber.identity.directory import groups_now, is_deprovisioned


class Review(ServiceBase):
    """The approver-review part of AccessRequestService."""

    def approve(self, request_id: str, principal: Principal, *, comment: str = "") -> Outcome:
        return self._review(request_id, principal, "approve", comment)

    def deny(self, request_id: str, principal: Principal, *, comment: str = "") -> Outcome:
        return self._review(request_id, principal, "deny", comment)

    def check_approver(self, request: AccessRequest, principal: Principal, now: datetime) -> policy.ApprovalDecision:
        requester = policy.Subject(
            request.requester_issuer,
            request.requester_subject,
            request.requester_name,
            frozenset(json_list(request.requester_groups)),
        )
        return policy.may_approve(
            policy.ApprovalInput(
                bundle=self._policies(),
                requester=requester,
                approver=subject_of(principal),
                resource=self._resource_info(request.resource),
                level=self._level_info(request.resource, request.level),
                approver_groups=frozenset(json_list(request.approver_groups)),
                approver_all_groups=frozenset(json_list(request.approver_all_groups)),
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
                    request.approvals_required, frozenset(json_list(request.approver_all_groups)), approvals
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
            recorded = frozenset(json_list(approval.approver_groups))
            counted.append(
                groups_now(session, self._directory(), approval.approver_issuer, approval.approver_subject, recorded)
            )
        return counted, lapsed

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
        recorded = frozenset(json_list(approval.approver_groups))
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
