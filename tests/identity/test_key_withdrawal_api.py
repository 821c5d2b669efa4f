"""Key rotation and withdrawal seen through amber's API, with `jwks_max_age` from the catalog: a real provider
rotates to a new key (followed at its first token) and withdraws the old one (refused once the cached JWKS is
`jwks_max_age` old on amber's injected clock, still accepted before)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from fastapi.testclient import TestClient

from amber.api.app import create_app
from amber.core.clock import FrozenClock
from tests.conftest import build_runtime
from tests.identity.conftest import provider_catalog, write_catalog
from tests.identity.oidc import WEB_SECRET, OidcProvider


def test_rotation_and_withdrawal_through_the_api(
    own_provider: OidcProvider,
    state_url: str,
    tmp_path: Path,
    clock: FrozenClock,
    target_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMBER_TEST_OIDC_SECRET", WEB_SECRET)
    text = provider_catalog(own_provider.issuer).replace(
        "      algorithms: [RS256]\n", "      algorithms: [RS256]\n      jwks_max_age: 1m\n", 1
    )
    rt = build_runtime(state_url, write_catalog(tmp_path, text), tmp_path, clock)
    old_key = jwt.PyJWK(own_provider.keys[0]).key

    def me(token: str) -> tuple[int, str]:
        response = api.get("/v1/me", headers={"authorization": f"Bearer {token}"})
        return response.status_code, response.json().get("detail", response.json().get("sub", ""))

    def signed_with_old_key() -> str:
        now = int(clock.now().timestamp())
        claims = {**old_claims, "iat": now, "exp": now + 300}
        return jwt.encode(claims, old_key, algorithm="RS256", headers={"kid": "key-1", "typ": "at+jwt"})

    try:
        with TestClient(create_app(rt, run_worker=False)) as api:
            first = own_provider.access_token("alice")
            old_claims = jwt.decode(first, options={"verify_signature": False})
            assert me(first)[0] == 200

            own_provider.rotate(keep_old=True)
            clock.advance(timedelta(seconds=31))  # past jwks_min_refresh (30 s): the unknown kid refetches
            rotated = own_provider.access_token("alice")
            assert me(rotated)[0] == 200

            own_provider.withdraw("key-1")
            clock.advance(timedelta(seconds=59))  # 59 s after the last fetch: the cached set still has key-1
            assert me(signed_with_old_key())[0] == 200
            clock.advance(timedelta(seconds=1))  # 1 min: fetched again, key-1 is gone
            status, detail = me(signed_with_old_key())
            assert (status, detail) == (401, "the token was signed with a key the issuer does not publish")
            assert me(rotated)[0] == 200
    finally:
        rt.close()
