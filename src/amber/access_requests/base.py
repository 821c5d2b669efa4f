"""The shared core of the access-request service: its collaborators, the policy inputs it builds from the
catalog, and the one way a request changes state.

Invariants:
- A submitted request is immutable; changing anything means a new request that supersedes the old one.
- Every transition is appended to the ledger in the same transaction as the state it changes (`_move`
  checks the move against access_requests.lifecycle, records it, and issues the grant of an approval in
  that transaction).
- Provisioning runs after the decision has committed (grants.GrantService.activate), never here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber import grants, ledger, policy
from amber.access_requests.lifecycle import check_move
from amber.access_requests.models import AccessRequest
from amber.access_requests.notify import LogNotifier, Notifier
from amber.catalog import Catalog
from amber.core.clock import Clock, as_utc
from amber.core.db import UnitOfWork, is_postgres
from amber.core.errors import NotFound
from amber.core.observability import Metrics
from amber.grants.models import Grant
from amber.grants.service import Activation, GrantService
from amber.identity import Principal
from amber.identity.directory import NO_DIRECTORY, DirectoryScope
from amber.ledger import Actor

POLICY_ACTOR = Actor(issuer="amber", subject="policy", name="policy")

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


def json_list(text: str) -> list[str]:
    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else []


class ServiceBase:
    """The collaborators every part of AccessRequestService uses, and the helpers they share."""

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

    # -- reading and moving a request ----------------------------------------------------------------------

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
