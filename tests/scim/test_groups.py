"""Groups follow the SCIM directory at once: roles, pending requests and approvals after a group change.

Each test drives amber as an identity provider would (Okta's and Entra ID's SCIM shapes, see test_scim.py) and
as people would (bearer tokens minted before the change), then checks the ledger and runs the replay that
`amber audit verify` runs. Every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from amber import audit
from amber.core.errors import Forbidden
from amber.identity import Principal
from tests.conftest import Amber
from tests.scim.test_scim import PATCH_SCHEMA, SCIM, grant_status, ledger_events, okta_user, scim

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


def verified_from_the_command_line(amber: Amber) -> None:
    """`amber audit verify` itself, in a fresh interpreter, as an auditor runs it."""
    env = {
        **os.environ,
        "AMBER_ENV": "test",
        "AMBER_DATABASE_URL": amber.rt.engine.url.render_as_string(hide_password=False),
        "AMBER_STATE_DIR": str(amber.rt.settings.state_dir),
    }
    done = subprocess.run(
        [sys.executable, "-m", "amber", "audit", "verify", "--allow-unsigned-tail"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ledger OK: "), done.stdout


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


# -- 2. pending requests and approvals re-evaluated ------------------------------------------------------------


def request_view(amber: Amber, request_id: str) -> dict[str, Any]:
    response = amber.api.get(f"/v1/requests/{request_id}", headers=amber.headers("sue", "security"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def events(amber: Amber, subject_id: str, event_type: str) -> list[Any]:
    return [e for e in ledger_events(amber, subject_id) if e.event_type == event_type]


def test_okta_removal_denies_the_pending_requests_policy_no_longer_allows(amber: Amber) -> None:
    alice = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    engineering = group(amber, "engineering", alice)
    needs_engineering = amber.request("alice", "engineering")  # engineers: one approval
    anyone = amber.request("alice", "engineering", level="two-approvals", duration="20m")  # any principal
    assert (needs_engineering["status"], anyone["status"]) == ("pending", "pending")

    okta_remove(amber, engineering["id"], alice["id"])

    call = f"PATCH /scim/v2/Groups/{engineering['id']}"
    assert request_view(amber, needs_engineering["id"])["status"] == "denied"
    (denied,) = events(amber, needs_engineering["id"], "request.denied")
    assert denied.actor.subject == "scim"
    assert denied.payload["by"] == "scim"
    assert denied.payload["reason"].startswith(f"scim {call}: left group 'engineering'; policy now denies: ")
    assert request_view(amber, anyone["id"])["status"] == "pending"  # policy still allows it
    late = approve(amber, needs_engineering["id"], amber.headers("carol", "leads"))
    assert late.status_code == 409
    verified(amber)


def test_entra_put_with_new_members_rechecks_only_those_who_left(amber: Amber) -> None:
    alice = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    bob = scim(amber, "POST", "/Users", okta_user("bob", "dev:bob"))
    engineering = group(amber, "engineering", alice, bob)
    alices = amber.request("alice", "engineering")
    bobs = amber.request("bob", "engineering")

    scim(
        amber,
        "PUT",
        f"/Groups/{engineering['id']}",
        {"schemas": [GROUP_SCHEMA], "displayName": "engineering", "members": [{"value": bob["id"]}]},
    )

    assert request_view(amber, alices["id"])["status"] == "denied"
    (denied,) = events(amber, alices["id"], "request.denied")
    assert denied.payload["reason"].startswith(f"scim PUT /scim/v2/Groups/{engineering['id']}: left group")
    assert request_view(amber, bobs["id"])["status"] == "pending"
    verified(amber)


def test_patching_a_users_groups_is_a_membership_change_like_any_other(amber: Amber) -> None:
    alice = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    engineering = group(amber, "engineering")
    patched = scim(
        amber,
        "PATCH",
        f"/Users/{alice['id']}",
        {
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "add", "path": "groups", "value": [{"value": engineering["id"]}]}],
        },
    )
    assert [g["value"] for g in patched["groups"]] == [engineering["id"]]
    pending = amber.request("alice", "engineering")
    assert pending["status"] == "pending"

    removed = scim(
        amber,
        "PATCH",
        f"/Users/{alice['id']}",
        {
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "remove", "path": f'groups[value eq "{engineering["id"]}"]'}],
        },
    )

    assert removed["groups"] == []
    assert scim(amber, "GET", f"/Groups/{engineering['id']}")["members"] == []
    assert "engineering" not in me(amber, amber.headers("alice", "engineering"))["groups"]
    assert request_view(amber, pending["id"])["status"] == "denied"
    (denied,) = events(amber, pending["id"], "request.denied")
    assert denied.payload["reason"].startswith(f"scim PATCH /scim/v2/Users/{alice['id']}: left group 'engineering'")
    (updated,) = events(amber, alice["id"], "scim.user_updated")[-1:]
    assert updated.payload["groupsRemoved"] == [engineering["id"]]
    unknown = amber.api.patch(
        f"/scim/v2/Users/{alice['id']}",
        json={
            "schemas": [PATCH_SCHEMA],
            "Operations": [{"op": "add", "path": "groups", "value": [{"value": "scg_x"}]}],
        },
        headers=SCIM,
    )
    assert unknown.status_code == 422
    assert unknown.json()["scimType"] == "invalidValue"
    verified(amber)


def test_an_approval_from_someone_scim_removed_no_longer_counts(amber: Amber) -> None:
    carol = scim(amber, "POST", "/Users", okta_user("carol", "dev:carol"))
    dave = scim(amber, "POST", "/Users", okta_user("dave", "dev:dave"))
    erin = scim(amber, "POST", "/Users", okta_user("erin", "dev:erin"))
    leads = group(amber, "leads", carol, dave)
    pending = amber.request("bob", "engineering", level="two-approvals", duration="20m")  # two leads
    assert approve(amber, pending["id"], amber.headers("carol", "leads")).json()["status"] == "pending"

    okta_remove(amber, leads["id"], carol["id"])

    call = f"PATCH /scim/v2/Groups/{leads['id']}"
    (lapsed,) = events(amber, pending["id"], "request.approval_lapsed")
    assert lapsed.payload["approver"]["sub"] == "dev:carol"
    assert lapsed.payload["reason"].startswith(f"scim {call}: left group 'leads'; ")
    explained = amber.api.get(f"/v1/requests/{pending['id']}/explain", headers=amber.headers("sue", "security")).json()
    assert explained["approvals"]["received"] == 0
    assert [n["approver"].split("#")[1] for n in explained["approvals"]["not_counted"]] == ["dev:carol"]
    # dave's approval would be the second; carol's no longer counts, so the request stays pending.
    assert approve(amber, pending["id"], amber.headers("dave", "leads")).json()["status"] == "pending"
    scim(
        amber,
        "PATCH",
        f"/Groups/{leads['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "add", "path": "members", "value": [{"value": erin["id"]}]}]},
    )
    done = approve(amber, pending["id"], amber.headers("erin", "leads"))
    assert done.json()["status"] == "approved", done.text
    (approved,) = events(amber, pending["id"], "request.approved")
    assert approved.payload["approvals"] == 2
    (not_counted,) = approved.payload["not_counted"]
    assert not_counted["approver"].endswith("#dev:carol")
    assert "approver role" in not_counted["reason"]
    verified_from_the_command_line(amber)


def test_deactivating_an_approver_withdraws_their_approval_and_deleting_a_requester_cancels(amber: Amber) -> None:
    carol = scim(amber, "POST", "/Users", okta_user("carol", "dev:carol"))
    bob = scim(amber, "POST", "/Users", okta_user("bob", "dev:bob"))
    two = amber.request("bob", "engineering", level="two-approvals", duration="20m")
    one = amber.request("bob", "engineering", reason="another look INC-44")
    assert approve(amber, two["id"], amber.headers("carol", "leads")).json()["status"] == "pending"

    scim(
        amber,
        "PATCH",
        f"/Users/{carol['id']}",
        {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]},
    )
    (lapsed,) = events(amber, two["id"], "request.approval_lapsed")
    reason = lapsed.payload["reason"]
    assert reason.startswith(f"scim PATCH /scim/v2/Users/{carol['id']}: user deactivated; ")
    assert reason.endswith("was deprovisioned")
    assert approve(amber, two["id"], amber.headers("dave", "leads")).json()["status"] == "pending"

    scim(amber, "DELETE", f"/Users/{bob['id']}")
    for request in (one, two):
        assert request_view(amber, request["id"])["status"] == "cancelled"
        (cancelled,) = events(amber, request["id"], "request.cancelled")
        assert cancelled.payload == {
            "by": "deprovisioning",
            "reason": f"scim DELETE /scim/v2/Users/{bob['id']}: user deleted",
        }
    verified(amber)


def test_a_pending_request_policy_can_no_longer_judge_is_denied_and_the_removal_goes_through(
    amber: Amber, catalog_path: Path
) -> None:
    bob = scim(amber, "POST", "/Users", okta_user("bob", "dev:bob"))
    engineering = group(amber, "engineering", bob)
    pending = amber.request("bob", "engineering", level="two-approvals", duration="20m")
    # The level goes from the catalog (and its policy with it) while the request waits.
    catalog_path.write_text(catalog_path.read_text().replace("      two-approvals:\n", "      two-approvals-v2:\n"))
    policies = catalog_path.parent / "policies" / "main.cedar"
    policies.write_text(policies.read_text().replace("orders-db/two-approvals", "orders-db/two-approvals-v2"))
    reloaded = amber.api.post("/v1/policy/reload", headers=amber.headers("pat", "platform"))
    assert reloaded.status_code == 200, reloaded.text

    okta_remove(amber, engineering["id"], bob["id"])

    assert scim(amber, "GET", f"/Groups/{engineering['id']}")["members"] == []
    (denied,) = events(amber, pending["id"], "request.denied")
    assert "policy now denies: policy cannot be asked: " in denied.payload["reason"]
    assert "two-approvals" in denied.payload["reason"]
    verified(amber)


def test_a_group_scim_starts_to_manage_is_taken_from_everyone_it_does_not_list(amber: Amber) -> None:
    erin = scim(amber, "POST", "/Users", okta_user("erin", "dev:erin"))
    alices = amber.request("alice", "engineering", "oncall")["grant"]  # alice: unknown to SCIM, auto-approved
    bobs = amber.request("bob", "engineering")
    erins = amber.request("erin", "engineering")
    two = amber.request("dave", "engineering", level="two-approvals", duration="20m")
    assert approve(amber, two["id"], amber.headers("carol", "leads")).json()["status"] == "pending"

    group(amber, "engineering", erin)  # the provider starts pushing engineering: erin is its only member
    group(amber, "leads")  # and leads, with nobody in it

    why = "scim POST /scim/v2/Groups: SCIM now manages group 'engineering' and does not list them in it"
    assert grant_status(amber, alices["id"])["status"] == "revoked"
    (revoked,) = events(amber, alices["id"], "grant.revoked")
    assert revoked.payload["reason"].startswith(f"{why}; policy now denies: ")
    assert request_view(amber, bobs["id"])["status"] == "denied"
    assert events(amber, bobs["id"], "request.denied")[0].payload["reason"].startswith(why)
    assert request_view(amber, erins["id"])["status"] == "pending"  # listed: keeps engineering
    (lapsed,) = events(amber, two["id"], "request.approval_lapsed")
    assert lapsed.payload["reason"].startswith("scim POST /scim/v2/Groups: SCIM now manages group 'leads'")
    verified(amber)


def test_an_approval_racing_the_removal_is_refused(amber: Amber) -> None:
    """carol's call was authenticated just before SCIM removed her (her groups still say leads); the review
    runs after the removal committed, and re-reads the directory in its own transaction."""
    carol = scim(amber, "POST", "/Users", okta_user("carol", "dev:carol"))
    leads = group(amber, "leads", carol)
    pending = amber.request("bob", "engineering")
    assert amber.rt.dev_issuer is not None
    authenticated = Principal(amber.rt.dev_issuer.issuer_url, "dev:carol", "carol", frozenset({"leads"}))

    okta_remove(amber, leads["id"], carol["id"])
    with pytest.raises(Forbidden, match="approver role"):
        amber.rt.requests.approve(pending["id"], authenticated, comment="ok")

    assert events(amber, pending["id"], "request.reviewed") == []
    assert request_view(amber, pending["id"])["status"] == "pending"
    verified(amber)


def test_deleting_a_group_denies_the_pending_requests_it_carried(amber: Amber) -> None:
    alice = scim(amber, "POST", "/Users", okta_user("alice", "dev:alice"))
    engineering = group(amber, "engineering", alice)
    pending = amber.request("alice", "engineering")
    scim(amber, "DELETE", f"/Groups/{engineering['id']}")
    assert request_view(amber, pending["id"])["status"] == "denied"
    (denied,) = events(amber, pending["id"], "request.denied")
    assert denied.payload["reason"].startswith(f"scim DELETE /scim/v2/Groups/{engineering['id']}: left group")
    assert "engineering" not in me(amber, amber.headers("alice", "engineering"))["groups"]
    verified(amber)
