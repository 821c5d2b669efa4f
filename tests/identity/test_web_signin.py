"""Web sign-in end to end against the real provider, on both state stores, and groups -> roles on the API.

The browser is two real HTTP clients sharing the role: httpx at the provider (loopback), FastAPI's TestClient
at amber (which keeps amber's cookies). amber itself reaches the provider over loopback for discovery,
the token exchange and the JWKS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from fastapi.testclient import TestClient

from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.clock import FrozenClock
from amber.core.settings import Settings
from tests.conftest import Amber, build_runtime, drop_roles_tagged
from tests.identity.conftest import provider_catalog, write_catalog
from tests.identity.oidc import WEB_SECRET, OidcProvider


def sign_in(amber: Amber, provider: OidcProvider, user: str) -> httpx.Response:
    start = amber.api.get("/auth/login", params={"provider": "test", "return_to": "/v1/me"}, follow_redirects=False)
    assert start.status_code == 302, start.text
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        back = provider.sign_in(browser, start.headers["location"], user)
    callback = urlparse(back.headers["location"])
    assert callback.path == "/auth/callback"
    return amber.api.get(f"/auth/callback?{callback.query}", follow_redirects=False)


def test_authorization_code_flow_with_pkce_state_and_nonce(oidc_amber: Amber, provider: OidcProvider) -> None:
    start = oidc_amber.api.get("/auth/login", params={"provider": "test"}, follow_redirects=False)
    query = parse_qs(urlparse(start.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["code_challenge"][0]) == 43
    assert query["state"][0]
    assert query["nonce"][0]
    assert query["state"] != query["nonce"]
    cookie = start.headers["set-cookie"].lower()
    assert "amber_login=" in cookie
    assert "httponly" in cookie
    assert "samesite=lax" in cookie
    assert "secure" not in cookie  # plain-http local test set-up

    done = sign_in(oidc_amber, provider, "alice")
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/v1/me"
    session_cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith("amber_session="))
    lowered = session_cookie.lower()
    assert "httponly" in lowered
    assert "samesite=lax" in lowered
    assert "max-age=28800" in lowered

    me = oidc_amber.api.get("/v1/me")
    assert me.status_code == 200, me.text
    assert (me.json()["iss"], me.json()["sub"], me.json()["groups"]) == (
        provider.issuer,
        "alice",
        ["engineering", "oncall"],
    )


def test_cookie_session_acts_and_signs_out(oidc_amber: Amber, provider: OidcProvider) -> None:
    assert sign_in(oidc_amber, provider, "alice").status_code == 303
    body = {"resource": "orders-db", "level": "read-only", "reason": "INC-7 from the browser", "duration": "10m"}
    refused = oidc_amber.api.post("/v1/requests", json=body)
    assert refused.status_code == 403  # a cross-site form could not add X-Requested-With
    created = oidc_amber.api.post("/v1/requests", json=body, headers={"x-requested-with": "amber"})
    assert created.status_code == 201, created.text
    assert created.json()["requester"]["name"] == "alice"

    out = oidc_amber.api.post("/auth/logout")
    assert out.status_code == 200
    assert out.json()["signed_out"] is True
    assert out.json()["end_session_endpoint"].startswith(provider.issuer)
    oidc_amber.api.cookies.clear()
    # The old cookie value no longer works even if a browser kept it.
    stale = next(c for c in out.headers.get_list("set-cookie") if c.startswith("amber_session="))
    assert 'amber_session=""' in stale or "max-age=0" in stale.lower()


def test_session_cookie_is_dead_after_sign_out_on_the_server(oidc_amber: Amber, provider: OidcProvider) -> None:
    done = sign_in(oidc_amber, provider, "bob")
    value = oidc_amber.api.cookies["amber_session"]
    assert done.status_code == 303
    oidc_amber.api.post("/auth/logout")
    oidc_amber.api.cookies.clear()
    oidc_amber.api.cookies.set("amber_session", value)
    replay = oidc_amber.api.get("/v1/me")
    assert replay.status_code == 401
    assert "session has ended" in replay.json()["detail"]


def test_state_mismatch_and_replayed_callback_refused(oidc_amber: Amber, provider: OidcProvider) -> None:
    start = oidc_amber.api.get("/auth/login", params={"provider": "test"}, follow_redirects=False)
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        back = provider.sign_in(browser, start.headers["location"], "alice")
    query = urlparse(back.headers["location"]).query
    forged = query.replace("state=", "state=x")
    wrong = oidc_amber.api.get(f"/auth/callback?{forged}", follow_redirects=False)
    assert wrong.status_code == 401
    assert "state mismatch" in wrong.json()["detail"]
    assert oidc_amber.api.get(f"/auth/callback?{query}", follow_redirects=False).status_code == 303
    oidc_amber.api.cookies.set("amber_login", parse_qs(query)["state"][0], path="/auth")
    again = oidc_amber.api.get(f"/auth/callback?{query}", follow_redirects=False)
    assert again.status_code == 401
    assert "already used" in again.json()["detail"]


def test_session_expires(oidc_amber: Amber, provider: OidcProvider, clock: FrozenClock) -> None:
    from datetime import timedelta

    assert sign_in(oidc_amber, provider, "alice").status_code == 303
    assert oidc_amber.api.get("/v1/me").status_code == 200
    clock.advance(timedelta(hours=8, seconds=1))
    assert oidc_amber.api.get("/v1/me").status_code == 401


def test_cookies_are_secure_outside_local_dev(
    provider: OidcProvider, state_url: str, tmp_path: Path, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMBER_TEST_OIDC_SECRET", WEB_SECRET)
    monkeypatch.setenv("AMBER_TEST_TARGET_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    catalog = write_catalog(tmp_path, provider_catalog(provider.issuer))
    settings = Settings(
        env="test",
        state_dir=tmp_path / "state",
        database_url=state_url,
        catalog=catalog,
        public_url="https://amber.test",
    )
    rt = Runtime.build(settings, clock=clock)
    try:
        with TestClient(create_app(rt, run_worker=False), base_url="https://amber.test") as api:
            start = api.get("/auth/login", follow_redirects=False)
            assert "secure" in start.headers["set-cookie"].lower()
            assert "redirect_uri=https%3A%2F%2Famber.test%2Fauth%2Fcallback" in start.headers["location"]
    finally:
        rt.close()


def test_open_redirects_refused(oidc_amber: Amber) -> None:
    for target in ("https://evil.test/", "//evil.test/x", "/\\evil.test"):
        response = oidc_amber.api.get("/auth/login", params={"return_to": target}, follow_redirects=False)
        assert response.status_code == 422, target


def test_providers_listed_without_secrets(oidc_amber: Amber, provider: OidcProvider) -> None:
    listed = oidc_amber.api.get("/auth/providers").json()
    assert listed["dev_issuer"] is False
    (entry,) = listed["providers"]
    assert entry["name"] == "test"
    assert entry["client_id"] == "amber-cli"
    assert entry["device_authorization_endpoint"] == f"{provider.issuer}/device/auth"
    assert WEB_SECRET not in str(listed)


# -- groups -> roles ------------------------------------------------------------------------------------------


def test_requester_role_comes_from_groups(oidc_amber: Amber, provider: OidcProvider) -> None:
    body = {"resource": "orders-db", "level": "read-only", "reason": "INC-9 carol looks", "duration": "10m"}
    carol = {"authorization": f"Bearer {provider.access_token('carol')}"}  # leads, not engineering
    refused = oidc_amber.api.post("/v1/requests", json=body, headers=carol)
    assert refused.status_code == 403
    assert "requester role" in refused.json()["detail"]


def test_approver_role_comes_from_groups(oidc_amber: Amber, provider: OidcProvider) -> None:
    bob = {"authorization": f"Bearer {provider.access_token('bob')}"}
    body = {"resource": "orders-db", "level": "read-only", "reason": "INC-10 refund question", "duration": "10m"}
    pending = oidc_amber.api.post("/v1/requests", json=body, headers=bob).json()
    assert pending["status"] == "pending"
    alice = {"authorization": f"Bearer {provider.access_token('alice')}"}  # engineering, oncall: not an approver
    refused = oidc_amber.api.post(f"/v1/requests/{pending['id']}/approve", json={"comment": "ok"}, headers=alice)
    assert refused.status_code == 403
    assert "approver role" in refused.json()["detail"]
    carol = {"authorization": f"Bearer {provider.access_token('carol')}"}
    approved = oidc_amber.api.post(f"/v1/requests/{pending['id']}/approve", json={"comment": "ok"}, headers=carol)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"


# -- SCIM ends browser sessions -------------------------------------------------------------------------------

SCIM_TOKEN = "scim-token-for-web-session-tests-0123456789"


@pytest.fixture
def scim_amber(
    provider: OidcProvider,
    state_url: str,
    tmp_path: Path,
    clock: FrozenClock,
    target_db: str,
    target_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Amber]:
    monkeypatch.setenv("AMBER_TEST_OIDC_SECRET", WEB_SECRET)
    monkeypatch.setenv("AMBER_TEST_SCIM_TOKEN", SCIM_TOKEN)
    extra = """\
    scim:
      token: env:AMBER_TEST_SCIM_TOKEN
      issuer: test
    """
    catalog = write_catalog(tmp_path, provider_catalog(provider.issuer, extra))
    rt = build_runtime(state_url, catalog, tmp_path, clock)
    try:
        with TestClient(create_app(rt, run_worker=False), raise_server_exceptions=False) as api:
            yield Amber(rt=rt, api=api, clock=clock, target_db=target_db, target_url=target_url)
    finally:
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)


def test_scim_deactivation_and_group_removal_end_browser_sessions(scim_amber: Amber, provider: OidcProvider) -> None:
    scim = {"authorization": f"Bearer {SCIM_TOKEN}"}
    alice = scim_amber.api.post(
        "/scim/v2/Users", json={"userName": "alice@example.test", "externalId": "alice"}, headers=scim
    )
    bob = scim_amber.api.post(
        "/scim/v2/Users", json={"userName": "bob@example.test", "externalId": "bob"}, headers=scim
    )
    group = scim_amber.api.post(
        "/scim/v2/Groups", json={"displayName": "oncall", "members": [{"value": bob.json()["id"]}]}, headers=scim
    )

    assert sign_in(scim_amber, provider, "alice").status_code == 303
    assert scim_amber.api.get("/v1/me").status_code == 200
    off = {"Operations": [{"op": "replace", "value": {"active": False}}]}
    assert scim_amber.api.patch(f"/scim/v2/Users/{alice.json()['id']}", json=off, headers=scim).status_code == 200
    assert scim_amber.api.get("/v1/me").status_code == 401

    scim_amber.api.cookies.clear()
    assert sign_in(scim_amber, provider, "bob").status_code == 303
    assert scim_amber.api.get("/v1/me").status_code == 200
    leave = {"Operations": [{"op": "remove", "path": f'members[value eq "{bob.json()["id"]}"]'}]}
    assert scim_amber.api.patch(f"/scim/v2/Groups/{group.json()['id']}", json=leave, headers=scim).status_code == 200
    ended = scim_amber.api.get("/v1/me")
    assert ended.status_code == 401
    assert "session has ended" in ended.json()["detail"]


def test_a_reload_that_removes_the_issuer_ends_its_browser_sessions(
    oidc_amber: Amber, provider: OidcProvider, own_provider: OidcProvider
) -> None:
    assert sign_in(oidc_amber, provider, "alice").status_code == 303
    assert oidc_amber.api.get("/v1/me").json()["name"] == "alice"
    path = oidc_amber.rt.catalog().path
    path.write_text(path.read_text().replace(provider.issuer, own_provider.issuer))
    oidc_amber.rt.reload_catalog()
    stale = oidc_amber.api.get("/v1/me")
    assert stale.status_code == 401
    assert "no longer trusts the identity provider you signed in with" in stale.json()["detail"]
