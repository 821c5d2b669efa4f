"""Groups follow the SCIM directory at once: roles, pending requests and approvals after a group change.

Each test drives amber as an identity provider would (Okta's and Entra ID's SCIM shapes, see test_scim.py) and
as people would (bearer tokens minted before the change), then checks the ledger and runs the replay that
`amber audit verify` runs. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from amber import audit
from tests.conftest import Amber
from tests.scim.test_scim import PATCH_SCHEMA, ledger_events, okta_user, scim

GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"


def group(amber: Amber, name: str, *members: dict[str, Any], external_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": [GROUP_SCHEMA],
        "displayName": name,
        "members": [{"value": m["id"]} for m in members],
    }
    if external_id is not None:
        body["externalId"] = external_id
    created: dict[str, Any] = scim(amber, "POST", "/Groups", body)
    return created


def okta_remove(amber: Amber, group_id: str, user_id: str) -> None:
    scim(
        amber,
        "PATCH",
        f"/Groups/{group_id}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove", "path": f'members[value eq "{user_id}"]'}]},
    )


def me(amber: Amber, headers: dict[str, str]) -> dict[str, Any]:
    response = amber.api.get("/v1/me", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def approve(amber: Amber, request_id: str, headers: dict[str, str]) -> Any:
    return amber.api.post(f"/v1/requests/{request_id}/approve", json={"comment": "ok"}, headers=headers)


def verified(amber: Amber) -> None:
    """The replay `amber audit verify` runs: chain, tree, and every request, approval and grant column."""
    with amber.rt.uow() as session:
        report = audit.verify(session)
    assert report.ok, report.problems


# -- 1. roles follow the directory ------------------------------------------------------------------------------


def test_an_approver_removed_by_scim_cannot_approve_with_a_token_issued_before(amber: Amber) -> None:
    carol = scim(amber, "POST", "/Users", okta_user("carol", "dev:carol"))
    leads = group(amber, "leads", carol)
    carol_token = amber.headers("carol", "leads")  # still valid after the removal
    pending = amber.request("bob", "engineering")
    assert pending["status"] == "pending"
    assert "leads" in me(amber, carol_token)["groups"]

    okta_remove(amber, leads["id"], carol["id"])

    assert "leads" not in me(amber, carol_token)["groups"]
    refused = approve(amber, pending["id"], carol_token)
    assert refused.status_code == 403, refused.text
    assert "approver role" in refused.json()["detail"]
    assert (
        amber.api.get(f"/v1/requests/{pending['id']}", headers=amber.headers("sue", "security")).json()["status"]
        == "pending"
    )
    verified(amber)


def test_an_admin_removed_by_scim_loses_admin_at_once(amber: Amber) -> None:
    pat = scim(amber, "POST", "/Users", okta_user("pat", "dev:pat"))
    platform = group(amber, "platform", pat)
    pat_token = amber.headers("pat", "platform")
    other = amber.request("alice", "engineering", "oncall")["grant"]
    assert me(amber, pat_token)["admin"] is True

    # Entra ID's shape this time: PUT the group with its new member list (nobody).
    scim(
        amber, "PUT", f"/Groups/{platform['id']}", {"schemas": [GROUP_SCHEMA], "displayName": "platform", "members": []}
    )

    assert me(amber, pat_token)["admin"] is False
    assert amber.api.get("/v1/grants?scope=all", headers=pat_token).status_code == 403
    revoke = amber.api.post(f"/v1/grants/{other['id']}/revoke", json={"reason": "x"}, headers=pat_token)
    assert revoke.status_code in (403, 404), revoke.text
    verified(amber)


def test_a_person_scim_does_not_know_holds_none_of_the_groups_it_manages(amber: Amber) -> None:
    carol = scim(amber, "POST", "/Users", okta_user("carol", "dev:carol"))
    group(amber, "leads", carol)
    pending = amber.request("bob", "engineering")
    # dave's token claims leads, but the directory manages leads and does not list him: fail closed.
    dave = amber.headers("dave", "leads", "engineering")
    assert me(amber, dave)["groups"] == ["engineering"]  # groups SCIM never managed still count
    assert approve(amber, pending["id"], dave).status_code == 403
    # The directory only takes groups away: carol needs leads in her token too (SCIM cannot give a role).
    assert approve(amber, pending["id"], amber.headers("carol", "engineering")).status_code == 403
    done = approve(amber, pending["id"], amber.headers("carol", "leads"))
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "approved"
    verified(amber)


def test_a_renamed_group_does_not_give_its_old_name_back_to_old_tokens(amber: Amber) -> None:
    carol = scim(amber, "POST", "/Users", okta_user("carol", "dev:carol"))
    leads = group(amber, "leads", carol)
    carol_token = amber.headers("carol", "leads")
    scim(
        amber,
        "PATCH",
        f"/Groups/{leads['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "path": "displayName", "value": "former-leads"}]},
    )
    assert me(amber, carol_token)["groups"] == []
    assert me(amber, amber.headers("carol", "former-leads"))["groups"] == ["former-leads"]
    pending = amber.request("bob", "engineering")
    assert approve(amber, pending["id"], carol_token).status_code == 403
    (event,) = [e for e in ledger_events(amber, leads["id"]) if e.event_type == "scim.group_updated"]
    assert event.payload["renamedFrom"] == {"displayName": "leads", "externalId": None}
    verified(amber)


def test_with_scim_turned_off_tokens_decide_again(amber: Amber, catalog_path: Path) -> None:
    carol = scim(amber, "POST", "/Users", okta_user("carol", "dev:carol"))
    group(amber, "leads")
    assert carol["active"] is True
    assert "leads" not in me(amber, amber.headers("carol", "leads"))["groups"]
    catalog_path.write_text(re.sub(r"  scim:\n(    .*\n)+", "", catalog_path.read_text()))
    reloaded = amber.api.post("/v1/policy/reload", headers=amber.headers("pat", "platform"))
    assert reloaded.status_code == 200, reloaded.text
    assert "leads" in me(amber, amber.headers("carol", "leads"))["groups"]
