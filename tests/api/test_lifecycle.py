"""The whole lifecycle through the API, against a real PostgreSQL target, on both state stores."""

from __future__ import annotations

import subprocess
import time
from datetime import timedelta

import psycopg
import pytest

from tests.conftest import Amber, connect_as


def test_auto_approved_request_gives_working_read_only_access_at_once(amber: Amber) -> None:
    body = amber.request("alice", "engineering", "oncall", duration="45m")

    assert body["status"] == "approved"
    assert body["decision"]["outcome"] == "auto_approve"
    grant = body["grant"]
    assert grant["status"] == "active"
    assert grant["credential_shown"] is True
    expected_expiry = amber.clock.now() + timedelta(minutes=45)
    assert grant["expires_at"].startswith(expected_expiry.strftime("%Y-%m-%dT%H:%M:%S"))
    credential = body["credential"]
    assert credential["user"] == grant["role"]
    assert credential["password"].startswith("amb_pg_")
    with connect_as(credential["url"]) as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM secret.api_keys")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO public.customers VALUES (999, 'x')")
        conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.customers VALUES (999, 'x')")

    # Shown once: the response to later reads never carries it, and a claim is refused.
    shown = amber.api.get(f"/v1/requests/{body['id']}", headers=amber.headers("alice", "engineering"))
    assert shown.status_code == 200
    assert shown.json()["credential"] is None
    again = amber.api.post(f"/v1/grants/{grant['id']}/credentials", headers=amber.headers("alice", "engineering"))
    assert again.status_code == 409
    assert "shown exactly once" in again.json()["detail"]


def test_request_needing_approval_is_approved_by_someone_else_then_credential_shown_once(
    amber: Amber,
) -> None:
    body = amber.request("bob", "engineering")
    assert body["status"] == "pending"
    assert body["grant"] is None
    assert body["credential"] is None
    assert body["decision"]["approver_groups"] == ["leads", "team-orders"]

    own = amber.api.post(
        f"/v1/requests/{body['id']}/approve", json={}, headers=amber.headers("bob", "engineering", "leads")
    )
    assert own.status_code == 403
    assert "nobody approves their own request" in own.json()["detail"]

    outsider = amber.api.post(
        f"/v1/requests/{body['id']}/approve", json={}, headers=amber.headers("mallory", "engineering")
    )
    assert outsider.status_code == 403

    approved = amber.api.post(
        f"/v1/requests/{body['id']}/approve",
        json={"comment": "ok for INC-42"},
        headers=amber.headers("carol", "leads"),
    )
    assert approved.status_code == 200, approved.text
    data = approved.json()
    assert data["status"] == "approved"
    assert data["grant"]["status"] == "active"
    assert data["credential"] is None  # the approver never sees the requester's password

    not_mine = amber.api.post(f"/v1/grants/{data['grant']['id']}/credentials", headers=amber.headers("carol", "leads"))
    assert not_mine.status_code == 403
    claim = amber.api.post(f"/v1/grants/{data['grant']['id']}/credentials", headers=amber.headers("bob", "engineering"))
    assert claim.status_code == 200, claim.text
    with connect_as(claim.json()["url"]) as conn:
        assert conn.execute("SELECT count(*) FROM public.customers").fetchone() == (10,)
    second = amber.api.post(
        f"/v1/grants/{data['grant']['id']}/credentials", headers=amber.headers("bob", "engineering")
    )
    assert second.status_code == 409


def test_two_approvals_must_come_from_distinct_people(amber: Amber) -> None:
    body = amber.request("bob", "engineering", level="two-approvals")
    assert body["decision"]["approvals_required"] == 2
    first = amber.api.post(f"/v1/requests/{body['id']}/approve", json={}, headers=amber.headers("carol", "leads"))
    assert first.json()["status"] == "pending"
    twice = amber.api.post(f"/v1/requests/{body['id']}/approve", json={}, headers=amber.headers("carol", "leads"))
    assert twice.status_code == 409
    second = amber.api.post(f"/v1/requests/{body['id']}/approve", json={}, headers=amber.headers("dave", "leads"))
    assert second.json()["status"] == "approved"
    assert second.json()["grant"]["status"] == "active"


