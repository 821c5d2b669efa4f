"""Token checks against a real OpenID provider (panva/oidc-provider on loopback): what it issues verifies, and
everything the issue lists as hostile is refused with a reason.

The verifier finds the provider by discovery and its keys by JWKS over HTTP, exactly as in production. Time
moves on amber's FrozenClock, never by sleeping.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from amber.core.clock import FrozenClock
from amber.core.errors import NotAuthenticated
from amber.identity import RemoteKeys, TokenVerifier, TrustedIssuer
from tests.conftest import free_port
from tests.identity.oidc import API_RESOURCE, OTHER_RESOURCE, OidcProvider


def verifier_for(provider: OidcProvider, clock: FrozenClock, **kwargs: object) -> tuple[TokenVerifier, RemoteKeys]:
    keys = RemoteKeys(provider.issuer, clock=clock, min_refresh_s=30, max_age_s=300)
    trusted = TrustedIssuer(
        issuer=provider.issuer,
        audience=API_RESOURCE,
        keys=keys,
        algorithms=("RS256",),
        **kwargs,  # type: ignore[arg-type]
    )
    return TokenVerifier([trusted], clock, skew=timedelta(seconds=30)), keys


@pytest.fixture
def now_clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _parts(token: str) -> tuple[dict[str, object], dict[str, object], str]:
    header, payload, signature = token.split(".")
    pad = "=="
    return (
        json.loads(base64.urlsafe_b64decode(header + pad)),
        json.loads(base64.urlsafe_b64decode(payload + pad)),
        signature,
    )


def test_provider_token_verifies_with_issuer_subject_and_groups(provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, _ = verifier_for(provider, now_clock)
    principal = verifier.verify(provider.access_token("alice"))
    assert (principal.issuer, principal.subject, principal.name) == (provider.issuer, "alice", "alice")
    assert principal.groups == {"engineering", "oncall"}
    assert principal.email == "alice@example.test"


def test_group_map_turns_provider_groups_into_amber_groups(provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, _ = verifier_for(provider, now_clock, group_map={"oncall": "pager"})
    assert verifier.verify(provider.access_token("alice")).groups == {"engineering", "pager"}


def test_expired_token_refused(provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, _ = verifier_for(provider, now_clock)
    token = provider.access_token("bob")
    now_clock.advance(timedelta(seconds=600 + 29))  # within the 30 s skew
    verifier.verify(token)
    now_clock.advance(timedelta(seconds=2))
    with pytest.raises(NotAuthenticated, match="expired"):
        verifier.verify(token)


def test_wrong_audience_refused(provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, _ = verifier_for(provider, now_clock)
    with pytest.raises(NotAuthenticated, match="wrong audience"):
        verifier.verify(provider.access_token("alice", resource=OTHER_RESOURCE))


def test_id_token_is_not_an_api_token(provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, _ = verifier_for(provider, now_clock)
    id_token = provider.tokens("alice")["id_token"]
    with pytest.raises(NotAuthenticated, match="wrong audience"):
        verifier.verify(id_token)


def test_second_unconfigured_issuer_refused_even_with_the_same_keys(
    provider: OidcProvider, now_clock: FrozenClock, tmp_path: Path
) -> None:
    # Another real provider, signing with the very keys amber trusts, under another issuer name.
    other = OidcProvider(tmp_path, free_port(), keys=list(provider.keys))
    other.start()
    try:
        token = other.access_token("alice")
    finally:
        other.stop()
    verifier, _ = verifier_for(provider, now_clock)
    with pytest.raises(NotAuthenticated, match="issuer is not trusted"):
        verifier.verify(token)


def test_claimed_issuer_with_another_key_refused(
    provider: OidcProvider, now_clock: FrozenClock, tmp_path: Path
) -> None:
    # A stranger's provider claims to be amber's issuer: its kid is unknown there, and the JWKS says so.
    impostor = OidcProvider(tmp_path, free_port())
    impostor.start()
    try:
        token = impostor.access_token("alice")
    finally:
        impostor.stop()
    _, claims, _ = _parts(token)
    claims["iss"] = provider.issuer
    key = jwt.PyJWK(impostor.keys[0]).key
    forged = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "key-1", "typ": "at+jwt"})
    verifier, _ = verifier_for(provider, now_clock)
    with pytest.raises(NotAuthenticated, match="signature does not verify"):
        verifier.verify(forged)


def test_forged_signature_refused(provider: OidcProvider, now_clock: FrozenClock) -> None:
    token = provider.access_token("bob")
    _, claims, signature = _parts(token)
    claims["groups"] = ["engineering", "platform"]  # bob makes himself an admin
    payload = _b64(json.dumps(claims).encode())
    tampered = f"{token.split('.')[0]}.{payload}.{signature}"
    verifier, _ = verifier_for(provider, now_clock)
    with pytest.raises(NotAuthenticated, match="signature does not verify"):
        verifier.verify(tampered)


def test_alg_none_refused(provider: OidcProvider, now_clock: FrozenClock) -> None:
    _, claims, _ = _parts(provider.access_token("alice"))
    token = f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}."
    verifier, _ = verifier_for(provider, now_clock)
    with pytest.raises(NotAuthenticated, match="algorithm 'none' is not allowed"):
        verifier.verify(token)


def test_hs256_signed_with_the_providers_public_key_refused(provider: OidcProvider, now_clock: FrozenClock) -> None:
    _, claims, _ = _parts(provider.access_token("alice"))
    public = jwt.PyJWK(provider.keys[0]).key.public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # The classic key-confusion attack: an HMAC "signature" keyed with the public key everyone can fetch,
    # signed by hand (PyJWT itself refuses to build one).
    signing_input = f"{_b64(json.dumps({'alg': 'HS256', 'kid': 'key-1'}).encode())}.{_b64(json.dumps(claims).encode())}"
    token = f"{signing_input}.{_b64(hmac.new(pem, signing_input.encode(), hashlib.sha256).digest())}"
    verifier, _ = verifier_for(provider, now_clock)
    with pytest.raises(NotAuthenticated, match="algorithm 'HS256' is not allowed"):
        verifier.verify(token)


def test_key_rotation_at_the_provider(own_provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, keys = verifier_for(own_provider, now_clock)
    old_token = own_provider.access_token("alice")
    verifier.verify(old_token)
    assert keys.fetches == 1

    new_kid = own_provider.rotate(keep_old=True)
    new_token = own_provider.access_token("alice")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    # Within the refresh window an unknown kid is not fetched again (rate limit), so it is refused...
    with pytest.raises(NotAuthenticated, match="key the issuer does not publish"):
        verifier.verify(new_token)
    assert keys.fetches == 1
    # ...and once the window has passed, the unknown kid refreshes the JWKS and verifies.
    now_clock.advance(timedelta(seconds=31))
    assert verifier.verify(new_token).subject == "alice"
    assert verifier.verify(old_token).subject == "alice"  # the old key is still published
    assert keys.fetches == 2


def test_made_up_kids_cost_one_fetch_per_window(provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, keys = verifier_for(provider, now_clock)
    verifier.verify(provider.access_token("alice"))
    _, claims, _ = _parts(provider.access_token("alice"))
    key = jwt.PyJWK(provider.keys[0]).key
    now_clock.advance(timedelta(seconds=31))
    for _ in range(20):
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": secrets.token_hex(4)})
        with pytest.raises(NotAuthenticated, match="key the issuer does not publish"):
            verifier.verify(token)
    assert keys.fetches == 2


def test_withdrawn_key_stops_verifying_when_the_cache_ages(own_provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, keys = verifier_for(own_provider, now_clock)
    old_key = jwt.PyJWK(own_provider.keys[0]).key
    _, claims, _ = _parts(own_provider.access_token("alice"))
    own_provider.rotate(keep_old=False)
    now_clock.advance(timedelta(hours=1))
    now = int(now_clock.now().timestamp())
    claims.update(iat=now, exp=now + 600)
    token = jwt.encode(claims, old_key, algorithm="RS256", headers={"kid": "key-1"})
    with pytest.raises(NotAuthenticated, match="key the issuer does not publish"):
        verifier.verify(token)
    assert keys.fetches == 1  # the cache had aged out: one fetch, which no longer lists key-1


def _signed_now(claims: dict[str, object], key: object, kid: str, clock: FrozenClock) -> str:
    """A token with `claims`, issued at the clock's now, signed with a key the test holds."""
    now = int(clock.now().timestamp())
    return jwt.encode({**claims, "iat": now, "exp": now + 600}, key, algorithm="RS256", headers={"kid": kid})


