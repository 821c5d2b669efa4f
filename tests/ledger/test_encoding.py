"""The append path's shortcuts produce exactly the bytes and rows of the plain way (json.dumps, SQLAlchemy Core)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import DateTime, Engine, MetaData, insert, select, text

from amber import ledger
from amber.core.clock import as_utc
from amber.core.crypto import canonical_json
from amber.core.db import make_engine, make_unit_of_work
from amber.core.migrate import upgrade
from amber.ledger import proofs, tlog, tree
from amber.ledger.chain import Actor, entry_body, entry_bytes, format_at, format_utc, payload_text
from amber.ledger.models import LedgerEntry

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # any code point but lone surrogates
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
ZONES = st.sampled_from([UTC, timezone(timedelta(0)), timezone(timedelta(hours=5, minutes=30))])
LIMITS = datetime(1, 1, 2), datetime(9999, 12, 30)  # noqa: DTZ001 - hypothesis takes naive bounds
INSTANTS = st.datetimes(*LIMITS, timezones=ZONES)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(1, 2**62),
    at=INSTANTS,
    strings=st.lists(TEXT, min_size=6, max_size=6),
    payload=st.dictionaries(TEXT, JSON, max_size=4),
)
def test_entry_bytes_are_the_canonical_json_of_the_body(
    seq: int, at: datetime, strings: list[str], payload: dict[str, Any]
) -> None:
    event_type, iss, sub, name, kind, sid = strings
    fields: dict[str, Any] = {
        "seq": seq,
        "at": at,
        "event_type": event_type,
        "actor": Actor(iss, sub, name),
        "subject_kind": kind,
        "subject_id": sid,
        "prev_hash": "ab" * 32,
    }
    assert entry_bytes(**fields, payload_json=payload_text(payload)) == canonical_json(
        entry_body(**fields, payload=payload)
    )
    assert payload_text(payload) == canonical_json(payload).decode()
    assert entry_bytes(**fields, payload_json=payload_text(payload), at_text=format_at(at)) == canonical_json(
        entry_body(**fields, payload=payload)
    )


def test_a_payload_that_is_not_json_is_refused() -> None:
    with pytest.raises(TypeError, match="datetime is not JSON serializable"):
        payload_text({"at": datetime.now(UTC)})
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        payload_text({"n": float("nan")})


@settings(max_examples=300, deadline=None)
@given(at=INSTANTS | st.datetimes(*LIMITS))
def test_at_is_written_as_before(at: datetime) -> None:
    assert format_at(at) == at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@settings(max_examples=300, deadline=None)
@given(at=INSTANTS | st.datetimes(*LIMITS))
def test_at_is_stored_on_sqlite_as_sqlalchemy_stores_it(at: datetime) -> None:
    from sqlalchemy.dialects import sqlite

    dialect = sqlite.dialect()
    process = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    utc = as_utc(at)
    assert format_utc(utc) == (format_at(at), process(utc))


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    engine = make_engine(state_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_appended_rows_are_the_rows_sqlalchemy_would_write(engine: Engine) -> None:
    at = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)
    with make_unit_of_work(engine)() as session:
        view = ledger.append(
            session,
            at=at,
            event_type="test.event",
            actor=Actor("https://idp.test", "u-1", "ålice"),
            subject_kind="test",
            subject_id="t1",
            payload={"b": 1, "a": "é"},
        )
    columns = [c for c in LedgerEntry.__table__.columns if c.name != "seq"]
    with engine.begin() as conn:
        stored = conn.execute(select(*columns).where(LedgerEntry.seq == 1)).one()._asdict()
        # The same values through SQLAlchemy Core, into a scratch copy of the table.
        conn.execute(text("CREATE TEMPORARY TABLE scratch AS SELECT * FROM ledger_entries WHERE 1 = 0"))
        scratch = LedgerEntry.__table__.to_metadata(MetaData(), name="scratch")
        conn.execute(insert(scratch), [{**stored, "seq": 1}])
        raw = "SELECT entry_at, payload FROM {} WHERE seq = 1"
        assert conn.execute(text(raw.format("ledger_entries"))).one() == conn.execute(text(raw.format("scratch"))).one()
    with make_unit_of_work(engine)() as session:
        (read,) = ledger.entries(session)
    assert read == view
    assert read.at == at


def test_exported_lines_are_the_canonical_json_of_the_exported_entries(engine: Engine, tmp_path: Path) -> None:
    payloads: list[dict[str, Any]] = [
        {},
        {"text": 'naïve "quoted" \\ back\nslash \u2028 \x00', "n": -0.0, "big": 2**70, "f": 1e-7},
        {"prev": "x", "nested": {"z": [1, {"b": None, "a": True}], ',"payload":': "k"}},
    ]
    with make_unit_of_work(engine)() as session:
        for i, payload in enumerate(payloads):
            ledger.append(
                session,
                at=datetime(2026, 11, 26, 12, 0, i, tzinfo=UTC),
                event_type="test.event",
                actor=Actor("https://idp.test", 'u-"1"', 'ålice,"payload":'),
                subject_kind="test",
                subject_id=f"t{i}",
                payload=payload,
            )
    with make_unit_of_work(engine)() as session:
        proofs.export_bundle(session, tmp_path / "bundle", "test/encoding")
        expected = [canonical_json(proofs.exported(row)) + b"\n" for row in ledger.iter_raw(session)]
        assert proofs.verify_tree(session, [], [], None, "test/encoding") == []
    assert (tmp_path / "bundle" / "entries.jsonl").read_bytes().splitlines(keepends=True) == expected


def test_batches_of_every_size_extend_the_chain_and_the_tree(engine: Engine) -> None:
    """One entry, a few (one INSERT on PostgreSQL), many (COPY on PostgreSQL): the same rows, chain and tree."""
    uow = make_unit_of_work(engine)
    views: list[ledger.EntryView] = []
    for size in (1, 4, 5, 300, 2):
        batch = [
            ledger.NewEntry(
                datetime(2026, 11, 26, 12, 0, tzinfo=UTC) + timedelta(microseconds=len(views) + i),
                "test.event",
                Actor("https://idp.test", "u-1", "tab\there"),
                "test",
                f"t{i % 7}",
                {"i": i, "text": "back\\slash\nnewline"},
            )
            for i in range(size)
        ]
        with uow() as session:
            views += ledger.append_many(session, batch)
    with uow() as session:
        assert ledger.entries(session) == views
        assert [v.seq for v in views] == list(range(1, len(views) + 1))
        rows = [proofs.exported(row) for row in ledger.iter_raw(session)]
        report = tlog.verify_log(rows, [], [])
        assert report.ok, report.problems
        assert tree.root(session, len(views)) == report.root
        assert proofs.verify_tree(session, [], [], None, None) == []
