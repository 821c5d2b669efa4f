"""Two amber processes sharing one state database: a grant revoked through one is cut on the other's gateway."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from amber.api.app import create_app
from amber.core.clock import FrozenClock
from amber.gateway.watch import ended_grants
from amber.grants.models import Grant
from tests.conftest import Amber, build_runtime
from tests.gateway.conftest import gateway_credential


def keep_reading(conn: psycopg.Connection[Any]) -> None:
    for _ in range(200):
        conn.execute("SELECT 1")
        time.sleep(0.01)


def test_revocation_in_another_process_cuts_sessions_here_within_a_second(
    gw: Amber, state_url: str, catalog_path: Path, tmp_path: Path, clock: FrozenClock
) -> None:
    # Replica B: same state database and secret key (same state dir), its own gateway. Nothing links the two
    # but the database: B never hears A's in-process hook.
    replica = build_runtime(
        state_url,
        catalog_path,
        tmp_path,
        clock,
        gateway_port=0,
        gateway_recorder_process=False,
        gateway_watch_interval_s=0.1,
    )
    try:
        with TestClient(create_app(replica, run_worker=False), raise_server_exceptions=False):
            assert replica.gateway is not None
            assert gw.rt.gateway is not None
            cred = gateway_credential(gw)
            url = str(cred["url"]).replace(f":{gw.rt.gateway.server.port}/", f":{replica.gateway.server.port}/")
            assert url != cred["url"]
            conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
            revoked = gw.api.post(
                f"/v1/grants/{cred['grant_id']}/revoke",
                json={"reason": "incident closed"},
                headers=gw.headers("alice", "engineering"),
            )
            assert revoked.status_code == 200
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError, match="was revoked: incident closed"):
                keep_reading(conn)
            assert time.monotonic() - started < 1.0
            conn.close()
            # The replica recorded the cut session's end with the reason.
            ended = ended_grants(replica.uow, [cred["grant_id"], "grt_does_not_exist"])
            assert ended == {cred["grant_id"]: "was revoked: incident closed"}
    finally:
        replica.close()


def test_ended_grants_asks_nothing_for_no_grants(gw: Amber) -> None:
    assert ended_grants(gw.rt.uow, []) == {}
    cred = gateway_credential(gw)
    assert ended_grants(gw.rt.uow, [cred["grant_id"]]) == {}  # active: not ended


def test_watcher_cuts_a_grant_ended_elsewhere_even_while_its_database_role_lives(
    gw: Amber, state_url: str, catalog_path: Path, tmp_path: Path, clock: FrozenClock
) -> None:
    # As when the replica that revoked cannot reach the target database yet: the state says revoked, the role and
    # its backend still exist. Only the watcher can end the session here.
    replica = build_runtime(
        state_url,
        catalog_path,
        tmp_path,
        clock,
        gateway_port=0,
        gateway_recorder_process=False,
        gateway_watch_interval_s=0.1,
    )
    try:
        with TestClient(create_app(replica, run_worker=False), raise_server_exceptions=False):
            assert replica.gateway is not None
            assert gw.rt.gateway is not None
            cred = gateway_credential(gw)
            url = str(cred["url"]).replace(f":{gw.rt.gateway.server.port}/", f":{replica.gateway.server.port}/")
            conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
            conn.execute("SELECT 1")
            with replica.uow() as session:
                session.execute(
                    update(Grant).where(Grant.id == cred["grant_id"]).values(status="revoked", end_reason="offboarded")
                )
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError, match=r"grant grt_\w+ was revoked: offboarded"):
                keep_reading(conn)
            assert time.monotonic() - started < 1.0
            conn.close()
            assert gw.role_exists(cred["role"])  # the database never ended it: the gateway did
    finally:
        replica.close()
