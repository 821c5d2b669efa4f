"""The child-process ledger writer `amber serve` uses: entries land, a killed child is replaced, nothing lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from amber.api.app import create_app
from amber.core.clock import FrozenClock
from tests.conftest import Amber, build_runtime, drop_roles_tagged
from tests.gateway.conftest import gateway_credential


@pytest.fixture
def gwp(
    state_url: str, catalog_path: Path, tmp_path: Path, clock: FrozenClock, target_db: str, target_url: str
) -> Iterator[Amber]:
    rt = build_runtime(state_url, catalog_path, tmp_path, clock, gateway_port=0, gateway_recorder_process=True)
    try:
        with TestClient(create_app(rt, run_worker=False), raise_server_exceptions=False) as api:
            yield Amber(rt=rt, api=api, clock=clock, target_db=target_db, target_url=target_url)
    finally:
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)


def statements(amber: Amber, grant_id: str) -> list[dict]:  # type: ignore[type-arg]
    entries = amber.api.get(
        "/v1/ledger", params={"subject": grant_id, "limit": 1000}, headers=amber.headers("sue", "security")
    ).json()["entries"]
    return [e for e in entries if e["type"] == "gateway.statement"]


def wait_for(amber: Amber, grant_id: str, count: int) -> list[dict]:  # type: ignore[type-arg]
    for _ in range(200):
        found = statements(amber, grant_id)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return statements(amber, grant_id)


def test_child_writer_records_and_survives_being_killed(gwp: Amber) -> None:
    cred = gateway_credential(gwp)
    assert gwp.rt.gateway is not None
    recorder = gwp.rt.gateway.recorder
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        for i in range(5):
            conn.execute("SELECT %s::int", (i,))
        assert len(wait_for(gwp, cred["grant_id"], 5)) == 5
        child = recorder._child  # the test kills the child on purpose
        assert child is not None
        assert child._proc is not None
        child._proc.kill()
        child._proc.join(5)
        for i in range(5):
            conn.execute("SELECT %s::int", (i,))
    found = wait_for(gwp, cred["grant_id"], 10)
    assert len(found) == 10  # a new child took over; nothing was lost
    verified = gwp.api.get("/v1/ledger/verify", headers=gwp.headers("sue", "security")).json()
    assert verified["ok"], verified
