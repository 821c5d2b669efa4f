"""The child-process ledger writer `amber serve` uses: entries land, a killed child is replaced, nothing lost."""

from __future__ import annotations

import hashlib
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


def test_statements_are_recorded_whole_up_to_a_mebibyte_and_larger_ones_say_they_were_cut(gwp: Amber) -> None:
    cred = gateway_credential(gwp)
    whole = "SELECT length('" + "é" * 500_000 + "')"  # 1,000,017 bytes of UTF-8 (500,017 characters)
    big = "SELECT length('" + "é" * 600_000 + "') AS n"  # 1,200,022 bytes
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        assert conn.execute(whole).fetchone() == (500_000,)  # type: ignore[call-overload]
        assert conn.execute(big).fetchone() == (600_000,)  # type: ignore[call-overload]
    found = wait_for(gwp, cred["grant_id"], 2)
    by_length = sorted(found, key=lambda e: len(e["payload"]["statement"]))
    kept, cut = by_length[0]["payload"], by_length[1]["payload"]
    assert kept["statement"] == whole
    assert "statement_truncated" not in kept
    assert cut["statement_truncated"] is True
    assert cut["statement_bytes"] == len(big.encode()) == 1_200_022
    assert cut["statement_sha256"] == hashlib.sha256(big.encode()).hexdigest()
    assert len(cut["statement"].encode()) <= 1024 * 1024
    assert big.startswith(cut["statement"])
    verified = gwp.api.get("/v1/ledger/verify", headers=gwp.headers("sue", "security")).json()
    assert verified["ok"], verified
