"""The worker: catch-up after downtime, retries, and the reconciler dropping roles no live grant owns."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from amber import audit
from amber.core.ids import new_id
from amber.grants import Activation, Grant, role_name_for
from amber.provisioners import GrantSpec
from tests.conftest import Amber, build_runtime, connect_as


def test_restart_with_overdue_grants_revokes_them_first(
    amber: Amber, state_url: str, catalog_path: Path, tmp_path: Path
) -> None:
    body = amber.request("alice", "engineering", "oncall", duration="5m")
    session = connect_as(body["credential"]["url"])
    amber.rt.close()  # amber goes down with a live grant and a live session

    amber.clock.advance(timedelta(minutes=30))  # ...and stays down past the expiry
    restarted = build_runtime(state_url, catalog_path, tmp_path, amber.clock)
    try:
        restarted.worker.startup()
        with restarted.uow() as db:
            grant = db.scalar(select(Grant).where(Grant.id == body["grant"]["id"]))
            assert grant is not None
            assert grant.status == "expired"
            assert grant.deprovisioned_at is not None
            assert audit.verify(db).ok
    finally:
        restarted.close()
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    assert not amber.role_exists(body["grant"]["role"])


def test_role_created_but_never_committed_is_dropped_by_the_reconciler(amber: Amber) -> None:
    # A crash between CREATE ROLE and the commit of its grant leaves a role that no grant row owns.
    ghost_id = new_id("grt")
    spec = GrantSpec(
        grant_id=ghost_id,
        role_name=role_name_for(ghost_id),
        owner_tag=amber.rt.installation_id,
        expires_at=amber.clock.now() + timedelta(hours=1),
        schemas=("public",),
        statement_timeout=timedelta(seconds=5),
        connection_limit=1,
    )
    amber.rt.provisioners("orders-db").provision(spec)
    assert amber.role_exists(spec.role_name)

    live = amber.request("alice", "engineering", "oncall")  # a legitimate grant must survive reconciliation
    dropped = amber.rt.grants.reconcile()

    assert dropped == [spec.role_name]
    assert not amber.role_exists(spec.role_name)
    assert amber.role_exists(live["grant"]["role"])
    ledger_rows = amber.api.get("/v1/ledger", headers=amber.headers("sue", "security")).json()["entries"]
    assert ledger_rows[-1]["type"] == "role.orphan_dropped"
    assert ledger_rows[-1]["payload"] == {"resource": "orders-db", "grant_id": ghost_id}


def test_roles_of_another_installation_are_left_alone(amber: Amber) -> None:
    foreign_id = new_id("grt")
    spec = GrantSpec(
        grant_id=foreign_id,
        role_name=role_name_for(foreign_id),
        owner_tag="someone-else",
        expires_at=amber.clock.now() + timedelta(hours=1),
        schemas=("public",),
        statement_timeout=timedelta(seconds=5),
        connection_limit=1,
    )
    provisioner = amber.rt.provisioners("orders-db")
    provisioner.provision(spec)
    try:
        assert amber.rt.grants.reconcile() == []
        assert amber.role_exists(spec.role_name)
    finally:
        with connect_as(amber.target_url) as conn:
            conn.execute(f'DROP OWNED BY "{spec.role_name}"')
            conn.execute(f'DROP ROLE "{spec.role_name}"')


def test_provisioned_then_crashed_before_activation_is_finished_by_the_worker(amber: Amber) -> None:
    body = amber.request("bob", "engineering")
    # Simulate: the approval committed (grant issued) but amber died before provisioning finished.
    original = amber.rt.grants.activate

    def crash(grant_id: str, *, with_credential: bool) -> Activation:
        grant = amber.rt.grants._note_failure(grant_id, "simulated crash")
        return Activation(grant, error="simulated crash")

    amber.rt.grants.activate = crash  # type: ignore[method-assign]
    try:
        approved = amber.api.post(
            f"/v1/requests/{body['id']}/approve", json={}, headers=amber.headers("carol", "leads")
        )
    finally:
        amber.rt.grants.activate = original  # type: ignore[method-assign]
    grant_id = approved.json()["grant"]["id"]
    assert approved.json()["grant"]["status"] == "issued"
    amber.clock.advance(timedelta(seconds=5))  # past the back-off
    amber.tick()
    grant = amber.api.get(f"/v1/grants/{grant_id}", headers=amber.headers("bob", "engineering")).json()
    assert grant["status"] == "active"
    assert grant["last_error"] is None
    claim = amber.api.post(f"/v1/grants/{grant_id}/credentials", headers=amber.headers("bob", "engineering"))
    with connect_as(claim.json()["url"]) as conn:
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)


def test_target_down_fails_closed_and_retries(amber: Amber, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMBER_TEST_TARGET_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    body = amber.request("alice", "engineering", "oncall")
    assert body["status"] == "approved"
    assert body["grant"]["status"] == "issued"
    assert body["credential"] is None
    assert "PostgreSQL" in body["grant"]["last_error"]
    assert "postgres@" not in body["grant"]["last_error"]  # never leak the admin DSN
    monkeypatch.setenv("AMBER_TEST_TARGET_URL", amber.target_url)
    amber.clock.advance(timedelta(seconds=5))
    amber.tick()
    grant = amber.api.get(f"/v1/grants/{body['grant']['id']}", headers=amber.headers("alice", "engineering")).json()
    assert grant["status"] == "active"


def test_grant_expiring_while_never_provisioned_is_expired_cleanly(
    amber: Amber, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMBER_TEST_TARGET_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    body = amber.request("alice", "engineering", "oncall", duration="1m")
    monkeypatch.setenv("AMBER_TEST_TARGET_URL", amber.target_url)
    amber.clock.advance(timedelta(minutes=2))
    assert amber.tick() == [body["grant"]["id"]]
    with amber.rt.uow() as db:
        grant = db.scalar(select(Grant).where(Grant.id == body["grant"]["id"]))
        assert grant is not None
        assert (grant.status, grant.activated_at) == ("expired", None)
        assert audit.verify(db).ok
    assert not amber.role_exists(body["grant"]["role"])
