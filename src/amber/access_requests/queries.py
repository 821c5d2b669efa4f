"""Reading access requests: one request with its approvals and grant, why it got its decision, and the
lists and inboxes.

Invariants:
- A request is shown only to its requester, to members of its approver groups, and to auditors and admins;
  to anyone else it does not exist (404).
- Listing every request needs the auditor or admin role; an inbox holds only what its reader may act on,
  paged by key so no row repeats or is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy import and_, or_, select

from amber import policy
from amber.access_requests.base import is_admin, is_auditor, json_list
from amber.access_requests.models import AccessRequest, Approval
from amber.access_requests.review import Review
from amber.catalog import Catalog
from amber.core.clock import as_utc
from amber.core.errors import Forbidden, NotFound
from amber.grants.models import Grant
from amber.identity import Principal

INBOX_PAGE = 500  # candidates read per query when an inbox is filtered by group

Scope = Literal["mine", "to_approve", "to_review", "all"]


class Queries(Review):
    """The read part of AccessRequestService."""

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
        for policy_id in json_list(request.policy_ids):
            statement = bundle.by_id(policy_id) if current else None
            policies.append(
                {
                    "id": policy_id,
                    "where": statement.where if statement else None,
                    "message": statement.message if statement else None,
                    "text": statement.text if statement else None,
                }
            )
        approved_groups = [frozenset(json_list(a.approver_groups)) for a in approvals if a.verdict == "approve"]
        not_counted: list[dict[str, str]] = []
        if request.status == "pending":  # what would count if one more approval came now
            with self._uow() as session:
                approved_groups, not_counted = self._counted(session, request)
        return {
            "request_id": request.id,
            "status": request.status,
            "outcome": request.outcome,
            "reasons": json_list(request.decision_reasons),
            "policy_hash": request.policy_hash,
            "decided_by_running_bundle": current,
            "running_policy_hash": bundle.hash,
            "policies": policies,
            "approvals": {
                "required": request.approvals_required,
                "received": len(approved_groups),
                "not_counted": not_counted,
                "from_any_of": json_list(request.approver_groups),
                "one_from_each_of": json_list(request.approver_all_groups),
                "satisfied": policy.approvals_satisfied(
                    request.approvals_required, frozenset(json_list(request.approver_all_groups)), approved_groups
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
            return lambda row: bool(principal.groups & set(json_list(row.approver_groups)))
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
        if principal.groups & set(json_list(request.approver_groups)):
            return True
        return is_auditor(self._catalog(), principal)