def test_policy_denies_someone_outside_the_requester_groups(amber: Amber) -> None:
    response = amber.api.post(
        "/v1/requests",
        headers=amber.headers("eve", "marketing"),
        json={"resource": "orders-db", "level": "read-only", "reason": "curious", "duration": "1h"},
    )
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "denied"
    assert body["decision"]["reasons"] == ["no policy permits eve to request orders-db/read-only"]
    assert body["decision"]["policy_ids"] == ["default:deny"]
    assert body["grant"] is None


def test_ttl_is_capped_at_the_levels_maximum_and_fixed_at_approval(amber: Amber) -> None:
    body = amber.request("bob", "engineering", level="two-approvals", duration="5h")
    assert body["decision"]["granted_ttl_s"] == 3600
    amber.clock.advance(timedelta(minutes=20))  # approvals take a while; expiry counts from approval
    amber.api.post(f"/v1/requests/{body['id']}/approve", json={}, headers=amber.headers("carol", "leads"))
    approved_at = amber.clock.advance(timedelta(minutes=10))
    done = amber.api.post(f"/v1/requests/{body['id']}/approve", json={}, headers=amber.headers("dave", "leads"))
    expires = done.json()["grant"]["expires_at"]
    assert expires.startswith((approved_at + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"))


def test_deny_and_cancel_close_pending_requests(amber: Amber) -> None:
    denied = amber.request("bob", "engineering")
    response = amber.api.post(
        f"/v1/requests/{denied['id']}/deny",
        json={"comment": "use the replica"},
        headers=amber.headers("carol", "leads"),
    )
    assert response.json()["status"] == "denied"
    late = amber.api.post(f"/v1/requests/{denied['id']}/approve", json={}, headers=amber.headers("dave", "leads"))
    assert late.status_code == 409

    cancelled = amber.request("bob", "engineering")
    other = amber.api.post(f"/v1/requests/{cancelled['id']}/cancel", headers=amber.headers("carol", "leads"))
    assert other.status_code == 403
    mine = amber.api.post(f"/v1/requests/{cancelled['id']}/cancel", headers=amber.headers("bob", "engineering"))
    assert mine.json()["status"] == "cancelled"


def test_requester_ends_grant_early_and_live_session_is_cut(amber: Amber) -> None:
    body = amber.request("alice", "engineering", "oncall")
    conn = connect_as(body["credential"]["url"])
    assert conn.execute("SELECT 1").fetchone() == (1,)
    response = amber.api.post(
        f"/v1/grants/{body['grant']['id']}/revoke",
        json={"reason": "done early"},
        headers=amber.headers("alice", "engineering"),
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "revoked"
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    assert not amber.role_exists(body["grant"]["role"])
    again = amber.api.post(
        f"/v1/grants/{body['grant']['id']}/revoke", json={}, headers=amber.headers("alice", "engineering")
    )
    assert again.status_code == 409


def test_only_grantee_or_admin_can_revoke(amber: Amber) -> None:
    body = amber.request("alice", "engineering", "oncall")
    stranger = amber.api.post(
        f"/v1/grants/{body['grant']['id']}/revoke", json={}, headers=amber.headers("mallory", "engineering")
    )
    assert stranger.status_code == 403
    admin = amber.api.post(
        f"/v1/grants/{body['grant']['id']}/revoke",
        json={"reason": "incident over"},
        headers=amber.headers("root", "platform"),
    )
    assert admin.json()["status"] == "revoked"


def test_live_psql_session_is_terminated_at_expiry(amber: Amber) -> None:
    body = amber.request("alice", "engineering", "oncall", duration="10m")
    url = body["credential"]["url"]
    psql = subprocess.Popen(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-c", "SELECT pg_sleep(60)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        with connect_as(amber.target_url) as admin:
            while time.monotonic() < deadline:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (body["grant"]["role"],)
                ).fetchone()
                if row and row[0] > 0:
                    break
                time.sleep(0.05)
        assert amber.tick() == []  # not yet due
        assert psql.poll() is None
        amber.clock.advance(timedelta(minutes=10))
        assert amber.tick() == [body["grant"]["id"]]
        _, stderr = psql.communicate(timeout=10)
    finally:
        psql.kill()
    assert psql.returncode != 0
    assert "terminating connection" in stderr
    grant = amber.api.get(f"/v1/grants/{body['grant']['id']}", headers=amber.headers("alice", "engineering"))
    assert grant.json()["status"] == "expired"
    assert not amber.role_exists(body["grant"]["role"])
    relogin = subprocess.run(["psql", url, "-c", "SELECT 1"], capture_output=True, text=True, timeout=10, check=False)
    assert relogin.returncode != 0


def test_listing_scopes(amber: Amber) -> None:
    mine = amber.request("bob", "engineering")
    amber.request("alice", "engineering", "oncall")
    listed = amber.api.get("/v1/requests", headers=amber.headers("bob", "engineering")).json()
    assert [row["id"] for row in listed] == [mine["id"]]
    inbox = amber.api.get(
        "/v1/requests", params={"scope": "to_approve"}, headers=amber.headers("carol", "leads")
    ).json()
    assert [row["id"] for row in inbox] == [mine["id"]]
    forbidden = amber.api.get("/v1/requests", params={"scope": "all"}, headers=amber.headers("bob", "engineering"))
    assert forbidden.status_code == 403
    everything = amber.api.get("/v1/requests", params={"scope": "all"}, headers=amber.headers("sue", "security"))
    assert len(everything.json()) == 2
    hidden = amber.api.get(f"/v1/requests/{mine['id']}", headers=amber.headers("mallory", "engineering"))
    assert hidden.status_code == 404


def test_an_inbox_finds_what_its_reader_may_act_on_behind_what_they_may_not(
    amber: Amber, monkeypatch: pytest.MonkeyPatch
) -> None:
    """olga (team-orders owns orders-db) may approve read-only requests but not two-approvals ones (leads only):
    her inbox pages past the newer requests she cannot act on (pages of 3 here; the clock stands still, so
    every request has the same submitted_at and pages are told apart by id)."""
    from amber.access_requests import queries

    monkeypatch.setattr(queries, "INBOX_PAGE", 3)
    hers = amber.request("bob", "engineering")
    for i in range(7):
        amber.request(f"eve{i}", "engineering", level="two-approvals")
    inbox = amber.api.get(
        "/v1/requests", params={"scope": "to_approve", "limit": 1}, headers=amber.headers("olga", "team-orders")
    )
    assert [row["id"] for row in inbox.json()] == [hers["id"]]
    leads = amber.api.get(
        "/v1/requests", params={"scope": "to_approve", "limit": 3}, headers=amber.headers("carol", "leads")
    ).json()
    assert len(leads) == 3
    assert hers["id"] not in [row["id"] for row in leads]  # the newest three
    every = amber.api.get(
        "/v1/requests", params={"scope": "to_approve", "limit": 100}, headers=amber.headers("carol", "leads")
    ).json()
    assert len(every) == len({row["id"] for row in every}) == 8  # paged without repeating or skipping
    nobody = amber.api.get(
        "/v1/requests", params={"scope": "to_approve", "limit": 1}, headers=amber.headers("mallory", "engineering")
    )
    assert nobody.json() == []


def test_ledger_records_every_transition_and_verifies(amber: Amber) -> None:
    body = amber.request("alice", "engineering", "oncall", duration="1m")
    amber.clock.advance(timedelta(minutes=2))
    amber.tick()
    response = amber.api.get("/v1/ledger", headers=amber.headers("sue", "security"))
    assert response.status_code == 200
    types = [entry["type"] for entry in response.json()["entries"]]
    assert types == [
        "policy.loaded",
        "catalog.loaded",
        "request.submitted",
        "request.decided",
        "request.approved",
        "grant.issued",
        "grant.activated",
        "grant.credential_issued",
        "grant.expired",
        "grant.deprovisioned",
    ]
    entries = response.json()["entries"]
    assert entries[0]["payload"]["policy_hash"] == amber.rt.catalog.policies().hash
    entries = entries[2:]
    assert entries[0]["actor"]["sub"] == "dev:alice"
    assert entries[0]["actor"]["iss"] == "http://amber.test/dev-issuer"
    assert entries[1]["payload"]["policy_hash"] == amber.rt.catalog.policies().hash
    assert entries[1]["payload"]["policy_ids"] == ["oncall-at-once"]
    assert entries[3]["subject"]["id"] == body["grant"]["id"]
    verified = amber.api.get("/v1/ledger/verify", headers=amber.headers("sue", "security")).json()
    assert verified == {"ok": True, "entries": 10, "head_hash": entries[-1]["entry_hash"], "problems": []}
    assert amber.api.get("/v1/ledger", headers=amber.headers("bob", "engineering")).status_code == 403
