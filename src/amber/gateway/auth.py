"""Who may use the gateway: the grant id as user name, the amber gateway token as password.

The token is shown once and stored only as an HMAC-SHA-256 hash and a SCRAM-SHA-256 verifier on the grant.
A client proves it holds the token either with SCRAM (the token never crosses the wire) or, for tokens issued
before verifiers were stored, by sending it in cleartext inside TLS; both comparisons are constant time, and
every check after the proof (the grant is active, unexpired, provisioned) is one code path for both.
The upstream role's password is derived from amber's secret key and the grant id, so it is never stored
and never shown to anyone. What this does NOT check: the client's TLS certificate (tokens are the credential).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from amber.catalog.schema import PostgresLevel
from amber.core.clock import Clock, as_utc
from amber.core.crypto import constant_time_equal, derived_secret, hash_secret
from amber.core.db import UnitOfWork
from amber.gateway.scram import ScramVerifier, mock_verifier
from amber.gateway.server import AuthFailed, CleartextToken, GatewayGrant, LoginProof
from amber.gateway.statements import Masked, MaskedItems
from amber.grants.models import Grant
from amber.provisioners.postgres import IDLE_IN_TRANSACTION_TIMEOUT

log = logging.getLogger(__name__)


class GrantAuthenticator:
    def __init__(
        self,
        uow: UnitOfWork,
        clock: Clock,
        secret_key: bytes,
        masked_for: Callable[[str, str], Masked] | None = None,
        level_for: Callable[[str, str], PostgresLevel] | None = None,
    ) -> None:
        self._masked_for = masked_for
        self._level_for = level_for
        self._uow = uow
        self._clock = clock
        self._secret_key = secret_key
        self._expiry: dict[str, datetime] = {}
        self._ended: dict[str, str] = {}
        self._lock = threading.Lock()

    def scram_verifier(self, user: str) -> str | None:
        """The SCRAM verifier to challenge `user` with; None if its grant's token has only a hash (issued before
        amber stored verifiers), so the client must send it in cleartext. A grant that does not exist or has no
        gateway credential gets a made-up verifier: its exchange fails at the end, like a wrong token."""
        grant_id = _grant_id(user)
        with self._uow() as session:
            row = session.execute(
                select(Grant.gateway_scram_verifier, Grant.gateway_token_hash).where(Grant.id == grant_id)
            ).one_or_none()
        if row is not None and row.gateway_scram_verifier is not None:
            if _well_formed(row.gateway_scram_verifier):
                return str(row.gateway_scram_verifier)
            log.error("gateway: grant %s has a malformed SCRAM verifier; its logins will fail", grant_id)
        elif row is not None and row.gateway_token_hash is not None:
            return None
        return mock_verifier(self._secret_key, grant_id)

    def authenticate(self, user: str, proof: LoginProof) -> GatewayGrant:
        """The live grant `user` names, if `proof` shows its holder has the grant's current token; else AuthFailed.

        Only the proof check depends on how the client logged in; what follows it is the same for both.
        """
        with self._uow() as session:
            grant = session.scalar(select(Grant).where(Grant.id == _grant_id(user)))
            # NOTE: one answer for a grant that does not exist and a wrong token: a login never says which grants
            # exist. What the grant's state is (expired, revoked) is said only after the token is proved.
            if grant is None or grant.gateway_token_hash is None or not self._proves(grant, proof):
                raise AuthFailed(WRONG)
            name = _claimed_name(user)
            if name is not None and name.casefold() != grant.grantee_name.casefold():
                raise AuthFailed(f"grant {grant.id} does not belong to {name[:64]!r}")
            return self._live(grant)

    def _proves(self, grant: Grant, proof: LoginProof) -> bool:
        if isinstance(proof, CleartextToken):
            return grant.gateway_token_hash is not None and constant_time_equal(
                hash_secret(proof.token, self._secret_key), grant.gateway_token_hash
            )
        return grant.gateway_scram_verifier is not None and proof.proves(grant.gateway_scram_verifier)

    def _live(self, grant: Grant) -> GatewayGrant:
        """The grant as the gateway needs it, if it may be used now; else AuthFailed saying why not."""
        now = self._clock.now()
        if grant.status != "active":
            raise AuthFailed(f"grant {grant.id} is {grant.status}")
        if as_utc(grant.expires_at) <= now:
            raise AuthFailed(f"grant {grant.id} expired")
        if grant.connect_host is None or grant.connect_port is None or grant.connect_database is None:
            raise AuthFailed(f"grant {grant.id} is not provisioned yet")
        with self._lock:
            self._expiry[grant.id] = as_utc(grant.expires_at)
            if len(self._expiry) > _REMEMBER:  # forget grants long expired (their sessions were cut at expiry)
                for gid in [gid for gid, at in self._expiry.items() if at < now - timedelta(hours=1)]:
                    del self._expiry[gid]
        return GatewayGrant(
            grant_id=grant.id,
            role_name=grant.role_name,
            grantee_issuer=grant.grantee_issuer,
            grantee_subject=grant.grantee_subject,
            grantee_name=grant.grantee_name,
            resource=grant.resource,
            expires_at=as_utc(grant.expires_at),
            host=grant.connect_host,
            port=grant.connect_port,
            database=grant.connect_database,
            upstream_password=derived_secret(self._secret_key, "upstream", grant.id),
            token_hash=grant.gateway_token_hash or "",
            masked=self._masked(grant.resource, grant.level),
            **self._limits(grant.resource, grant.level),
        )

    def _limits(self, resource: str, level: str) -> dict[str, Any]:
        """The level's schemas and timeouts, as the judge holds a session to them (GatewayGrant's defaults, the
        strictest, when amber runs without a catalog)."""
        if self._level_for is None:
            return {}
        spec = self._level_for(resource, level)
        return {
            "schemas": tuple(spec.schemas),
            "statement_timeout_ms": int(spec.statement_timeout / timedelta(milliseconds=1)),
            "idle_in_transaction_timeout_ms": int(IDLE_IN_TRANSACTION_TIMEOUT / timedelta(milliseconds=1)),
        }

    def _masked(self, resource: str, level: str) -> MaskedItems:
        if self._masked_for is None:
            return ()
        return tuple(sorted(self._masked_for(resource, level).items()))

    def still_live(self, grant_id: str) -> str | None:
        with self._lock:
            if grant_id in self._ended:
                return self._ended[grant_id]
            expires_at = self._expiry.get(grant_id)
        if expires_at is not None and self._clock.now() >= expires_at:
            return f"expired at {expires_at.strftime('%Y-%m-%d %H:%M:%S')} UTC"
        return None

    def mark_ended(self, grant_id: str, reason: str) -> None:
        with self._lock:
            self._ended[grant_id] = reason
            # Its sessions are cut now and new logins are refused by its status, so only recent ends matter.
            while len(self._ended) > _REMEMBER:
                del self._ended[next(iter(self._ended))]


WRONG = "wrong grant or token"
_REMEMBER = 10_000  # grants whose expiry / end the authenticator keeps in memory before forgetting old ones


def _claimed_name(user: str) -> str | None:
    """The person a `name@grant` user name claims to be (checked against the grantee), if it names one."""
    name, at, _ = user.rpartition("@")
    return name.strip() if at and name.strip() else None


def _grant_id(user: str) -> str:
    """The grant id in a user name: the part after the last `@`, if there is one."""
    return user.rsplit("@", 1)[-1].strip()


def _well_formed(verifier: str) -> bool:
    try:
        ScramVerifier.parse(verifier)
    except ValueError:
        return False
    return True