def test_rotated_key_verifies_and_withdrawn_key_is_refused_within_max_age(
    own_provider: OidcProvider, now_clock: FrozenClock
) -> None:
    verifier, keys = verifier_for(own_provider, now_clock)  # jwks_min_refresh 30 s, jwks_max_age 5 min
    old_key = jwt.PyJWK(own_provider.keys[0]).key
    _, claims, _ = _parts(own_provider.access_token("alice"))
    assert verifier.verify(_signed_now(claims, old_key, "key-1", now_clock)).subject == "alice"
    assert keys.fetches == 1

    # Rotation: the provider adds key-2 and signs with it; its first token's unknown kid refetches the JWKS.
    new_kid = own_provider.rotate(keep_old=True)
    now_clock.advance(timedelta(seconds=31))
    new_token = own_provider.access_token("alice")
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert verifier.verify(new_token).subject == "alice"
    assert keys.fetches == 2

    # Withdrawal: the provider stops publishing key-1. Until the cached set is 5 minutes old it still
    # verifies key-1 (the stated window: at most jwks_max_age after the provider withdrew it)...
    own_provider.withdraw("key-1")
    now_clock.advance(timedelta(seconds=299))
    assert verifier.verify(_signed_now(claims, old_key, "key-1", now_clock)).subject == "alice"
    assert keys.fetches == 2
    # ...and once it is, the next verification fetches the set again and key-1 is refused.
    now_clock.advance(timedelta(seconds=1))
    with pytest.raises(NotAuthenticated, match="key the issuer does not publish"):
        verifier.verify(_signed_now(claims, old_key, "key-1", now_clock))
    assert keys.fetches == 3  # the max-age refetch; the unknown kid did not fetch again within 30 s
    assert verifier.verify(new_token).subject == "alice"  # the key the provider still publishes
    with pytest.raises(NotAuthenticated, match="key the issuer does not publish"):
        verifier.verify(_signed_now(claims, old_key, "key-1", now_clock))
    assert keys.fetches == 3


def test_aged_keys_that_cannot_be_fetched_again_fail_closed(own_provider: OidcProvider, now_clock: FrozenClock) -> None:
    verifier, keys = verifier_for(own_provider, now_clock)
    token = own_provider.access_token("alice")
    verifier.verify(token)
    own_provider.stop()
    now_clock.advance(timedelta(seconds=299))
    assert verifier.verify(token).subject == "alice"  # the cached set is younger than 5 minutes
    now_clock.advance(timedelta(seconds=1))
    with pytest.raises(NotAuthenticated, match="cannot fetch the identity provider's keys"):
        verifier.verify(token)
    assert keys.fetches == 2
    # No grace period, and no refetch before jwks_min_refresh: refused at once, without waiting on the network.
    now_clock.advance(timedelta(seconds=29))
    with pytest.raises(NotAuthenticated, match="refused until a fetch succeeds"):
        verifier.verify(token)
    assert keys.fetches == 2
    own_provider.start()  # back, same keys
    now_clock.advance(timedelta(seconds=1))
    assert verifier.verify(token).subject == "alice"
    assert keys.fetches == 3
