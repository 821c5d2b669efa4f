"""A running amber with its gateway on a free loopback port, for gateway tests (both state stores)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from amber.api.app import create_app
from amber.core.clock import FrozenClock
from tests.conftest import Amber, build_runtime, drop_roles_tagged


@contextmanager
def running(
    state_url: str,
    catalog_path: Path,
    tmp_path: Path,
    clock: FrozenClock,
    target_db: str,
    target_url: str,
    *,
    recorder_process: bool,
) -> Iterator[Amber]:
    rt = build_runtime(
        state_url, catalog_path, tmp_path, clock, gateway_port=0, gateway_recorder_process=recorder_process
    )
    try:
        with TestClient(create_app(rt, run_worker=False), raise_server_exceptions=False) as api:
            yield Amber(rt=rt, api=api, clock=clock, target_db=target_db, target_url=target_url)
    finally:
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)


@pytest.fixture
def gw(
    state_url: str, catalog_path: Path, tmp_path: Path, clock: FrozenClock, target_db: str, target_url: str
) -> Iterator[Amber]:
    # NOTE: ledger entries are written in-process here; test_recorder_process.py covers the child writer.
    with running(state_url, catalog_path, tmp_path, clock, target_db, target_url, recorder_process=False) as amber:
        yield amber


def gateway_credential(amber: Amber, user: str = "alice", duration: str = "30m") -> dict[str, Any]:
    body = amber.request(user, "engineering", "oncall", level="gateway", duration=duration)
    assert body["status"] == "approved", body
    assert body["grant"]["status"] == "active", body["grant"]
    credential: dict[str, Any] = body["credential"]
    credential["grant_id"] = body["grant"]["id"]
    credential["role"] = body["grant"]["role"]
    return credential
