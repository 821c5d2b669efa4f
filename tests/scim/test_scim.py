"""SCIM 2.0 as Okta and Entra ID send it: provisioning, deprovisioning that takes access away at once, and group
removals that re-check grants against policy. The request bodies are the shapes in the providers' own docs:

- Okta: "SCIM 2.0 protocol reference" (developer.okta.com/docs/api/openapi/okta-scim/guides/scim-20): create
  with `externalId` = the Okta user id, `PATCH {"op": "replace", "value": {"active": false}}`, group member
  removal as `{"op": "remove", "path": "members[value eq \"<id>\"]"}`.
- Entra ID: "Tutorial: Develop and plan provisioning for a SCIM endpoint" (learn.microsoft.com): `Operations`
  with capitalised ops, `{"op": "Replace", "path": "active", "value": "False"}` (a string), member removal as
  `{"op": "Remove", "path": "members", "value": [{"value": "<id>"}]}`, `excludedAttributes=members`.

Every test runs on SQLite and PostgreSQL, against a real target database with real granted roles.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from amber import ledger
from tests.conftest import Amber, connect_as
from tests.scim.conftest import SCIM_TOKEN

SCIM = {"authorization": f"Bearer {SCIM_TOKEN}", "content-type": "application/scim+json"}
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def okta_user(login: str, okta_id: str) -> dict[str, Any]:
    return {
        "schemas": [USER_SCHEMA],
        "userName": f"{login}@example.com",
        "name": {"givenName": login.title(), "familyName": "Example"},
        "emails": [{"primary": True, "value": f"{login}@example.com", "type": "work"}],
        "displayName": f"{login.title()} Example",
        "locale": "en-US",
        "externalId": okta_id,
        "groups": [],
        "password": "1mz050nq",
        "active": True,
    }


def entra_user(login: str, object_id: str) -> dict[str, Any]:
    return {
        "schemas": [USER_SCHEMA, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "externalId": object_id,
        "userName": f"{login}@contoso.com",
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": f"{login}@contoso.com"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": f"{login} Contoso", "familyName": "Contoso", "givenName": login},
        "roles": [],
    }


def scim(amber: Amber, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = amber.api.request(method, f"/scim/v2{path}", json=body, headers=SCIM)
    assert response.status_code < 300, response.text
    if response.status_code != 204:
        assert response.headers["content-type"].startswith("application/scim+json")
        return response.json()
    return None


def grant_status(amber: Amber, grant_id: str) -> dict[str, Any]:
    response = amber.api.get(f"/v1/grants/{grant_id}", headers=amber.headers("pat", "platform"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ledger_events(amber: Amber, subject_id: str) -> list[ledger.EntryView]:
    with amber.rt.uow() as session:
        return ledger.entries(session, subject_id=subject_id)


def test_token_is_required_and_checked(amber: Amber) -> None:
    assert amber.api.get("/scim/v2/Users").status_code == 401
    wrong = amber.api.get("/scim/v2/Users", headers={"authorization": "Bearer " + SCIM_TOKEN[:-1] + "x"})
    assert wrong.status_code == 401
    assert wrong.headers["content-type"] == "application/problem+json"
    assert amber.api.get("/scim/v2/Users", headers=SCIM).status_code == 200


def test_okta_create_then_lookup_by_filter(amber: Amber) -> None:
    # Okta first looks the user up, then creates them.
    empty = scim(amber, "GET", "/Users?filter=userName%20eq%20%22alice%40example.com%22&startIndex=1&count=100")
    assert empty["totalResults"] == 0
    created = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    assert created["userName"] == "alice@example.com"
    assert created["active"] is True
    assert "password" not in created
    found = scim(amber, "GET", "/Users?filter=userName%20eq%20%22ALICE%40example.com%22")
    assert [u["id"] for u in found["Resources"]] == [created["id"]]
    duplicate = amber.api.post("/scim/v2/Users", json=okta_user("alice", "dev:alice"), headers=SCIM)
    assert duplicate.status_code == 409
    assert duplicate.json()["scimType"] == "uniqueness"
    assert scim(amber, "GET", f"/Users/{created['id']}")["externalId"] == "dev:alice"


def test_okta_deactivation_revokes_grants_and_cuts_sessions_within_a_second(amber: Amber) -> None:
    user = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    body = amber.request("alice", "engineering", "oncall")
    grant_id = body["grant"]["id"]
    conn = connect_as(body["credential"]["url"])
    assert conn.execute("SELECT count(*) FROM orders").fetchone() == (50,)

    started = time.monotonic()
    patched = scim(
        amber,
        "PATCH",
        f"/Users/{user['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": False}}]},
    )
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    elapsed = time.monotonic() - started
    conn.close()
    assert elapsed < 1.0
    assert patched["active"] is False

    grant = grant_status(amber, grant_id)
    assert grant["status"] == "revoked"
    assert not amber.role_exists(body["grant"]["role"])
    revoked = [e for e in ledger_events(amber, grant_id) if e.event_type == "grant.revoked"]
    assert revoked[0].actor.subject == "scim"
    assert revoked[0].payload["reason"] == f"scim PATCH /scim/v2/Users/{user['id']}: user deactivated"
    (event,) = [e for e in ledger_events(amber, user["id"]) if e.event_type == "scim.user_deactivated"]
    assert event.payload["call"] == f"PATCH /scim/v2/Users/{user['id']}"

    # Whatever token alice still holds is refused from now on.
    me = amber.api.get("/v1/me", headers=amber.headers("alice", "engineering", "oncall"))
    assert me.status_code == 401
    assert "deactivated" in me.json()["detail"]


def test_entra_deactivation_with_string_boolean(amber: Amber) -> None:
    user = scim(amber, "POST", "/Users", entra_user("bob", "dev:bob"))
    first = amber.request("bob", "engineering", "oncall")
    second = amber.request("bob", "engineering", "oncall", reason="second look INC-43")
    scim(
        amber,
        "PATCH",
        f"/Users/{user['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]},
    )
    for body in (first, second):
        assert grant_status(amber, body["grant"]["id"])["status"] == "revoked"
    # Reactivation lets new tokens in again (grants stay revoked).
    scim(
        amber,
        "PATCH",
        f"/Users/{user['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Replace", "path": "active", "value": "True"}]},
    )
    assert amber.api.get("/v1/me", headers=amber.headers("bob", "engineering")).status_code == 200


def test_put_with_active_false_and_delete_revoke(amber: Amber) -> None:
    user = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    grant = amber.request("alice", "engineering", "oncall")["grant"]
    replaced = scim(amber, "PUT", f"/Users/{user['id']}", {**okta_user("alice", "dev:alice"), "active": False})
    assert replaced["active"] is False
    assert grant_status(amber, grant["id"])["status"] == "revoked"

    other = scim(amber, "POST", "/Users", entra_user("bob", "dev:bob"))
    bob_grant = amber.request("bob", "engineering", "oncall")["grant"]
    assert scim(amber, "DELETE", f"/Users/{other['id']}") is None
    assert grant_status(amber, bob_grant["id"])["status"] == "revoked"
    assert amber.api.get(f"/scim/v2/Users/{other['id']}", headers=SCIM).status_code == 404
    assert amber.api.get("/v1/me", headers=amber.headers("bob", "engineering")).status_code == 401


def test_deactivation_ends_nothing_for_other_people(amber: Amber) -> None:
    alice = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    carol_grant = amber.request("carol", "engineering", "oncall")["grant"]
    scim(amber, "DELETE", f"/Users/{alice['id']}")
    assert grant_status(amber, carol_grant["id"])["status"] == "active"


def test_okta_group_removal_revokes_what_policy_no_longer_allows(amber: Amber) -> None:
    alice = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    engineering = scim(
        amber,
        "POST",
        "/Groups",
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "displayName": "engineering",
            "members": [{"value": alice["id"], "display": "alice@example.com"}],
        },
    )
    assert [m["value"] for m in engineering["members"]] == [alice["id"]]
    grant = amber.request("alice", "engineering", "oncall")["grant"]  # on-call engineers: auto-approved

    scim(
        amber,
        "PATCH",
        f"/Groups/{engineering['id']}",
        {
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "remove", "path": f'members[value eq "{alice["id"]}"]'}],
        },
    )
    # Without engineering, no policy permits alice's request any more: the grant goes.
    after = grant_status(amber, grant["id"])
    assert after["status"] == "revoked"
    (revoked,) = [e for e in ledger_events(amber, grant["id"]) if e.event_type == "grant.revoked"]
    assert revoked.payload["reason"].startswith(f"scim PATCH /scim/v2/Groups/{engineering['id']}: left group")
    (event,) = [e for e in ledger_events(amber, engineering["id"]) if e.event_type == "scim.group_updated"]
    assert event.payload["removed"] == [alice["id"]]


def test_entra_group_removal_keeps_grants_policy_still_allows(amber: Amber) -> None:
    bob = scim(amber, "POST", "/Users", entra_user("bob", "dev:bob"))
    oncall = scim(amber, "POST", "/Groups", {"displayName": "oncall", "externalId": "c1a2", "members": []})
    scim(
        amber,
        "PATCH",
        f"/Groups/{oncall['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Add", "path": "members", "value": [{"value": bob["id"]}]}]},
    )
    listed = scim(amber, "GET", "/Groups?filter=displayName%20eq%20%22oncall%22&excludedAttributes=members")
    assert listed["totalResults"] == 1
    assert "members" not in listed["Resources"][0]
    grant = amber.request("bob", "engineering", "oncall")["grant"]

    scim(
        amber,
        "PATCH",
        f"/Groups/{oncall['id']}",
        {
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "Remove", "path": "members", "value": [{"value": bob["id"]}]}],
        },
    )
    # Still an engineer: policy would still permit the request (with an approval), so the grant stays.
    assert grant_status(amber, grant["id"])["status"] == "active"
    assert scim(amber, "GET", f"/Groups/{oncall['id']}")["members"] == []


def test_group_delete_rechecks_members(amber: Amber) -> None:
    alice = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    group = scim(amber, "POST", "/Groups", {"displayName": "engineering", "members": [{"value": alice["id"]}]})
    grant = amber.request("alice", "engineering", "oncall")["grant"]
    scim(amber, "DELETE", f"/Groups/{group['id']}")
    assert grant_status(amber, grant["id"])["status"] == "revoked"


def test_unsupported_filter_is_a_scim_error(amber: Amber) -> None:
    response = amber.api.get("/scim/v2/Users?filter=emails%20co%20%22x%22", headers=SCIM)
    assert response.status_code == 422
    assert response.json()["scimType"] == "invalidFilter"
    assert response.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer  {SCIM_TOKEN}",  # two spaces
        f"Bearer\t{SCIM_TOKEN}",
        f"Bearer\u00a0{SCIM_TOKEN}",  # a non-ASCII space
        f"Bearer {SCIM_TOKEN} ",
        f"Bearer {SCIM_TOKEN}\u00a0",
        f"Basic {SCIM_TOKEN}",
        "Bearer ",
        "Bearer",
    ],
)
def test_a_malformed_bearer_header_is_refused(amber: Amber, header: str) -> None:
    response = amber.api.get("/scim/v2/Users", headers={"authorization": header.encode()})
    assert response.status_code == 401, header


def test_an_empty_token_file_opens_scim_to_nobody(amber: Amber, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBER_TEST_SCIM_TOKEN", "")
    for header in ("Bearer ", "Bearer  ", "Bearer x"):
        assert amber.api.get("/scim/v2/Users", headers={"authorization": header}).status_code == 401
    monkeypatch.setenv("AMBER_TEST_SCIM_TOKEN", "short")
    assert amber.api.get("/scim/v2/Users", headers={"authorization": "Bearer short"}).status_code == 401


def test_scim_is_off_without_a_token(amber: Amber, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amber.rt, "scim", None)
    assert amber.api.get("/scim/v2/Users", headers=SCIM).status_code == 404


def test_next_deprovisioning_finishes_one_a_crash_left_half_done(amber: Amber) -> None:
    from sqlalchemy import update

    from amber.identity.directory import ScimUser

    bob = scim(amber, "POST", "/Users", okta_user("bob", "dev:bob"))
    alice = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    bob_grant = amber.request("bob", "engineering", "oncall")["grant"]
    # A crash right after bob's deactivation committed: the directory says inactive, his grant is still live.
    with amber.rt.uow() as session:
        session.execute(update(ScimUser).where(ScimUser.id == bob["id"]).values(active=False))
    assert grant_status(amber, bob_grant["id"])["status"] == "active"
    scim(amber, "DELETE", f"/Users/{alice['id']}")
    assert grant_status(amber, bob_grant["id"])["status"] == "revoked"


def test_deactivation_cancels_pending_requests_so_nobody_approves_them_later(amber: Amber) -> None:
    user = scim(amber, "POST", "/Users", okta_user("bob", "dev:bob"))
    pending = amber.request("bob", "engineering")
    assert pending["status"] == "pending"
    scim(
        amber,
        "PATCH",
        f"/Users/{user['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": False}}]},
    )
    late = amber.api.post(f"/v1/requests/{pending['id']}/approve", json={}, headers=amber.headers("carol", "leads"))
    assert late.status_code == 409
    shown = amber.api.get(f"/v1/requests/{pending['id']}", headers=amber.headers("sue", "security")).json()
    assert shown["status"] == "cancelled"
    (event,) = [e for e in ledger_events(amber, pending["id"]) if e.event_type == "request.cancelled"]
    assert event.payload == {
        "by": "deprovisioning",
        "reason": f"scim PATCH /scim/v2/Users/{user['id']}: user deactivated",
    }
