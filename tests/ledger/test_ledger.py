"""Ledger v1: the chain, the append-only triggers, and detection of every kind of tampering."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from amber import audit, ledger
from amber.core.db import make_engine, make_unit_of_work
from amber.core.migrate import upgrade
from amber.ledger import Actor
from amber.ledger.chain import GENESIS
from tests.conftest import Amber

ALICE = Actor("https://idp.test", "u-1", "alice")
T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    engine = make_engine(state_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _fill(engine: Engine, n: int = 5) -> None:
    uow = make_unit_of_work(engine)
    for i in range(n):
        with uow() as session:
            ledger.append(
                session,
                at=T0 + timedelta(seconds=i),
                event_type="test.event",
                actor=ALICE,
                subject_kind="test",
                subject_id=f"t{i}",
                payload={"i": i, "text": "héllo"},
            )


def _chain(engine: Engine) -> ledger.ChainReport:
    with make_unit_of_work(engine)() as session:
        return ledger.verify_chain(ledger.iter_raw(session))


def _tamper(engine: Engine, *statements: str) -> None:
    """What an attacker with database access does: switch the protection off, then edit."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("ALTER TABLE ledger_entries DISABLE TRIGGER USER")
        else:
            conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_update")
            conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_delete")
        for statement in statements:
            conn.exec_driver_sql(statement)


def test_chain_links_each_entry_to_the_one_before(engine: Engine) -> None:
    _fill(engine, 3)
    with make_unit_of_work(engine)() as session:
        entries = ledger.entries(session)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS
    assert entries[1].prev_hash == entries[0].entry_hash
    assert entries[2].payload == {"i": 2, "text": "héllo"}
    report = _chain(engine)
    assert report.ok
    assert report.entries == 3
    assert report.head_hash == entries[2].entry_hash


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entries SET payload = '{}' WHERE seq = 2",
        "DELETE FROM ledger_entries WHERE seq = 2",
    ],
)
def test_triggers_refuse_update_and_delete(engine: Engine, statement: str) -> None:
    _fill(engine, 3)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    assert _chain(engine).entries == 3


def test_emptying_the_whole_table_is_refused(engine: Engine) -> None:
    # SQLite has no TRUNCATE; its "truncate optimisation" of a bare DELETE is off when triggers exist.
    statement = "TRUNCATE ledger_entries" if engine.dialect.name == "postgresql" else "DELETE FROM ledger_entries"
    _fill(engine, 2)
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    assert _chain(engine).entries == 2


def test_edited_entry_is_named(engine: Engine) -> None:
    _fill(engine)
    _tamper(engine, """UPDATE ledger_entries SET payload = '{"i":3,"text":"changed"}' WHERE seq = 4""")
    problem = _chain(engine).problem
    assert problem is not None
    assert (problem.seq, problem.check) == (4, "hash")


def test_edited_actor_is_named(engine: Engine) -> None:
    _fill(engine)
    _tamper(engine, "UPDATE ledger_entries SET actor_name = 'bob' WHERE seq = 2")
    problem = _chain(engine).problem
    assert problem is not None
    assert (problem.seq, problem.check) == (2, "hash")


def test_deleted_entry_is_named(engine: Engine) -> None:
    _fill(engine)
    _tamper(engine, "DELETE FROM ledger_entries WHERE seq = 3")
    problem = _chain(engine).problem
    assert problem is not None
    assert (problem.seq, problem.check) == (3, "sequence")
    assert "missing" in problem.message


def test_deleted_tail_with_renumbering_is_caught_by_the_link(engine: Engine) -> None:
    _fill(engine)
    _tamper(
        engine,
        "DELETE FROM ledger_entries WHERE seq = 2",
        "UPDATE ledger_entries SET seq = seq - 1 WHERE seq > 2",
    )
    problem = _chain(engine).problem
    assert problem is not None
    assert (problem.seq, problem.check) == (2, "link")


def test_inserted_entry_is_named(engine: Engine) -> None:
    _fill(engine)
    _tamper(
        engine,
        "UPDATE ledger_entries SET seq = seq + 100 WHERE seq >= 3",
        "UPDATE ledger_entries SET seq = seq - 99 WHERE seq >= 103",
        "INSERT INTO ledger_entries (seq, entry_at, event_type, actor_issuer, actor_subject, actor_name, "
        "subject_kind, subject_id, payload, prev_hash, entry_hash) SELECT 3, entry_at, 'grant.issued', "
        "actor_issuer, actor_subject, actor_name, 'grant', 'grt_fake', '{}', entry_hash, "
        "'0000000000000000000000000000000000000000000000000000000000000000' FROM ledger_entries WHERE seq = 2",
    )
    problem = _chain(engine).problem
    assert problem is not None
    assert (problem.seq, problem.check) == (3, "hash")


