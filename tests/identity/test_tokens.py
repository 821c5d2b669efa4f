"""Token verification: everything that must be rejected is rejected, with a reason."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from amber.core.clock import FrozenClock
from amber.core.errors import NotAuthenticated
from amber.identity import DevIssuer, TokenVerifier

ISSUER = "http://amber.test/dev-issuer"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))


@pytest.fixture
def issuer(tmp_path: Path, clock: FrozenClock) -> DevIssuer:
    return DevIssuer(tmp_path, ISSUER, clock)


@pytest.fixture
def verifier(issuer: DevIssuer, clock: FrozenClock) -> TokenVerifier:
    return TokenVerifier([issuer.trusted_issuer()], clock)


def _claims(clock: FrozenClock, **override: object) -> dict[str, object]:
    now = int(clock.now().timestamp())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": "amber",
        "sub": "dev:alice",
        "iat": now,
        "exp": now + 600,
        "groups": ["engineering"],
        "preferred_username": "alice",
    }
    claims.update(override)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(issuer: DevIssuer, claims: dict[str, object]) -> str:
    return jwt.encode(claims, issuer._key, algorithm="EdDSA", headers={"kid": issuer.kid})


def test_valid_token_gives_principal(issuer: DevIssuer, verifier: TokenVerifier) -> None:
    principal = verifier.verify(issuer.mint("alice", ["engineering", "oncall"]))
    assert principal.issuer == ISSUER
    assert principal.subject == "dev:alice"
    assert principal.name == "alice"
    assert principal.groups == frozenset({"engineering", "oncall"})


def test_key_survives_restart(tmp_path: Path, clock: FrozenClock) -> None:
    first = DevIssuer(tmp_path, ISSUER, clock)
    second = DevIssuer(tmp_path, ISSUER, clock)
    assert first.kid == second.kid
    assert (tmp_path / "dev-issuer-ed25519.pem").stat().st_mode & 0o777 == 0o600
    TokenVerifier([second.trusted_issuer()], clock).verify(first.mint("a", []))


def test_expired_token_rejected_by_injected_clock(
    issuer: DevIssuer, verifier: TokenVerifier, clock: FrozenClock
) -> None:
    token = issuer.mint("alice", [], ttl=timedelta(minutes=5))
    clock.advance(timedelta(minutes=6))
    with pytest.raises(NotAuthenticated, match="expired"):
        verifier.verify(token)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"aud": "someone-else"}, "wrong audience"),
        ({"iss": "http://evil.test"}, "issuer is not trusted"),
        ({"iat": 2_000_000_000}, "issued in the future"),
        ({"nbf": 2_000_000_000}, "not valid yet"),
        ({"sub": None}, "sub"),
        ({"exp": None}, "exp"),
        ({"groups": "admins"}, "not a list of strings"),
    ],
)
def test_bad_claims_rejected(
    issuer: DevIssuer, verifier: TokenVerifier, clock: FrozenClock, override: dict[str, object], message: str
) -> None:
    with pytest.raises(NotAuthenticated, match=message):
        verifier.verify(_sign(issuer, _claims(clock, **override)))


def test_forged_signature_rejected(issuer: DevIssuer, verifier: TokenVerifier, clock: FrozenClock) -> None:
    other = Ed25519PrivateKey.generate()
    token = jwt.encode(_claims(clock), other, algorithm="EdDSA", headers={"kid": issuer.kid})
    with pytest.raises(NotAuthenticated, match="signature"):
        verifier.verify(token)


def test_alg_none_rejected(verifier: TokenVerifier, clock: FrozenClock) -> None:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    token = f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(_claims(clock)).encode())}."
    with pytest.raises(NotAuthenticated, match="algorithm 'none' is not allowed"):
        verifier.verify(token)


def test_hmac_signed_with_the_public_key_rejected(
    issuer: DevIssuer, verifier: TokenVerifier, clock: FrozenClock
) -> None:
    public_pem = issuer._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    token = jwt.encode(_claims(clock), public_pem.hex(), algorithm="HS256", headers={"kid": issuer.kid})
    with pytest.raises(NotAuthenticated, match="algorithm 'HS256' is not allowed"):
        verifier.verify(token)


def test_unknown_kid_rejected(issuer: DevIssuer, verifier: TokenVerifier, clock: FrozenClock) -> None:
    token = jwt.encode(_claims(clock), issuer._key, algorithm="EdDSA", headers={"kid": "other"})
    with pytest.raises(NotAuthenticated, match="key the issuer does not publish"):
        verifier.verify(token)


def test_hmac_issuer_configuration_refused(issuer: DevIssuer, clock: FrozenClock) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="never accepted"):
        TokenVerifier([replace(issuer.trusted_issuer(), algorithms=("HS256",))], clock)
