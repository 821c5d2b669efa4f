"""The checkpoint thread of a running server (uvicorn + the app's lifespan, as `amber serve` runs it).

Checkpoints are signed every N entries or S seconds, where S is read on the injected FrozenClock (the test
moves it; nothing sleeps for seconds); the thread itself polls every 10 ms of real time. Every checkpoint
reaches the configured file witness, and a graceful shutdown stops the thread after a last checkpoint.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from sqlalchemy.exc import OperationalError

from amber import audit, ledger
from amber.api.app import create_app
from amber.api.runtime import Runtime
from amber.core.clock import FrozenClock
from amber.core.settings import Settings
from amber.ledger import checkpoints
from amber.ledger.checkpointer import Checkpointer
from amber.ledger.checkpoints import CheckpointView
from tests.conftest import Amber, drop_roles_tagged, free_port

EVERY_ENTRIES = 5
INTERVAL = timedelta(seconds=60)
THREAD = "amber-ledger-checkpoints"
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = 10.0) -> T:
    """Wait for another thread (the checkpointer) to make `probe` true. A bound, not a sleep: it returns as
    soon as the thread did its part, and fails the test if it never does."""
    deadline = time.monotonic() + timeout_s
    while not (value := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)
    return value


@dataclass
class Served:
    rt: Runtime
    url: str
    clock: FrozenClock
    witness: Path
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def checkpointer(self) -> Checkpointer:
        assert self.rt.checkpointer is not None
        return self.rt.checkpointer

    def size(self) -> int:
        with self.rt.uow() as session:
            return ledger.head(session)[0]

    def checkpoints(self) -> list[CheckpointView]:
        with self.rt.uow() as session:
            return checkpoints.checkpoints(session)

    def witnessed(self) -> list[dict[str, Any]]:
        if not self.witness.exists():
            return []
        return [json.loads(line) for line in self.witness.read_text().splitlines()]

    def rounds(self, count: int = 2) -> None:
        """Wait until the thread completed `count` more rounds: the last of them started after this call, so it
        has seen everything committed before it."""
        start = self.checkpointer.rounds
        eventually(lambda: self.checkpointer.rounds >= start + count, f"{count} checkpointer rounds")

    def headers(self, user: str, *groups: str) -> dict[str, str]:
        assert self.rt.dev_issuer is not None
        return {"authorization": f"Bearer {self.rt.dev_issuer.mint(user, list(groups))}"}

    def pending_request(self, user: str) -> None:
        """A request that needs approval: two entries (submitted, decided), over HTTP."""
        body = {"resource": "orders-db", "level": "read-only", "reason": "INC-7", "duration": "30m"}
        response = httpx.post(f"{self.url}/v1/requests", json=body, headers=self.headers(user, "engineering"))
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "pending"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive()


@pytest.fixture
def served(
    state_url: str, catalog_path: Path, tmp_path: Path, clock: FrozenClock, target_db: str, target_url: str
) -> Iterator[Served]:
    port = free_port()
    witness = tmp_path / "witness.jsonl"
    settings = Settings(
        env="development",  # as `make run` runs `amber serve`; AMBER_ENV=test keeps the thread off
        state_dir=tmp_path / "state",
        database_url=state_url,
        catalog=catalog_path,
        port=port,
        ledger_checkpoint_every_entries=EVERY_ENTRIES,
        ledger_checkpoint_interval_s=INTERVAL.total_seconds(),
        ledger_checkpoint_poll_s=0.01,
        ledger_witnesses=[{"kind": "file", "name": "disk", "path": str(witness)}],
    )
    rt = Runtime.build(settings, clock=clock)
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    eventually(lambda: server.started, "the server to start")
    try:
        yield Served(rt, f"http://127.0.0.1:{port}", clock, witness, server, thread)
    finally:
        server.should_exit = True
        thread.join(15)
        rt.close()
        drop_roles_tagged(rt.installation_id, target_db)


def test_a_running_server_signs_by_count_and_by_time_publishes_and_signs_a_last_checkpoint(served: Served) -> None:
    s = served
    (thread,) = [t for t in threading.enumerate() if t.name == THREAD]
    signed_at = s.clock.now()
    # Start-up appended catalog.loaded and policy.loaded; with no checkpoint yet, the first round signs them.
    (first,) = eventually(s.checkpoints, "the first checkpoint")
    assert (first.tree_size, first.signed_at) == (2, signed_at)

    # By count: four new entries (< 5) and no time passing sign nothing; the fifth and sixth do.
    s.pending_request("alice")
    s.pending_request("bob")
    assert s.size() - first.tree_size == 4
    s.rounds()
    assert s.checkpoints() == [first]
    s.pending_request("carol")
    _, second = eventually(lambda: s.checkpoints()[1:] and s.checkpoints(), "a checkpoint after 5 entries")
    assert second.tree_size - first.tree_size >= EVERY_ENTRIES
    assert second.signed_at == signed_at  # the clock did not move: it was the count

    # By time: two entries (< 5) wait until S seconds of the injected clock have passed since the last one.
    s.pending_request("dave")
    s.rounds()
    s.clock.advance(INTERVAL - timedelta(seconds=1))
    s.rounds()
    assert s.checkpoints() == [first, second]
    now = s.clock.advance(timedelta(seconds=1))
    third = eventually(lambda: s.checkpoints()[2:], "a checkpoint after S seconds")[0]
    assert (third.tree_size, third.signed_at) == (s.size(), now)
    s.rounds()
    assert len(s.checkpoints()) == 3  # nothing new since: no checkpoint, however much time passes
    s.clock.advance(INTERVAL * 3)
    s.rounds()
    assert len(s.checkpoints()) == 3
    # S seconds are counted from the last checkpoint: after a quiet spell, new entries are signed at once.
    s.pending_request("erin")
    fourth = eventually(lambda: s.checkpoints()[3:], "a checkpoint after a quiet spell")[0]
    assert (fourth.tree_size, fourth.signed_at) == (s.size(), s.clock.now())

    # Every checkpoint reached the file witness, in order, exactly as signed.
    eventually(lambda: len(s.witnessed()) == 4, "the witness to catch up")
    signed = [first, second, third, fourth]
    assert [(r["id"], r["note"]) for r in s.witnessed()] == [(c.id, c.note) for c in signed]

    # Shutdown: two entries below both thresholds; stopping the server stops the thread and signs them.
    s.pending_request("frank")
    s.rounds()
    assert len(s.checkpoints()) == 4
    size = s.size()
    s.stop()
    assert not thread.is_alive()
    assert not s.checkpointer.running
    assert THREAD not in {t.name for t in threading.enumerate()}
    *_, last = s.checkpoints()
    assert (last.id, last.tree_size) == (fourth.id + 1, size)
    assert s.witnessed()[-1]["note"] == last.note  # delivered before the server returned
    # The witnessed checkpoints verify against the log under the key that signed them.
    with s.rt.uow() as session:
        report = audit.verify(
            session,
            keys=[s.checkpointer.verifier],
            witnessed=[(f"witness:{r['id']}", r["note"]) for r in s.witnessed()],
            origin=s.checkpointer.origin,
        )
    assert report.ok, report.problems
    assert s.checkpointer.stop() is None  # stopping again signs nothing


class _Gate:
    """A witness that holds each delivery until released: a hung receiver."""

    name = "gate"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.delivered: list[int] = []
        self.threads: set[str] = set()

    def publish(self, checkpoint: CheckpointView, origin: str) -> None:
        self.threads.add(threading.current_thread().name)
        if not self.release.wait(10):
            raise OSError("never released")
        self.delivered.append(checkpoint.id)


def test_sign_now_does_not_wait_for_witnesses_while_the_thread_runs(amber: Amber) -> None:
    base = amber.rt.checkpointer
    assert base is not None
    gate = _Gate()
    cp = Checkpointer(
        uow=amber.rt.uow,
        clock=amber.clock,
        signer=base.signer,
        origin=base.origin,
        every_entries=1000,
        every=INTERVAL,
        witnesses=[gate],
        poll_s=0.01,
    )
    cp.start()
    try:
        eventually(lambda: gate.threads, "the thread to deliver the first checkpoint")
        amber.request("alice", "engineering", "oncall")
        view = cp.sign_now()  # returns while the thread is stuck delivering to the gate
        assert gate.delivered == []
        gate.release.set()
        eventually(lambda: len(gate.delivered) == 2, "both deliveries")
        assert gate.delivered[-1] == view.id
        assert gate.threads == {THREAD}  # never the caller's thread
    finally:
        gate.release.set()
        assert cp.stop() is None  # everything was signed already


def test_without_a_started_thread_stopping_signs_nothing(amber: Amber) -> None:
    amber.request("alice", "engineering", "oncall")
    cp = amber.rt.checkpointer
    assert cp is not None
    assert not cp.running  # AMBER_ENV=test: the app did not start it
    assert cp.stop() is None
    with amber.rt.uow() as session:
        assert checkpoints.latest_checkpoint(session) is None


def test_the_thread_survives_a_database_outage(amber: Amber, caplog: pytest.LogCaptureFixture) -> None:
    base = amber.rt.checkpointer
    assert base is not None
    failures = [OperationalError("SELECT 1", {}, Exception("server closed the connection"))] * 3

    def flaky_uow() -> Any:
        if failures:
            raise failures.pop()
        return amber.rt.uow()

    cp = Checkpointer(
        uow=flaky_uow,
        clock=amber.clock,
        signer=base.signer,
        origin=base.origin,
        every_entries=1000,
        every=INTERVAL,
        poll_s=0.01,
    )
    cp.start()
    try:
        eventually(lambda: not failures and cp.rounds >= 3, "three failed rounds")
        signed = eventually(lambda: _latest(amber), "the thread to sign once the database is back")
        with amber.rt.uow() as session:
            assert signed.tree_size == ledger.head(session)[0]
        assert cp.running
    finally:
        cp.stop()
    assert caplog.text.count("ledger checkpointer: this round failed") == 3


def _latest(amber: Amber) -> CheckpointView | None:
    with amber.rt.uow() as session:
        return checkpoints.latest_checkpoint(session)