def test_reordered_entries_are_named(engine: Engine) -> None:
    _fill(engine)
    _tamper(
        engine,
        "UPDATE ledger_entries SET seq = 1000 WHERE seq = 2",
        "UPDATE ledger_entries SET seq = 2 WHERE seq = 3",
        "UPDATE ledger_entries SET seq = 3 WHERE seq = 1000",
    )
    problem = _chain(engine).problem
    assert problem is not None
    assert (problem.seq, problem.check) == (2, "link")


def test_audit_verify_names_state_rows_that_disagree_with_the_ledger(amber: Amber) -> None:
    body = amber.request("alice", "engineering", "oncall")
    engine = amber.rt.engine
    with make_unit_of_work(engine)() as session:
        assert audit.verify(session).ok
    # A DBA quietly extends the grant: the state row no longer matches what the ledger says.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE grants SET expires_at = :at WHERE id = :id"),
            {"at": amber.clock.now() + timedelta(days=30), "id": body["grant"]["id"]},
        )
    with make_unit_of_work(engine)() as session:
        report = audit.verify(session)
    assert not report.ok
    assert report.problems[0].startswith(f"grants {body['grant']['id']}: expires_at is")


def test_audit_verify_names_state_rows_without_events(amber: Amber) -> None:
    body = amber.request("bob", "engineering")
    with amber.rt.engine.begin() as conn:
        conn.execute(text("UPDATE access_requests SET status = 'approved' WHERE id = :id"), {"id": body["id"]})
    with make_unit_of_work(amber.rt.engine)() as session:
        report = audit.verify(session)
        last = ledger.entries(session, subject_id=body["id"])[-1].seq
    assert report.problems == [
        f"access_requests {body['id']}: status is 'approved' in the state table but the ledger "
        f"(up to entry {last}) says 'pending'"
    ]


def test_submitted_request_is_immutable(amber: Amber) -> None:
    body = amber.request("bob", "engineering")
    with pytest.raises(DBAPIError, match="immutable"), amber.rt.engine.begin() as conn:
        conn.execute(text("UPDATE access_requests SET reason = 'something else' WHERE id = :id"), {"id": body["id"]})


def test_cli_audit_verify_exits_nonzero_and_names_the_entry(amber: Amber, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    amber.request("alice", "engineering", "oncall")
    with make_unit_of_work(amber.rt.engine)() as session:
        total = ledger.count(session)
        decided = ledger.latest(session, event_type="request.decided")
    assert decided is not None
    env = {
        **os.environ,
        "AMBER_DATABASE_URL": str(amber.rt.engine.url.render_as_string(hide_password=False)),
        "AMBER_STATE_DIR": str(tmp_path / "state"),
    }
    ok = subprocess.run(
        [sys.executable, "-m", "amber", "audit", "verify", "--allow-unsigned-tail"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"ledger OK: {total} entries" in ok.stdout
    _tamper(amber.rt.engine, f'UPDATE ledger_entries SET payload = \'{{"outcome":"deny"}}\' WHERE seq = {decided.seq}')
    bad = subprocess.run(
        [sys.executable, "-m", "amber", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 1
    assert f"entry {decided.seq}: hash: the entry's content does not match its hash" in bad.stdout
    assert "Traceback" not in bad.stderr


def test_entries_with_a_non_utc_or_naive_time_verify(engine: Engine) -> None:
    # SQLite keeps no UTC offset: an instant in +05:30 (or a naive one, taken as UTC) is stored and hashed as UTC.
    india = timezone(timedelta(hours=5, minutes=30))
    uow = make_unit_of_work(engine)
    for i, at in enumerate([T0.astimezone(india), T0.replace(tzinfo=None), T0]):
        with uow() as session:
            view = ledger.append(
                session,
                at=at,
                event_type="test.event",
                actor=ALICE,
                subject_kind="test",
                subject_id=f"z{i}",
                payload={},
            )
            assert view.at == T0
            assert view.at.tzinfo is UTC
    report = _chain(engine)
    assert report.ok, report.problem
    assert report.entries == 3
    with uow() as session:
        assert {e.at for e in ledger.entries(session)} == {T0}
