"""Bearer-token verification: the one path every API call's identity goes through, dev issuer included.

Claims table (deny by default; every claim amber relies on is checked or deliberately unchecked):

| claim | check |
|---|---|
| header `alg` | must be in the issuer's allow-list; never `none`, never HMAC (no shared secrets) |
| header `kid` | selects the key from the issuer's JWKS; unknown kid -> JWKS refreshed once, then reject |
| signature | verified with the issuer's public key |
| `iss` | must equal a configured issuer exactly (also used to pick the configuration) |
| `aud` | must contain the configured audience |
| `exp` | required; now < exp + skew (injected clock) |
| `nbf` | optional; now >= nbf - skew |
| `iat` | required; iat <= now + skew |
| `sub` | required, non-empty string |
| name claim | optional display name (defaults to `sub`); informational only, never used for authorization |
| groups claim | optional list of strings; fed to policy at the time of each action |
| `email` | unchecked, informational only |
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from amber.core.clock import Clock
from amber.core.errors import NotAuthenticated
from amber.identity.principals import Principal

_HMAC = {"HS256", "HS384", "HS512"}


class KeySource:
    """Where an issuer's public keys come from. `refresh` may be rate-limited by the implementation."""

    def get(self, kid: str | None) -> PyJWK | None:
        raise NotImplementedError

    def refresh(self) -> None:
        raise NotImplementedError


class StaticKeys(KeySource):
    """A JWKS held in memory (the development issuer's own keys)."""

    def __init__(self, jwks: Callable[[], dict[str, Any]]) -> None:
        self._jwks = jwks

    def get(self, kid: str | None) -> PyJWK | None:
        return _pick(PyJWKSet.from_dict(self._jwks()), kid)

    def refresh(self) -> None:
        return None


class RemoteKeys(KeySource):
    """A JWKS fetched over HTTP, cached, refreshed on an unknown kid at most once per `min_refresh_s`.

    Without a `jwks_uri`, the issuer's OpenID discovery document names it. What this does NOT check: TLS
    policy beyond httpx's defaults (use https issuers in production).
    """

    def __init__(
        self, issuer: str, jwks_uri: str | None = None, *, min_refresh_s: float = 30.0, timeout_s: float = 5.0
    ) -> None:
        self._issuer = issuer.rstrip("/")
        self._uri = jwks_uri
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._keys: PyJWKSet | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def get(self, kid: str | None) -> PyJWK | None:
        with self._lock:
            if self._keys is None:
                self._fetch()
            return _pick(self._keys, kid) if self._keys is not None else None

    def refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._fetched_at >= self._min_refresh_s:
                self._fetch()

    def _fetch(self) -> None:
        try:
            if self._uri is None:
                discovery = self._get_json(f"{self._issuer}/.well-known/openid-configuration")
                if discovery.get("issuer", "").rstrip("/") != self._issuer or "jwks_uri" not in discovery:
                    raise NotAuthenticated("the identity provider's discovery document does not match its issuer")
                self._uri = str(discovery["jwks_uri"])
            self._keys = PyJWKSet.from_dict(self._get_json(self._uri))
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            raise NotAuthenticated(f"cannot fetch the identity provider's keys: {type(exc).__name__}") from None
        self._fetched_at = time.monotonic()

    def _get_json(self, url: str) -> dict[str, Any]:
        response = httpx.get(url, timeout=self._timeout_s)
        response.raise_for_status()
        value = response.json()
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004 - handled with the other bad-response errors
        return value


def _pick(keys: PyJWKSet, kid: str | None) -> PyJWK | None:
    for key in keys.keys:
        if kid is None or key.key_id == kid:
            return key
    return None


@dataclass(frozen=True)
class TrustedIssuer:
    issuer: str
    audience: str
    keys: KeySource
    algorithms: tuple[str, ...]
    groups_claim: str = "groups"
    name_claim: str = "preferred_username"


class TokenVerifier:
    def __init__(self, issuers: list[TrustedIssuer], clock: Clock, *, skew: timedelta = timedelta(seconds=30)):
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self._clock = clock
        self._skew = skew.total_seconds()
        for issuer in issuers:
            bad = set(issuer.algorithms) & (_HMAC | {"none"})
            if bad:
                raise ValueError(f"issuer {issuer.issuer}: algorithms {sorted(bad)} are never accepted")

    def verify(self, token: str) -> Principal:
        """Verify a bearer token and return who it names. Raises NotAuthenticated with a reason otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            # Only to choose which issuer's keys to verify with; `iss` is verified below.
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise NotAuthenticated("the bearer token is not a well-formed JWT") from None
        issuer = self._issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            raise NotAuthenticated("the token's issuer is not trusted by this amber")
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise NotAuthenticated(f"token algorithm {alg!r} is not allowed for this issuer")
        kid = header.get("kid")
        key = issuer.keys.get(kid)
        if key is None:
            issuer.keys.refresh()
            key = issuer.keys.get(kid)
        if key is None:
            raise NotAuthenticated("the token was signed with a key the issuer does not publish")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.issuer,
                # Time claims are checked below against amber's injected clock.
                options={
                    "require": ["iss", "aud", "sub", "exp", "iat"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise NotAuthenticated("the token is not meant for amber (wrong audience)") from None
        except jwt.InvalidSignatureError:
            raise NotAuthenticated("the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise NotAuthenticated(f"the token was rejected: {exc}") from None
        self._check_times(claims)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise NotAuthenticated("the token has no subject")
        groups = claims.get(issuer.groups_claim, [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise NotAuthenticated(f"the token's {issuer.groups_claim!r} claim is not a list of strings")
        name = claims.get(issuer.name_claim) or subject
        email = claims.get("email")
        return Principal(
            issuer=issuer.issuer,
            subject=subject,
            name=str(name),
            groups=frozenset(groups),
            email=str(email) if email else None,
        )

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self._clock.now().timestamp()
        for claim in ("exp", "iat", "nbf"):
            if claim in claims and not isinstance(claims[claim], int | float):
                raise NotAuthenticated(f"the token's {claim!r} claim is not a number")
        if now >= claims["exp"] + self._skew:
            raise NotAuthenticated("the token has expired; sign in again (amber login)")
        if claims["iat"] > now + self._skew:
            raise NotAuthenticated("the token was issued in the future")
        if "nbf" in claims and now < claims["nbf"] - self._skew:
            raise NotAuthenticated("the token is not valid yet")
