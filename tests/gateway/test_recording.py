"""The gateway's recorder against a real state database that stops taking writes: back-pressure, fail closed,
nothing lost."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import Amber
from tests.gateway.conftest import gateway_credential


@contextlib.contextmanager
def ledger_locked(state_url: str) -> Iterator[None]:
    """Hold a write lock on the ledger from another connection, as a long transaction or a stuck writer would."""
    if state_url.startswith("sqlite"):
        conn = sqlite3.connect(state_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    with psycopg.connect(state_url.replace("postgresql+psycopg", "postgresql")) as pg:
        pg.execute("LOCK TABLE ledger_tree_head IN EXCLUSIVE MODE")
        yield
        pg.rollback()


def rename_ledger_head(state_url: str, old: str, new: str) -> None:
    """A real failure of the ledger: the table appends need is gone (until renamed back)."""
    if state_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(state_url.removeprefix("sqlite:///"), isolation_level=None)) as conn:
            conn.execute(f"ALTER TABLE {old} RENAME TO {new}")
        return
    with psycopg.connect(state_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as pg:
        pg.execute(f"ALTER TABLE {old} RENAME TO {new}")


def statements(amber: Amber, grant_id: str) -> list[dict[str, Any]]:
    entries = amber.api.get(
        "/v1/ledger", params={"subject": grant_id, "limit": 1000}, headers=amber.headers("sue", "security")
    ).json()["entries"]
    return [e for e in entries if e["type"] == "gateway.statement"]


def wait_until(check: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return bool(check())


def test_a_stuck_ledger_stops_reading_clients_and_loses_nothing(gw: Amber, state_url: str) -> None:
    assert gw.rt.gateway is not None
    recorder = gw.rt.gateway.recorder
    recorder.queue_max = 3
    cred = gateway_credential(gw)
    done: list[int] = []
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        conn.execute("SELECT 0")
        with ledger_locked(state_url):

            def run() -> None:
                for i in range(1, 11):
                    conn.execute("SELECT %s::int", (i,))
                    done.append(i)

            client = threading.Thread(target=run)
            client.start()
            time.sleep(0.5)
            # The writer is stuck on the lock; the queue reached its limit and the gateway stopped reading.
            assert len(done) < 10
            assert recorder.queued <= recorder.queue_max + 1
            assert recorder.healthy  # stuck, not failing: nothing is refused
        client.join(10)
        assert done == list(range(1, 11))
    assert wait_until(lambda: len(statements(gw, cred["grant_id"])) == 11)
    recorded = [e["payload"]["statement"] for e in statements(gw, cred["grant_id"])]
    assert recorded == ["SELECT 0"] + ["SELECT $1::int"] * 10


def test_an_unwritable_ledger_refuses_statements_until_it_is_back(gw: Amber, state_url: str) -> None:
    assert gw.rt.gateway is not None
    recorder = gw.rt.gateway.recorder
    cred = gateway_credential(gw)
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        conn.execute("SELECT 1")
        assert wait_until(lambda: len(statements(gw, cred["grant_id"])) == 1)
        rename_ledger_head(state_url, "ledger_tree_head", "ledger_tree_head_away")
        try:
            conn.execute("SELECT 2")  # allowed and queued; its entry cannot be written
            assert wait_until(lambda: not recorder.healthy)
            with pytest.raises(psycopg.Error, match="ledger is unavailable") as refused:
                conn.execute("SELECT 3")
            assert refused.value.sqlstate == "25006"
        finally:
            rename_ledger_head(state_url, "ledger_tree_head_away", "ledger_tree_head")
        assert wait_until(lambda: recorder.healthy)
        assert conn.execute("SELECT 4").fetchone() == (4,)
    assert wait_until(lambda: len(statements(gw, cred["grant_id"])) == 4)
    outcomes = [(e["payload"]["statement"], e["payload"]["outcome"]) for e in statements(gw, cred["grant_id"])]
    assert outcomes == [
        ("SELECT 1", "allowed"),
        ("SELECT 2", "allowed"),
        ("SELECT 3", "refused"),
        ("SELECT 4", "allowed"),
    ]
    verified = gw.api.get("/v1/ledger/verify", headers=gw.headers("sue", "security")).json()
    assert verified["ok"], verified


def test_back_pressure_counts_bytes_so_large_statements_cannot_pile_up(gw: Amber, state_url: str) -> None:
    assert gw.rt.gateway is not None
    recorder = gw.rt.gateway.recorder
    recorder.queue_max_bytes = 2 * 1024 * 1024  # about two of the statements below
    cred = gateway_credential(gw)
    big = "SELECT length('" + "x" * 900_000 + "')"
    done: list[int] = []
    with psycopg.connect(cred["url"], autocommit=True) as conn:
        conn.execute("SELECT 0")
        with ledger_locked(state_url):

            def run() -> None:
                for i in range(1, 7):
                    conn.execute(big)  # type: ignore[arg-type] - a test string
                    done.append(i)

            client = threading.Thread(target=run)
            client.start()
            time.sleep(0.5)
            assert len(done) < 6  # the queue holds ~2 MiB, far below its 10,000-entry limit, and stopped reading
            assert recorder.queued <= 4
        client.join(10)
        assert done == list(range(1, 7))
    assert wait_until(lambda: len(statements(gw, cred["grant_id"])) == 7)
    assert [len(e["payload"]["statement"]) for e in statements(gw, cred["grant_id"])][1:] == [len(big)] * 6
