"""The hand-written migration and the SQLAlchemy models describe the same schema, on both state stores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from amber import access_requests, grants, ledger  # noqa: F401 - registers every model on Base.metadata
from amber.core import meta  # noqa: F401
from amber.core.db import Base, make_engine, make_unit_of_work
from amber.core.migrate import upgrade
from amber.ledger import tree
from amber.ledger.proofs import verify_tree


def test_models_match_migrations(state_url: str) -> None:
    engine = make_engine(state_url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent: a second upgrade is a no-op
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_the_ledger_keeps_its_entries_tree_and_guards_through_the_storage_migration(state_url: str) -> None:
    """0007 rebuilds the ledger's tables on SQLite: every entry and node survives, proofs and verification still
    hold, the append-only triggers are back, and appends go on from where the log was."""
    engine = make_engine(state_url)
    try:
        upgrade(engine, "0006")
        uow = make_unit_of_work(engine)
        for batch in range(3):  # 3 x 7 entries: odd sizes leave an unfinished right edge in the tree
            with uow() as session:
                ledger.append_many(session, [_entry(batch * 7 + i) for i in range(7)])
        all_nodes = text("SELECT level, idx, hash FROM ledger_tree_nodes ORDER BY level, idx")
        with uow() as session:
            before = ledger.entries(session)
            root = tree.root(session, 21)
            nodes = session.execute(all_nodes).all()
        upgrade(engine)
        with uow() as session:
            assert ledger.entries(session) == before
            assert session.execute(all_nodes).all() == nodes
            assert tree.root(session, 21) == root
            ledger.append_many(session, [_entry(21 + i) for i in range(4)])
        with uow() as session:
            assert [v.seq for v in ledger.entries(session)] == list(range(1, 26))
            assert [v.entry_hash for v in ledger.entries(session, subject_id="s3")] == [
                v.entry_hash for v in ledger.entries(session) if v.subject_id == "s3"
            ]
            assert verify_tree(session, [], [], None, None) == []
            if state_url.startswith("sqlite"):  # stored by their keys: no separate key index on either table
                schema: dict[str, str | None] = dict(session.execute(text("SELECT name, sql FROM sqlite_master")).all())
                assert str(schema["ledger_tree_nodes"]).rstrip().endswith("WITHOUT ROWID")
                keys = ("sqlite_autoindex_ledger_entries", "sqlite_autoindex_ledger_tree_nodes")
                assert not any(name.startswith(keys) for name in schema)
        for table, column in (("ledger_entries", "seq"), ("ledger_tree_nodes", "idx")):
            for statement in (f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}"):
                with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                    conn.execute(text(statement))
    finally:
        engine.dispose()


def _entry(i: int) -> ledger.NewEntry:
    at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC) + timedelta(seconds=i)
    return ledger.NewEntry(at, "test.event", ledger.SYSTEM, "test", f"s{i % 5}", {"i": i})
