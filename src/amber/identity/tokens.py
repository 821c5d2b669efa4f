"""Bearer-token verification: the one path every identity goes through (API tokens, web sign-in ID tokens, the
dev issuer's tokens). It owns the claims table below and protects guarantee 3: amber never trusts a
self-asserted identity.

Claims table (deny by default; every claim amber relies on is checked or deliberately unchecked):

| claim | check |
|---|---|
| header `alg` | must be in the issuer's allow-list; never `none`, never HMAC (no shared secrets) |
| header `kid` | selects the key from the JWKS, refetched when `jwks_max_age` old (a withdrawn key is then refused) |
|  | and when the kid is unknown (rate-limited), then reject |
| key type | the JWK's `kty` (and `alg`, if it names one) must fit the header `alg`: no key used for another family |
| signature | verified with the issuer's public key |
| `iss` | must equal a configured issuer exactly (also used to pick the configuration) |
| `aud` | must contain the configured audience (API tokens) or the client id (ID tokens at web sign-in) |
| `azp` | ID tokens with several audiences: must be the client id; otherwise unchecked |
| `exp` | required; now < exp + skew (injected clock) |
| `nbf` | optional; now >= nbf - skew |
| `iat` | required; iat <= now + skew |
| subject claim | `sub` by default (`subject_claim`); required, non-empty string; with `iss` it is the identity |
| `nonce` | ID tokens at web sign-in: must equal the nonce amber sent (constant time) |
| name claim | optional display name (defaults to the subject); informational only, never used for authorization |
| groups claim | optional list of strings, mapped by `group_map`; fed to policy and roles at each action |
| email claim | optional string; informational (and for matching SCIM users), never used for authorization |
| header `typ` | API tokens: must be `at+jwt` (RFC 9068; `application/` prefix and case ignored) or in the issuer's |
|  | `token_types` allow-list; without either (outside production only) any typ, warned once per issuer |
|  | ID tokens at web sign-in: unchecked (providers send `JWT`) |
| `nonce`, `at_hash`, `c_hash` | API tokens: refused when present (only ID tokens carry them: an ID token is never |
|  | taken for an access token, whatever its typ) |
| `jti`, `scope`, `client_id`, `auth_time`, `acr`, `amr` | unchecked: amber does not rely on them |
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import jwt
from jwt import PyJWK, PyJWKSet

from amber.core.clock import Clock, SystemClock
from amber.core.errors import NotAuthenticated
from amber.identity.principals import Principal

log = logging.getLogger("amber.identity")

_HMAC = {"HS256", "HS384", "HS512"}
ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a JOSE media type, not a secret
# Claims only ID tokens carry (OpenID Connect Core 1.0, 2 and 3.3.2.11): an API token with one is refused.
ID_TOKEN_CLAIMS = ("nonce", "at_hash", "c_hash")


def token_type(typ: str) -> str:
    """A JOSE `typ` as compared: case-insensitive, `application/` optional (RFC 7515, 4.1.9)."""
    return typ.lower().removeprefix("application/")


_KTY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def key_type_for(alg: str) -> str | None:
    return _KTY.get(alg[:2])


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


class Discovery:
    """An issuer's OpenID discovery document, fetched once and cached (endpoints change rarely).

    What this does NOT check: TLS policy beyond httpx's defaults (use https issuers in production). It does
    check that the document names the issuer it was fetched for (OpenID Connect Discovery 1.0, section 4.3).
    """

    def __init__(self, issuer: str, *, timeout_s: float = 5.0) -> None:
        self.issuer = issuer.rstrip("/")
        self._timeout_s = timeout_s
        self._doc: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def document(self) -> dict[str, Any]:
        with self._lock:
            if self._doc is None:
                try:
                    doc = get_json(f"{self.issuer}/.well-known/openid-configuration", self._timeout_s)
                except (httpx.HTTPError, ValueError) as exc:
                    raise NotAuthenticated(
                        f"cannot fetch the identity provider's discovery document: {type(exc).__name__}"
                    ) from None
                if str(doc.get("issuer", "")).rstrip("/") != self.issuer:
                    raise NotAuthenticated("the identity provider's discovery document does not match its issuer")
                self._doc = doc
            return self._doc

    def endpoint(self, name: str) -> str | None:
        value = self.document().get(name)
        return str(value) if value else None


class RemoteKeys(KeySource):
    """A JWKS fetched over HTTP and cached, with time from the injected clock.

    - An unknown kid refetches it, at most once per `min_refresh` (a flood of tokens with made-up kids costs
      one fetch per window).
    - The cached set is trusted for at most `max_age` (catalog `jwks_max_age`, default 5 minutes): the first
      verification after that fetches it again, and a key absent from the fresh set is refused. So a key the
      provider withdrew stops verifying within `max_age`; until then the cached copy still verifies it.
    - A failed fetch fails closed: once the set is older than `max_age` and cannot be fetched again, every
      token of this issuer is refused (there is no grace period). A failed fetch is retried at most once per
      `min_refresh`, so an unreachable provider does not make every request wait for a timeout.

    Without a `jwks_uri`, the issuer's OpenID discovery document names it.
    """

    def __init__(
        self,
        issuer: str,
        jwks_uri: str | None = None,
        *,
        min_refresh_s: float = 30.0,
        max_age_s: float = 300.0,
        timeout_s: float = 5.0,
        clock: Clock | None = None,
        discovery: Discovery | None = None,
    ) -> None:
        self._discovery = discovery or Discovery(issuer, timeout_s=timeout_s)
        self._uri = jwks_uri
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._clock: Clock = clock or SystemClock()
        self._keys: PyJWKSet | None = None
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._failure = ""
        self._lock = threading.Lock()
        self.fetches = 0

    @property
    def max_age_s(self) -> float:
        return self._max_age_s

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def get(self, kid: str | None) -> PyJWK | None:
        with self._lock:
            if self._keys is None or self._fetched_at is None or self._now() - self._fetched_at >= self._max_age_s:
                # Too old to trust: drop it first, so a failed refetch leaves nothing that still verifies.
                self._keys = None
                if self._failed_at is not None and self._now() - self._failed_at < self._min_refresh_s:
                    raise NotAuthenticated(
                        f"cannot fetch the identity provider's keys ({self._failure}); tokens of this issuer are "
                        "refused until a fetch succeeds"
                    )
                self._fetch()
            return _pick(self._keys, kid) if self._keys is not None else None

    def refresh(self) -> None:
        with self._lock:
            last = max(self._fetched_at or float("-inf"), self._failed_at or float("-inf"))
            if self._now() - last >= self._min_refresh_s:
                self._fetch()

    def _fetch(self) -> None:
        self.fetches += 1
        try:
            keys = PyJWKSet.from_dict(get_json(self._jwks_uri(), self._timeout_s))
        except (httpx.HTTPError, ValueError, jwt.PyJWTError, NotAuthenticated) as exc:
            self._failed_at = self._now()
            self._failure = exc.message if isinstance(exc, NotAuthenticated) else type(exc).__name__
            raise NotAuthenticated(f"cannot fetch the identity provider's keys: {self._failure}") from None
        self._keys = keys
        self._fetched_at = self._now()
        self._failed_at = None

    def _jwks_uri(self) -> str:
        if self._uri is None:
            uri = self._discovery.endpoint("jwks_uri")
            if uri is None:
                raise NotAuthenticated("the identity provider's discovery document names no jwks_uri")
            self._uri = uri
        return self._uri


def get_json(url: str, timeout_s: float) -> dict[str, Any]:
    response = httpx.get(url, timeout=timeout_s, headers={"accept": "application/json"})
    response.raise_for_status()
    value = response.json()
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - handled with the other bad-response errors
    return value


def _pick(keys: PyJWKSet, kid: str | None) -> PyJWK | None:
    for key in keys.keys:
        if key.public_key_use not in (None, "sig"):
            continue
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
    email_claim: str = "email"
    subject_claim: str = "sub"
    group_map: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    # The header `typ` values API tokens must carry (compared with `token_type`); None accepts any, with a
    # warning once (outside production only: amber.api.runtime sets ("at+jwt",) there unless configured).
    token_types: tuple[str, ...] | None = None


class TokenVerifier:
    def __init__(self, issuers: list[TrustedIssuer], clock: Clock, *, skew: timedelta = timedelta(seconds=30)):
        self._issuers = {issuer.issuer: issuer for issuer in issuers}
        self._warned: set[str] = set()
        self._clock = clock
        self._skew = skew.total_seconds()
        for issuer in issuers:
            bad = set(issuer.algorithms) & (_HMAC | {"none"})
            if bad:
                raise ValueError(f"issuer {issuer.issuer}: algorithms {sorted(bad)} are never accepted")
            unknown = {alg for alg in issuer.algorithms if key_type_for(alg) is None}
            if unknown:
                raise ValueError(f"issuer {issuer.issuer}: unknown algorithms {sorted(unknown)}")

    def issuer(self, url: str) -> TrustedIssuer | None:
        return self._issuers.get(url)

    def verify(self, token: str, *, audience: str | None = None, nonce: str | None = None) -> Principal:
        """Verify a JWT and return who it names, or raise NotAuthenticated with the reason.

        `audience` replaces the issuer's API audience (web sign-in checks ID tokens against the client id);
        `nonce`, when given, must match the token's. What this does NOT check: whether the person is still
        active at the provider (SCIM deactivation is checked by the caller, amber.api.auth), `jti` replay,
        or scopes; see the claims table above.
        """
        try:
            header = jwt.get_unverified_header(token)
            # Only to choose which issuer's keys to verify with; `iss` is verified below.
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise NotAuthenticated("the bearer token is not a well-formed JWT") from None
        issuer = self._issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            raise NotAuthenticated("the token's issuer is not trusted by this amber")
        if audience is None:
            self._check_token_type(issuer, header.get("typ"))
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise NotAuthenticated(f"token algorithm {alg!r} is not allowed for this issuer")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise NotAuthenticated("the token's key id is not a string")
        key = issuer.keys.get(kid)
        if key is None:
            issuer.keys.refresh()
            key = issuer.keys.get(kid)
        if key is None:
            raise NotAuthenticated("the token was signed with a key the issuer does not publish")
        if key.key_type != key_type_for(alg) or (key.algorithm_name and key.algorithm_name != alg):
            raise NotAuthenticated(f"the issuer's key {kid!r} is not a {alg} key")
        expected_audience = audience or issuer.audience
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=expected_audience,
                issuer=issuer.issuer,
                # Time claims are checked below against amber's injected clock.
                options={
                    "require": ["iss", "aud", "exp", "iat"],
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
        if audience is not None:
            self._check_id_token(claims, audience, nonce)
        else:
            found = [claim for claim in ID_TOKEN_CLAIMS if claim in claims]
            if found:
                raise NotAuthenticated(
                    f"an ID token is not an access token (it carries {', '.join(found)}); send the access token"
                )
        return self._principal(issuer, claims)

    def _check_token_type(self, issuer: TrustedIssuer, typ: object) -> None:
        """API tokens only: the header `typ` must be one the issuer's access tokens carry."""
        got = token_type(typ) if isinstance(typ, str) else None
        if issuer.token_types is None:
            if got != ACCESS_TOKEN_TYPE and issuer.issuer not in self._warned:
                self._warned.add(issuer.issuer)
                log.warning(
                    "identity: issuer %s sent an access token with typ %.40r, not at+jwt (RFC 9068); accepted outside "
                    "production only: list it in identity.issuers[].token_types to accept it there",
                    issuer.name or issuer.issuer,
                    typ,
                )
            return
        if got is None or got not in issuer.token_types:
            shown = repr(typ)[:40] if typ is not None else "none"
            raise NotAuthenticated(
                f"the token's type (header typ {shown}) is not one this issuer's access tokens are accepted with "
                f"({', '.join(issuer.token_types)}); an ID token is not an access token"
            )

    def _check_id_token(self, claims: dict[str, Any], client_id: str, nonce: str | None) -> None:
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
            raise NotAuthenticated("the ID token has several audiences and was not issued to amber (azp)")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got.encode(), nonce.encode()):
                raise NotAuthenticated("the ID token's nonce does not match this sign-in")

    def _principal(self, issuer: TrustedIssuer, claims: dict[str, Any]) -> Principal:
        subject = claims.get(issuer.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise NotAuthenticated(f"the token has no subject ({issuer.subject_claim!r} claim)")
        groups = claims.get(issuer.groups_claim, [])
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise NotAuthenticated(f"the token's {issuer.groups_claim!r} claim is not a list of strings")
        name = claims.get(issuer.name_claim) or subject
        email = claims.get(issuer.email_claim)
        return Principal(
            issuer=issuer.issuer,
            subject=subject,
            name=str(name),
            groups=frozenset(issuer.group_map.get(g, g) for g in groups),
            email=email if isinstance(email, str) and email else None,
        )

    def _check_times(self, claims: dict[str, Any]) -> None:
        now = self._clock.now().timestamp()
        for claim in ("exp", "iat", "nbf"):
            if claim in claims and (isinstance(claims[claim], bool) or not isinstance(claims[claim], int | float)):
                raise NotAuthenticated(f"the token's {claim!r} claim is not a number")
        if now >= claims["exp"] + self._skew:
            raise NotAuthenticated("the token has expired; sign in again (amber login)")
        if claims["iat"] > now + self._skew:
            raise NotAuthenticated("the token was issued in the future")
        if "nbf" in claims and now < claims["nbf"] - self._skew:
            raise NotAuthenticated("the token is not valid yet")
