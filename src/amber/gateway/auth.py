"""Who may use the gateway: the grant id as user name, the amber gateway token as password.

The token is shown once and stored only as an HMAC-SHA-256 hash on the grant; the comparison is constant
time. The upstream role's password is derived from amber's secret key and the grant id, so it is never stored
and never shown to anyone. What this does NOT check: the client's TLS certificate (tokens are the credential).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import select

from amber.core.clock import Clock, as_utc
from amber.core.crypto import constant_time_equal, derived_secret, hash_secret
from amber.core.db import UnitOfWork
from amber.gateway.server import AuthFailed, GatewayGrant
from amber.grants.models import Grant


class GrantAuthenticator:
    def __init__(
        self,
        uow: UnitOfWork,
        clock: Clock,
        secret_key: bytes,
        masked_for: Callable[[str, str], dict[str, list[str]]] | None = None,
    ) -> None:
        self._masked_for = masked_for
        self._uow = uow
        self._clock = clock
        self._secret_key = secret_key
        self._expiry: dict[str, datetime] = {}
        self._ended: dict[str, str] = {}
        self._lock = threading.Lock()

    def authenticate(self, user: str, token: str) -> GatewayGrant:
        grant_id = user.rsplit("@", 1)[-1].strip()
        with self._uow() as session:
            grant = session.scalar(select(Grant).where(Grant.id == grant_id))
            if grant is None or grant.gateway_token_hash is None:
                raise AuthFailed("no such grant, or it has no gateway credential")
            if not constant_time_equal(hash_secret(token, self._secret_key), grant.gateway_token_hash):
                raise AuthFailed("wrong token")
            now = self._clock.now()
            if grant.status != "active":
                raise AuthFailed(f"grant {grant.id} is {grant.status}")
            if as_utc(grant.expires_at) <= now:
                raise AuthFailed(f"grant {grant.id} expired")
            if grant.connect_host is None or grant.connect_port is None or grant.connect_database is None:
                raise AuthFailed(f"grant {grant.id} is not provisioned yet")
            with self._lock:
                self._expiry[grant.id] = as_utc(grant.expires_at)
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
                masked=self._masked(grant.resource, grant.level),
            )

    def _masked(self, resource: str, level: str) -> tuple[tuple[str, frozenset[str]], ...]:
        if self._masked_for is None:
            return ()
        masked = self._masked_for(resource, level)
        return tuple(sorted((table, frozenset(columns)) for table, columns in masked.items()))

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
