"""Durability: kill -9 while appending loses nothing acknowledged; group commit keeps order and atomicity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine

from amber import audit, ledger
from amber.core.db import make_engine, make_unit_of_work
from amber.core.migrate import upgrade
from amber.ledger import tlog, tree
from amber.ledger.group import GroupCommitter
from amber.ledger.proofs import exported

WRITER = textwrap.dedent("""
    import sys, threading
    from datetime import UTC, datetime
    from amber import ledger
    from amber.core.db import make_engine, make_unit_of_work
    from amber.ledger.group import GroupCommitter

    uow = make_unit_of_work(make_engine(sys.argv[1]))
    group = GroupCommitter(uow)
    lock = threading.Lock()

    def ack(seq):
        with lock:
            sys.stdout.write(f"{seq}\\n")
            sys.stdout.flush()

    def single():
        while True:
            with uow() as session:
                view = ledger.append(session, at=datetime.now(UTC), event_type="test.single", actor=ledger.SYSTEM,
                                     subject_kind="test", subject_id="s", payload={"n": 1})
            ack(view.seq)  # acknowledged only after the commit returned

    def grouped(i):
        while True:
            view = group.submit(ledger.NewEntry(datetime.now(UTC), "test.grouped", ledger.SYSTEM, "test", f"g{i}", {}))
            ack(view.seq)

    threads = [threading.Thread(target=single, daemon=True)]
    threads += [threading.Thread(target=grouped, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    threading.Event().wait()
""")


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    engine = make_engine(state_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_kill_9_mid_write_loses_no_acknowledged_entry(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    with subprocess.Popen(
        [sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        acked: list[int] = []
        deadline = time.monotonic() + 30
        while len(acked) < 400 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(process.pid, signal.SIGKILL)  # mid-write: nine threads are appending right now
        process.wait()
        acked += [int(line) for line in process.stdout.read().split()]
        errors = process.stderr.read()
    assert len(acked) >= 400, errors
    with make_unit_of_work(engine)() as session:
        size, _ = ledger.head(session)
        assert max(acked) <= size
        assert len(set(acked)) == len(acked)
        report = audit.verify(session)
        assert report.ok, report.problems
        assert report.entries == size
        rows = [exported(row) for row in ledger.iter_raw(session)]
        assert tree.root(session, size) == tlog.verify_log(rows, [], []).root
    # The ledger is usable after the crash: the next append extends chain and tree.
    with make_unit_of_work(engine)() as session:
        view = ledger.append(
            session,
            at=datetime.now(UTC),
            event_type="x",
            actor=ledger.SYSTEM,
            subject_kind="t",
            subject_id="t",
            payload={},
        )
    assert view.seq == size + 1


def test_group_commit_batches_concurrent_appends_in_order(engine: Engine) -> None:
    uow = make_unit_of_work(engine)
    group = GroupCommitter(uow, max_batch=50)
    results: list[ledger.EntryView] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(25):
            view = group.submit(ledger.NewEntry(datetime.now(UTC), "test.grouped", ledger.SYSTEM, "t", f"{i}-{j}", {}))
            with lock:
                results.append(view)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(v.seq for v in results) == list(range(1, 201))
    # Each worker's own entries are in its submission order.
    for i in range(8):
        mine = [v for v in results if v.subject_id.startswith(f"{i}-")]
        assert [v.subject_id for v in sorted(mine, key=lambda v: v.seq)] == [f"{i}-{j}" for j in range(25)]
    with uow() as session:
        assert audit.verify(session).ok


def test_a_failed_group_commit_fails_every_waiter_and_writes_nothing(engine: Engine) -> None:
    group = GroupCommitter(make_unit_of_work(engine))
    bad = ledger.NewEntry(datetime.now(UTC), "test", ledger.SYSTEM, "t", "t", {"not json": float("nan")})
    with pytest.raises(ValueError, match="JSON"):
        group.submit(bad)
    with make_unit_of_work(engine)() as session:
        assert ledger.count(session) == 0
    assert group.submit(ledger.NewEntry(datetime.now(UTC), "test", ledger.SYSTEM, "t", "t", {})).seq == 1
