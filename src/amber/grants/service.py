"""Grants: issue, activate, revoke, expire, and drive the provisioners.

Invariants:
- Every change of a grant's lifecycle state is written with its ledger event in one transaction.
- External effects (creating or dropping a role) happen only after that transaction commits, are keyed by
  the grant id, and are retried by the worker until they succeed. A grant's durable state says what the
  target must look like: live grants may have a role, ended grants must not.
- Expiry is an absolute instant fixed when the grant is issued; nothing extends it.
- Ending access comes first: revoke blocks logins and ends sessions before it drops anything.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber import ledger
from amber.catalog import Catalog
from amber.core.clock import Clock, as_utc
from amber.core.crypto import derived_secret, hash_secret, new_secret, scram_sha256_verifier, sha256_hex
from amber.core.db import UnitOfWork, is_postgres
from amber.core.errors import Conflict, Forbidden, NotFound
from amber.core.ids import new_id, short_id
from amber.core.observability import Metrics
from amber.grants.lifecycle import ENDED, LIVE, check_move
from amber.grants.models import Grant
from amber.ledger import SYSTEM, Actor
from amber.provisioners import ConnectionInfo, GrantSpec, Provisioner, ProvisionerError, RevokeSpec
from amber.provisioners.base import ROLE_PREFIX

log = logging.getLogger(__name__)

ProvisionerLookup = Callable[[str], Provisioner]
MAX_BACKOFF = timedelta(seconds=30)


@dataclass(frozen=True)
class Activation:
    grant: Grant
    password: str | None = None
    error: str | None = None
    gateway: tuple[str, int] | None = None

    @property
    def connection_url(self) -> str | None:
        info = connection_info(self.grant, self.gateway)
        if info is None or self.password is None:
            return None
        return info.url(self.password) + ("?sslmode=require" if self.grant.via == "gateway" else "")


def connection_info(grant: Grant, gateway: tuple[str, int] | None = None) -> ConnectionInfo | None:
    """Where the grantee connects: the gateway (user = the grant id) or the database itself (user = the role)."""
    if grant.connect_host is None or grant.connect_port is None or grant.connect_database is None:
        return None
    if grant.via == "gateway":
        if gateway is None:
            return None
        return ConnectionInfo(gateway[0], gateway[1], grant.connect_database, grant.id)
    return ConnectionInfo(grant.connect_host, grant.connect_port, grant.connect_database, grant.role_name)


def role_name_for(grant_id: str) -> str:
    return f"{ROLE_PREFIX}{short_id(grant_id)}"


# -- inside a caller's transaction ------------------------------------------------------------------------


def issue(
    session: Session,
    *,
    catalog: Catalog,
    request_id: str,
    grantee: Actor,
    resource: str,
    level: str,
    ttl: timedelta,
    now: datetime,
    actor: Actor,
    starts_at: datetime | None = None,
    window_end_at: datetime | None = None,
    single_use: bool = False,
) -> Grant:
    """Create a grant for an approved request. Expiry is fixed here, once:

    start = max(now, requested start); expires_at = min(start + ttl, start + the level's max TTL, window end).
    """
    level_spec = catalog.level(resource, level)
    # NOTE: both in UTC: SQLite keeps a datetime's wall clock and drops its offset (a window ends in local time).
    start = as_utc(max(now, starts_at) if starts_at is not None else now)
    expires_at = start + min(ttl, level_spec.max_ttl)
    if window_end_at is not None:
        expires_at = as_utc(min(expires_at, window_end_at))
    grant_id = new_id("grt")
    grant = Grant(
        id=grant_id,
        request_id=request_id,
        grantee_issuer=grantee.issuer,
        grantee_subject=grantee.subject,
        grantee_name=grantee.name,
        resource=resource,
        level=level,
        role_name=role_name_for(grant_id),
        issued_at=now,
        starts_at=start,
        expires_at=expires_at,
        status="issued",
        attempts=0,
        next_attempt_at=start,
        single_use=single_use,
        via=level_spec.via,
    )
    session.add(grant)
    session.flush()
    _record(
        session,
        grant,
        "grant.issued",
        actor=actor,
        now=now,
        payload={
            "request_id": request_id,
            "grantee": {"iss": grantee.issuer, "sub": grantee.subject, "name": grantee.name},
            "resource": resource,
            "level": level,
            "role": grant.role_name,
            "starts_at": ledger_time(start),
            "expires_at": ledger_time(grant.expires_at),
            "single_use": single_use,
            "via": level_spec.via,
        },
    )
    return grant


def get(session: Session, grant_id: str, *, for_update: bool = False) -> Grant:
    query = select(Grant).where(Grant.id == grant_id)
    if for_update and is_postgres(session):
        query = query.with_for_update()
    grant = session.scalar(query)
    if grant is None:
        raise NotFound(f"no grant {grant_id}")
    return grant


def ledger_time(at: datetime) -> str:
    return ledger.chain.format_at(as_utc(at))


def _record(
    session: Session, grant: Grant, event: str, *, actor: Actor, now: datetime, payload: dict[str, object]
) -> None:
    ledger.append(
        session,
        at=now,
        event_type=event,
        actor=actor,
        subject_kind="grant",
        subject_id=grant.id,
        payload=payload,
    )


def _credential(grant: Grant) -> dict[str, object]:
    """The credential_issued payload: to whom, and SHA-256 digests of the gateway token's stored hashes (so the
    replay can check those columns; the ledger is exported, so it never holds the stored values themselves)."""
    return {
        "to": {"iss": grant.grantee_issuer, "sub": grant.grantee_subject},
        "gateway_token_hash_sha256": _digest(grant.gateway_token_hash),
        "gateway_scram_verifier_sha256": _digest(grant.gateway_scram_verifier),
    }


def _digest(value: str | None) -> str | None:
    return sha256_hex(value.encode()) if value is not None else None


def _move(session: Session, grant: Grant, target: str, *, actor: Actor, now: datetime, reason: str) -> None:
    check_move(grant.id, grant.status, target)
    grant.status = target
    grant.ended_at = now
    grant.end_reason = reason
    grant.ended_by = f"{actor.issuer}#{actor.subject}"
    grant.next_attempt_at = now
    grant.attempts = 0
    _record(session, grant, f"grant.{target}", actor=actor, now=now, payload={"reason": reason})


# -- orchestration: one transaction per step, external effects after commit ------------------------------


class GrantService:
    def __init__(
        self,
        *,
        uow: UnitOfWork,
        clock: Clock,
        catalog: Callable[[], Catalog],
        provisioners: ProvisionerLookup,
        installation_id: str,
        metrics: Metrics,
        secret_key: bytes = b"",
        gateway: tuple[str, int] | None = None,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._catalog = catalog
        self._provisioners = provisioners
        self._installation_id = installation_id
        self._metrics = metrics
        self._secret_key = secret_key
        self.gateway = gateway
        # Called (grant id, why) right after a grant ended, before its role is dropped: the gateway cuts sessions.
        self.on_ended: list[Callable[[str, str], None]] = []

    def spec(self, grant: Grant) -> GrantSpec:
        level = self._catalog().level(grant.resource, grant.level)
        return GrantSpec(
            grant_id=grant.id,
            role_name=grant.role_name,
            owner_tag=self._installation_id,
            expires_at=as_utc(grant.expires_at),
            schemas=tuple(level.schemas),
            statement_timeout=level.statement_timeout,
            connection_limit=1 if grant.single_use else level.connection_limit,
            masked_columns=tuple(
                (schema, table, column)
                for (schema, table), columns in sorted(level.masks().items())
                for column in sorted(columns)
            ),
        )

    def activate(self, grant_id: str, *, with_credential: bool) -> Activation:
        """Provision a grant's role and mark it active; with_credential also sets and returns its password.

        Never raises for a target that is down: the failure is recorded and the worker retries.
        """
        with self._uow() as session:
            grant = get(session, grant_id)
            if grant.status not in LIVE:
                return Activation(grant, error=f"grant is {grant.status}")
            if grant.starts_at is not None and as_utc(grant.starts_at) > self._clock.now():
                return Activation(grant, error="scheduled: access starts at " + ledger_time(grant.starts_at))
            spec = self.spec(grant)
        provisioner = self._provisioners(grant.resource)
        gateway = grant.via == "gateway"
        if gateway and self.gateway is None:
            return Activation(
                self._note_failure(
                    grant_id, "the level is reached through the gateway, which is not running (set AMBER_GATEWAY_PORT)"
                ),
                error="no gateway",
            )
        password = (new_secret("gw") if gateway else new_secret("pg")) if with_credential else None
        started = self._clock.now()
        try:
            with self._metrics.provision_seconds.labels(provisioner.kind).time():
                info = provisioner.provision(spec)
                if gateway:
                    # The role's own password is derived, never stored and never shown: only the gateway uses it.
                    provisioner.set_password(spec, derived_secret(self._secret_key, "upstream", grant.id))
                elif password is not None:
                    provisioner.set_password(spec, password)
        except ProvisionerError as exc:
            self._metrics.provision_failures.labels(provisioner.kind, "provision").inc()
            return Activation(self._note_failure(grant_id, str(exc)), error=str(exc))
        with self._uow() as session:
            grant = get(session, grant_id, for_update=True)
            now = self._clock.now()
            if grant.status not in LIVE:
                # Revoked or expired while we were provisioning: the role must go again.
                ended = grant
            else:
                ended = None
                if grant.status == "issued":
                    check_move(grant.id, grant.status, "active")
                    grant.status = "active"
                    grant.activated_at = now
                    grant.connect_host, grant.connect_port, grant.connect_database = (
                        info.host,
                        info.port,
                        info.database,
                    )
                    grant.last_error = None
                    _record(
                        session,
                        grant,
                        "grant.activated",
                        actor=SYSTEM,
                        now=now,
                        payload={
                            "role": grant.role_name,
                            "target": f"{info.host}:{info.port}/{info.database}",
                            "provision_ms": round((now - started).total_seconds() * 1000, 3),
                        },
                    )
                if password is not None:
                    # Only the submit path asks for a credential here, right after issuing the grant;
                    # a claim needs an active grant, so nobody can have been shown one before.
                    grant.credential_shown_at = now
                    if gateway:
                        grant.gateway_token_hash = hash_secret(password, self._secret_key)
                        grant.gateway_scram_verifier = scram_sha256_verifier(password)
                    _record(
                        session, grant, "grant.credential_issued", actor=SYSTEM, now=now, payload=_credential(grant)
                    )
        if ended is not None:
            self.deprovision([grant_id])
            return Activation(ended, error=f"grant is {ended.status}")
        return Activation(grant, password=password, gateway=self.gateway)

    def claim_credential(self, grant_id: str, *, issuer: str, subject: str) -> Activation:
        """Show the grant's credential to its grantee: a database password exactly once; a gateway token each
        time it is asked for, replacing the one before (every issue is on record)."""
        with self._uow() as session:
            grant = get(session, grant_id, for_update=True)
            if (grant.grantee_issuer, grant.grantee_subject) != (issuer, subject):
                raise Forbidden("only the person the grant was issued to can get its credential")
            if grant.status != "active":
                raise Conflict(f"grant {grant_id} is {grant.status}; credentials exist only for active grants")
            if grant.credential_shown_at is not None and grant.via != "gateway":
                # A gateway token can be re-issued (the old one stops working); a database password cannot.
                raise Conflict(
                    f"the credential for grant {grant_id} was already shown; it is shown exactly once "
                    "(revoke the grant and request again if it was lost)"
                )
            now = self._clock.now()
            grant.credential_shown_at = now
            token = new_secret("gw") if grant.via == "gateway" else None
            if token is not None:
                grant.gateway_token_hash = hash_secret(token, self._secret_key)
                grant.gateway_scram_verifier = scram_sha256_verifier(token)
            _record(session, grant, "grant.credential_issued", actor=SYSTEM, now=now, payload=_credential(grant))
            if token is not None:
                return Activation(grant, password=token, gateway=self.gateway)
            spec = self.spec(grant)
        password = new_secret("pg")
        try:
            self._provisioners(grant.resource).set_password(spec, password)
        except ProvisionerError as exc:
            with self._uow() as session:
                grant = get(session, grant_id, for_update=True)
                grant.credential_shown_at = None
                _record(
                    session,
                    grant,
                    "grant.credential_failed",
                    actor=SYSTEM,
                    now=self._clock.now(),
                    payload={"error": str(exc)},
                )
            raise
        return Activation(grant, password=password)

    def revoke(self, grant_id: str, *, actor: Actor, reason: str, is_admin: bool) -> Grant:
        with self._uow() as session:
            grant = get(session, grant_id, for_update=True)
            own = (grant.grantee_issuer, grant.grantee_subject) == (actor.issuer, actor.subject)
            if not (own or is_admin):
                raise Forbidden("only the grantee or an admin can revoke this grant")
            if grant.status in ENDED:
                raise Conflict(f"grant {grant_id} already {grant.status}")
            _move(session, grant, "revoked", actor=actor, now=self._clock.now(), reason=reason or "revoked")
        self._metrics.grants_ended.labels("revoked").inc()
        self._ended([grant_id], f"was revoked: {reason or 'revoked'}")
        self.deprovision([grant_id])
        return grant

    def expire_due(self, *, limit: int = 500) -> list[str]:
        """Move every live grant whose expiry has passed to `expired`, then take its access away."""
        with self._uow() as session:
            now = self._clock.now()
            query = (
                select(Grant)
                .where(Grant.status.in_(LIVE), Grant.expires_at <= now)
                .order_by(Grant.expires_at)
                .limit(limit)
            )
            if is_postgres(session):
                query = query.with_for_update(skip_locked=True)
            due = list(session.scalars(query))
            for grant in due:
                _move(session, grant, "expired", actor=SYSTEM, now=now, reason="expired")
        if due:
            self._metrics.grants_ended.labels("expired").inc(len(due))
            self._ended([grant.id for grant in due], "expired")
            self.deprovision([grant.id for grant in due])
            done = self._clock.now()
            for grant in due:
                self._metrics.revocation_lag.observe(max(0.0, (done - as_utc(grant.expires_at)).total_seconds()))
        return [grant.id for grant in due]

    def deprovision(self, grant_ids: Sequence[str]) -> None:
        """Remove ended grants' roles, batched per resource; record success, or the failure for a retry."""
        with self._uow() as session:
            grants = list(session.scalars(select(Grant).where(Grant.id.in_(grant_ids))))
        by_resource: dict[str, list[Grant]] = defaultdict(list)
        for grant in grants:
            if grant.status in ENDED and grant.deprovisioned_at is None:
                by_resource[grant.resource].append(grant)
        for resource, batch in by_resource.items():
            specs = [RevokeSpec(grant.id, grant.role_name) for grant in batch]
            try:
                provisioner = self._provisioners(resource)
                provisioner.revoke(specs)
            except ProvisionerError as exc:
                self._metrics.provision_failures.labels("postgres", "revoke").inc()
                for grant in batch:
                    self._note_failure(grant.id, str(exc))
                continue
            with self._uow() as session:
                now = self._clock.now()
                for grant in batch:
                    row = get(session, grant.id)
                    row.deprovisioned_at = now
                    row.last_error = None
                    _record(
                        session,
                        row,
                        "grant.deprovisioned",
                        actor=SYSTEM,
                        now=now,
                        payload={"role": row.role_name},
                    )

    def retry_due(self) -> None:
        """Finish provisioning or deprovisioning that failed earlier, when its back-off has passed."""
        with self._uow() as session:
            now = self._clock.now()
            pending = list(
                session.scalars(
                    select(Grant.id).where(
                        Grant.status == "issued", Grant.next_attempt_at <= now, Grant.expires_at > now
                    )
                )
            )
            leftovers = list(
                session.scalars(
                    select(Grant.id).where(
                        Grant.status.in_(ENDED),
                        Grant.deprovisioned_at.is_(None),
                        Grant.next_attempt_at <= now,
                    )
                )
            )
        for grant_id in pending:
            self.activate(grant_id, with_credential=False)
        if leftovers:
            self.deprovision(leftovers)

    def end_used_single_use(self) -> list[str]:
        """Single-use grants: note the first session, and revoke once the grant has no session left.

        What this does NOT catch: a disconnect and reconnect between two looks (every worker tick). The role's
        connection limit is 1, and the gateway (which sees every session) will close this gap.
        """
        with self._uow() as session:
            live = list(session.scalars(select(Grant).where(Grant.status == "active", Grant.single_use.is_(True))))
        by_resource: dict[str, list[Grant]] = defaultdict(list)
        for grant in live:
            by_resource[grant.resource].append(grant)
        ended: list[str] = []
        for resource, grants in by_resource.items():
            try:
                sessions = {role.role_name: role.session_count for role in self._provisioners(resource).inspect()}
            except ProvisionerError as exc:
                log.warning("single-use check: cannot inspect %s: %s", resource, exc)
                continue
            for grant in grants:
                count = sessions.get(grant.role_name, 0)
                if count > 0 and grant.session_seen_at is None:
                    with self._uow() as session:
                        row = get(session, grant.id, for_update=True)
                        now = self._clock.now()
                        row.session_seen_at = now
                        _record(
                            session, row, "grant.session_started", actor=SYSTEM, now=now, payload={"single_use": True}
                        )
                elif count == 0 and grant.session_seen_at is not None:
                    ended.append(grant.id)
        for grant_id in ended:
            try:
                self.revoke(grant_id, actor=SYSTEM, reason="single-use grant: its session ended", is_admin=True)
            except Conflict:
                continue
        return ended

    def reconcile(self) -> list[str]:
        """Drop roles of this installation that no live grant owns (e.g. a crash between create and commit)."""
        dropped: list[str] = []
        foreign = 0
        catalog = self._catalog()
        for resource in catalog.resources:
            try:
                provisioner = self._provisioners(resource)
                roles = provisioner.inspect()
            except ProvisionerError as exc:
                log.warning("reconcile: cannot inspect %s: %s", resource, exc)
                continue
            try:
                swept = provisioner.sweep(self._installation_id)
            except ProvisionerError as exc:
                log.warning("reconcile: cannot sweep %s: %s", resource, exc)
            else:
                if swept:
                    log.info("reconcile: tidied %d item(s) on %s: %s", len(swept), resource, swept)
            ours = [role for role in roles if role.owner_tag == self._installation_id]
            foreign += len(roles) - len(ours)
            if not ours:
                continue
            with self._uow() as session:
                live = set(
                    session.scalars(
                        select(Grant.role_name).where(
                            Grant.role_name.in_([role.role_name for role in ours]), Grant.status.in_(LIVE)
                        )
                    )
                )
            orphans = [role for role in ours if role.role_name not in live]
            if not orphans:
                continue
            try:
                provisioner.revoke([RevokeSpec(role.grant_id or "", role.role_name) for role in orphans])
            except ProvisionerError as exc:
                log.warning("reconcile: cannot drop orphan roles on %s: %s", resource, exc)
                continue
            dropped.extend(role.role_name for role in orphans)
            self._metrics.orphans_dropped.inc(len(orphans))
            with self._uow() as session:
                now = self._clock.now()
                for role in orphans:
                    ledger.append(
                        session,
                        at=now,
                        event_type="role.orphan_dropped",
                        actor=SYSTEM,
                        subject_kind="role",
                        subject_id=role.role_name,
                        payload={"resource": resource, "grant_id": role.grant_id},
                    )
        self._metrics.foreign_roles.set(foreign)
        return dropped

    def _ended(self, grant_ids: list[str], reason: str) -> None:
        for hook in self.on_ended:
            for grant_id in grant_ids:
                try:
                    hook(grant_id, reason)
                except Exception:  # a failing hook must not stop the revocation; the role is dropped anyway
                    log.exception("grant %s: on-ended hook failed", grant_id)

    def _note_failure(self, grant_id: str, error: str) -> Grant:
        with self._uow() as session:
            grant = get(session, grant_id, for_update=True)
            grant.attempts = (grant.attempts or 0) + 1
            backoff = min(MAX_BACKOFF, timedelta(seconds=0.5 * 2 ** min(grant.attempts, 8)))
            grant.next_attempt_at = self._clock.now() + backoff
            grant.last_error = error
            log.warning("grant %s: provisioner call failed (attempt %d): %s", grant_id, grant.attempts, error)
            return grant
