"""With a real OpenID provider and SCIM: the groups SCIM manages come from the directory, not from a token or a
browser session the provider issued earlier. The provider keeps saying carol is in `leads`; SCIM says she left.
Both state stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from amber.api.app import create_app
from amber.core.clock import FrozenClock
from tests.conftest import Amber, build_runtime, drop_roles_tagged
from tests.identity.conftest import provider_catalog, write_catalog
from tests.identity.oidc import WEB_SECRET, OidcProvider
from tests.identity.test_web_signin import sign_in
from tests.scim.conftest import SCIM_TOKEN
from tests.scim.test_scim import PATCH_SCHEMA, okta_user, scim


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
    """amber trusting the real provider, with SCIM provisioning its people; approvers are leads."""
    monkeypatch.setenv("AMBER_TEST_OIDC_SECRET", WEB_SECRET)
    monkeypatch.setenv("AMBER_TEST_SCIM_TOKEN", SCIM_TOKEN)
    extra = """\
        group_map: {"8aa1-leads-oid": leads}
    roles:
      requester: [engineering]
      approver: [leads]
    scim:
      token: env:AMBER_TEST_SCIM_TOKEN
      issuer: test
      subject_attribute: externalId
    """
    rt = build_runtime(state_url, write_catalog(tmp_path, provider_catalog(provider.issuer, extra)), tmp_path, clock)
    try:
        with TestClient(create_app(rt, run_worker=False), raise_server_exceptions=False) as api:
            yield Amber(rt=rt, api=api, clock=clock, target_db=target_db, target_url=target_url)
    finally:
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)


def test_tokens_and_sessions_from_before_a_scim_removal_no_longer_approve(
    scim_amber: Amber, provider: OidcProvider
) -> None:
    amber = scim_amber
    carol = scim(amber, "POST", "/Users", okta_user("carol", "carol"))
    scim(amber, "POST", "/Users", okta_user("bob", "bob"))
    # Entra ID's way: the group's externalId is its object id, which group_map names `leads`.
    leads = scim(
        amber,
        "POST",
        "/Groups",
        {"displayName": "Team Leads", "externalId": "8aa1-leads-oid", "members": [{"value": carol["id"]}]},
    )
    carol_token = {"authorization": f"Bearer {provider.access_token('carol')}"}
    bob_token = {"authorization": f"Bearer {provider.access_token('bob')}"}
    body = {"resource": "orders-db", "level": "read-only", "reason": "INC-9 looking at orders", "duration": "10m"}
    first = amber.api.post("/v1/requests", json=body, headers=bob_token).json()
    second = amber.api.post("/v1/requests", json={**body, "reason": "INC-10 again"}, headers=bob_token).json()
    assert (first["status"], second["status"]) == ("pending", "pending")
    assert amber.api.get("/v1/me", headers=carol_token).json()["groups"] == ["leads"]

    scim(
        amber,
        "PATCH",
        f"/Groups/{leads['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove", "path": f'members[value eq "{carol["id"]}"]'}]},
    )

    # The access token the provider issued before still verifies, but no longer carries leads.
    assert amber.api.get("/v1/me", headers=carol_token).json()["groups"] == []
    refused = amber.api.post(f"/v1/requests/{first['id']}/approve", json={}, headers=carol_token)
    assert refused.status_code == 403, refused.text
    # A fresh browser sign-in: the provider's ID token still says leads; the directory does not.
    assert sign_in(amber, provider, "carol").status_code == 303
    assert amber.api.get("/v1/me").json()["groups"] == []
    browser = amber.api.post(f"/v1/requests/{second['id']}/approve", json={}, headers={"x-requested-with": "t"})
    assert browser.status_code == 403, browser.text
