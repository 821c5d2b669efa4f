"""The child-process ledger writer `amber serve` uses: entries land, a killed child is replaced, nothing lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from amber.core.clock import FrozenClock
from tests.conftest import Amber
from tests.gateway.conftest import gateway_credential, running


@pytest.fixture
def gwp(
    state_url: str, catalog_path: Path, tmp_path: Path, clock: FrozenClock, target_db: str, target_url: str
) -> Iterator[Amber]:
    with running(state_url, catalog_path, tmp_path, clock, target_db, target_url, recorder_process=True) as amber:
        yield amber


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
