"""Policy workflow end to end: pinned decisions, approver groups now, pending expiry, scheduled starts,
single-use grants, break-glass with notification and review, explanations."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, ClassVar

import psycopg
import pytest

from tests.conftest import Amber, connect_as

EXTRA = """
@id("contractors-once")
@approvals("1")
@approvers("leads")
@single_use
permit (principal in Amber::Group::"contractors", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/read-only");

@id("sre-break-glass")
@max_ttl("1h")
permit (principal in Amber::Group::"sre", action == Amber::Action::"break_glass", resource);

@id("auditors-need-security-and-owner")
@approvals("2")
@approvers_all("security, owners")
permit (principal in Amber::Group::"auditors", action == Amber::Action::"request",
        resource == Amber::Level::"orders-db/read-only");
"""


@pytest.fixture
def wf(amber: Amber) -> Amber:
    (amber.rt.catalog().bundle_path / "extra.cedar").write_text(EXTRA)
    amber.rt.reload_catalog()
    return amber


def post(amber: Amber, path: str, user: str, *groups: str, body: dict[str, Any] | None = None) -> Any:
    return amber.api.post(path, json=body if body is not None else {}, headers=amber.headers(user, *groups))


def test_pending_request_keeps_its_decision_when_the_bundle_changes(wf: Amber) -> None:
    pending = wf.request("bob", "engineering")
    old_hash = pending["decision"]["policy_hash"]
    policies = wf.rt.catalog().bundle_path
    main = policies / "main.cedar"
    # New policy: engineers may no longer ask, and leads may no longer approve.
    main.write_text(
        main.read_text().replace(
            'principal in Amber::Group::"engineering", action', 'principal in Amber::Group::"nobody", action'
        )
    )
    (policies / "freeze.cedar").write_text(
        '@id("freeze")\n@message("change freeze: no approvals by leads")\n'
        'forbid (principal in Amber::Group::"leads", action == '
        'Amber::Action::"approve", resource);\n'
    )
    wf.rt.reload_catalog()
    assert wf.rt.catalog.policies().hash != old_hash
    shown = wf.api.get(f"/v1/requests/{pending['id']}", headers=wf.headers("bob", "engineering")).json()
    assert shown["status"] == "pending"
    assert shown["decision"]["policy_hash"] == old_hash  # the version that decided it
    refused = post(wf, f"/v1/requests/{pending['id']}/approve", "carol", "leads")
    assert refused.status_code == 403
    assert "change freeze: no approvals by leads" in refused.json()["detail"]  # checked against today's policy
    owner = post(wf, f"/v1/requests/{pending['id']}/approve", "olga", "team-orders")
    assert owner.json()["status"] == "approved"
    explained = wf.api.get(f"/v1/requests/{pending['id']}/explain", headers=wf.headers("bob", "engineering")).json()
    assert explained["decided_by_running_bundle"] is False
    assert explained["policy_hash"] == old_hash


def test_approvers_are_judged_by_their_groups_at_approval_time(wf: Amber) -> None:
    pending = wf.request("bob", "engineering")
    # Dave was not a lead when bob asked; his token says he is now, so he may approve.
    left = post(wf, f"/v1/requests/{pending['id']}/approve", "carol", "engineering")  # carol left the leads
    assert left.status_code == 403
    assert "not in an approver group" in left.json()["detail"]
    joined = post(wf, f"/v1/requests/{pending['id']}/approve", "dave", "engineering", "leads")  # shares a group
    assert joined.status_code == 200, joined.text
    assert joined.json()["status"] == "approved"
    approvals = wf.api.get(f"/v1/requests/{pending['id']}", headers=wf.headers("bob", "engineering")).json()
    assert approvals["approvals"][0]["approver"]["name"] == "dave"


def test_requester_groups_changing_after_submission_do_not_change_the_decision(wf: Amber) -> None:
    pending = wf.request("bob", "engineering")
    # bob later shows a token with oncall: the pending request is still the one he submitted.
    again = wf.api.get(f"/v1/requests/{pending['id']}", headers=wf.headers("bob", "engineering", "oncall")).json()
    assert again["status"] == "pending"
    assert again["decision"]["outcome"] == "require_approval"
    # A new request with his new groups gets a new decision, on record as its own request.
    fresh = wf.request("bob", "engineering", "oncall")
    assert fresh["status"] == "approved"


def test_all_of_several_groups(wf: Amber) -> None:
    pending = wf.request("ann", "auditors")
    assert pending["decision"]["approver_all_groups"] == ["security", "team-orders"]
    first = post(wf, f"/v1/requests/{pending['id']}/approve", "sec1", "security")
    assert first.json()["status"] == "pending"
    second = post(wf, f"/v1/requests/{pending['id']}/approve", "sec2", "security")
    assert second.json()["status"] == "pending"  # two approvals, but none from the owners yet
    third = post(wf, f"/v1/requests/{pending['id']}/approve", "olga", "team-orders")
    assert third.json()["status"] == "approved"


def test_pending_requests_expire(wf: Amber) -> None:
    pending = wf.request("bob", "engineering")
    assert pending["pending_expires_at"] is not None
    wf.clock.advance(timedelta(hours=23))
    wf.tick()
    assert wf.api.get(f"/v1/requests/{pending['id']}", headers=wf.headers("bob")).json()["status"] == "pending"
    wf.clock.advance(timedelta(hours=2))
    wf.tick()
    late = post(wf, f"/v1/requests/{pending['id']}/approve", "carol", "leads")
    assert late.status_code == 409
    shown = wf.api.get(f"/v1/requests/{pending['id']}", headers=wf.headers("bob")).json()
    assert shown["status"] == "expired"
    entries = wf.api.get("/v1/ledger", params={"subject": pending["id"]}, headers=wf.headers("sue", "security"))
    assert entries.json()["entries"][-1]["type"] == "request.expired"


def test_scheduled_access_starts_later_and_expiry_is_fixed_at_approval(wf: Amber) -> None:
    start = wf.clock.now() + timedelta(hours=2)
    response = wf.api.post(
        "/v1/requests",
        headers=wf.headers("alice", "engineering", "oncall"),
        json={
            "resource": "orders-db",
            "level": "read-only",
            "reason": "night migration INC-9",
            "duration": "1h",
            "start": start.isoformat(),
        },
    )
    body = response.json()
    assert body["status"] == "approved"
    grant = body["grant"]
    assert grant["status"] == "issued"
    assert body["credential"] is None
    assert datetime.fromisoformat(grant["expires_at"]) == start + timedelta(hours=1)
    assert not wf.role_exists(grant["role"])
    early = post(wf, f"/v1/grants/{grant['id']}/credentials", "alice", "engineering")
    assert early.status_code == 409
    wf.clock.advance(timedelta(hours=1))
    wf.tick()
    assert not wf.role_exists(grant["role"])
    wf.clock.advance(timedelta(hours=1))
    wf.tick()
    assert wf.role_exists(grant["role"])
    claim = post(wf, f"/v1/grants/{grant['id']}/credentials", "alice", "engineering")
    assert claim.status_code == 200, claim.text
    with connect_as(claim.json()["url"]) as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
    wf.clock.advance(timedelta(hours=1))
    assert wf.tick() == [grant["id"]]


def test_single_use_grant_is_revoked_when_its_session_ends(wf: Amber) -> None:
    pending = wf.request("cody", "contractors")
    approved = post(wf, f"/v1/requests/{pending['id']}/approve", "carol", "leads").json()
    grant = approved["grant"]
    claim = post(wf, f"/v1/grants/{grant['id']}/credentials", "cody", "contractors").json()
    with connect_as(wf.target_url) as admin:
        limit = admin.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (grant["role"],)).fetchone()
    assert limit == (1,)
    wf.tick()  # no session yet: nothing happens
    assert wf.role_exists(grant["role"])
    conn = connect_as(claim["url"])
    conn.execute("SELECT 1")
    wf.tick()  # session seen
    with pytest.raises(psycopg.OperationalError):
        connect_as(claim["url"])  # one session at a time
    conn.close()
    gone_by = time.monotonic() + 5  # the backend leaves pg_stat_activity a moment after the client hangs up
    with connect_as(wf.target_url) as admin:
        while admin.execute("SELECT 1 FROM pg_stat_activity WHERE usename = %s", (grant["role"],)).fetchone():
            assert time.monotonic() < gone_by, "the session did not end"
            time.sleep(0.01)
    wf.tick()  # session gone: the grant is used up
    shown = wf.api.get(f"/v1/grants/{grant['id']}", headers=wf.headers("cody", "contractors")).json()
    assert shown["status"] == "revoked"
    assert shown["end_reason"] == "single-use grant: its session ended"
    assert not wf.role_exists(grant["role"])


class Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    fail_first: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if Receiver.fail_first > 0:
            Receiver.fail_first -= 1
            self.send_response(503)
        else:
            Receiver.received.append({"body": body, "signature": self.headers.get("x-amber-signature")})
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


@pytest.fixture
def webhook() -> Iterator[str]:
    Receiver.received = []
    Receiver.fail_first = 1
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_break_glass_grants_at_once_notifies_and_requires_review(wf: Amber, webhook: str) -> None:
    from amber.access_requests.notify import WebhookNotifier

    wf.rt.requests._notifier = WebhookNotifier(webhook, "s3cret")
    response = wf.api.post(
        "/v1/requests",
        headers=wf.headers("sam", "sre"),
        json={
            "resource": "orders-db",
            "level": "read-only",
            "reason": "orders API down, INC-77",
            "duration": "3h",
            "break_glass": True,
        },
    )
    body = response.json()
    assert body["status"] == "approved"
    assert body["break_glass"] is True
    assert body["review_status"] == "required"
    assert body["grant"]["status"] == "active"
    assert body["decision"]["granted_ttl_s"] == 3600
    with connect_as(body["credential"]["url"]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    assert wf.rt.requests.deliver_notifications() == 0  # the receiver fails once...
    assert Receiver.received == []
    wf.clock.advance(timedelta(seconds=5))
    assert wf.rt.requests.deliver_notifications() == 1  # ...and amber retries
    notice = Receiver.received[0]
    assert notice["body"]["recipients"] == ["security", "team-orders"]
    assert "BREAK-GLASS: sam" in notice["body"]["message"]
    assert notice["signature"].startswith("sha256=")
    assert wf.rt.requests.deliver_notifications() == 0  # delivered once

    inbox = wf.api.get("/v1/requests", params={"scope": "to_review"}, headers=wf.headers("olga", "team-orders"))
    assert [r["id"] for r in inbox.json()] == [body["id"]]
    own = post(wf, f"/v1/requests/{body['id']}/review", "sam", "sre", "team-orders", body={"comment": "fine"})
    assert own.status_code == 403
    stranger = post(wf, f"/v1/requests/{body['id']}/review", "eve", "marketing", body={"comment": "fine"})
    assert stranger.status_code == 403
    done = post(
        wf,
        f"/v1/requests/{body['id']}/review",
        "olga",
        "team-orders",
        body={"comment": "checked the queries: only orders"},
    )
    assert done.status_code == 200, done.text
    assert done.json()["review_status"] == "done"
    assert (
        wf.api.get("/v1/requests", params={"scope": "to_review"}, headers=wf.headers("olga", "team-orders")).json()
        == []
    )
    entries = wf.api.get("/v1/ledger", params={"subject": body["id"]}, headers=wf.headers("sue", "security")).json()
    types = [e["type"] for e in entries["entries"]]
    assert "request.break_glass" in types
    assert types[-1] == "request.review_completed"


def test_break_glass_refused_without_policy(wf: Amber) -> None:
    response = wf.api.post(
        "/v1/requests",
        headers=wf.headers("bob", "engineering"),
        json={"resource": "orders-db", "level": "read-only", "reason": "INC-1", "duration": "1h", "break_glass": True},
    )
    assert response.json()["status"] == "denied"
    assert response.json()["decision"]["reasons"] == ["no policy permits bob to break glass on orders-db/read-only"]


def test_explain_names_policy_file_and_line(wf: Amber) -> None:
    body = wf.request("alice", "engineering", "oncall")
    explained = wf.api.get(f"/v1/requests/{body['id']}/explain", headers=wf.headers("alice", "engineering"))
    data = explained.json()
    assert data["decided_by_running_bundle"] is True
    assert data["policies"][0]["id"] == "oncall-at-once"
    assert data["policies"][0]["where"] == f"{wf.rt.catalog().bundle_path / 'main.cedar'}:8"
    assert "@auto_approve" in data["policies"][0]["text"]
    hidden = wf.api.get(f"/v1/requests/{body['id']}/explain", headers=wf.headers("mallory", "engineering"))
    assert hidden.status_code == 404
