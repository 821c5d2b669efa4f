"""Appending to and reading the ledger. The ONLY code that writes the ledger table.

Invariant: an entry is appended in the same transaction as the state change it records, so either both
are committed or neither is. Appends are serialized (a transaction-scoped advisory lock on PostgreSQL;
SQLite's BEGIN IMMEDIATE already serializes writers) so that seq has no gaps, each entry links to the
one before it, and the Merkle tree's nodes (tree.py) are extended in the same transaction.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from amber.core.clock import as_utc
from amber.ledger import tlog, tree
from amber.ledger.chain import GENESIS, Actor, entry_bytes, format_utc, parse_payload, payload_text
from amber.ledger.models import LedgerEntry, TreeHead, TreeNode

LOCK_KEY = 0x616D626572  # "amber"


_ENTRY_TABLE, _NODE_TABLE, _HEAD_TABLE = (m.__tablename__ for m in (LedgerEntry, TreeNode, TreeHead))
# NOTE: the order of the values in `_encode`'s rows.
_ENTRY_COLUMNS = (
    "seq",
    "entry_at",
    "event_type",
    "actor_issuer",
    "actor_subject",
    "actor_name",
    "subject_kind",
    "subject_id",
    "payload",
    "prev_hash",
    "entry_hash",
)
_PG_VALUES_MAX = 4  # entries written by one INSERT ... VALUES on PostgreSQL (measured); more go by COPY


@dataclass(frozen=True)
class _Statements:
    """The append path's SQL for one dialect, run on the DBAPI cursor of the caller's transaction.

    SQLAlchemy Core costs ~25 µs a statement to prepare and type-process, more than SQLite takes to run it,
    so appends bypass it and bind plain values. NOTE: the values must be exactly what SQLAlchemy would have
    bound (see `chain.format_utc`), so that rows read back through the ORM are unchanged.
    On PostgreSQL every statement is a round trip, so there are fewer: the lock and the head in one message,
    and the writes in one statement (a few entries) or by COPY (a batch).
    """

    postgres: bool
    at_as_text: bool  # SQLite: DateTime is stored as text in SQLAlchemy's format
    head: str  # reads (size, last hash, frontier); on PostgreSQL takes the append lock first
    insert_entry: str
    insert_node: str
    update_head: str


@functools.cache
def _statements(dialect: str, paramstyle: str) -> _Statements:
    if paramstyle not in ("qmark", "format", "pyformat"):
        raise tree.TreeError(f"the ledger does not support the {dialect} driver's {paramstyle!r} parameters")
    p = "?" if paramstyle == "qmark" else "%s"
    values = ", ".join(p for _ in _ENTRY_COLUMNS)
    head = f"SELECT size, last_hash, frontier FROM {_HEAD_TABLE} WHERE id = 1"
    if dialect == "postgresql":
        # Two statements, no parameters (a simple query): each statement takes its own snapshot under READ
        # COMMITTED, so the head is read after the lock was granted.
        head = f"SELECT pg_advisory_xact_lock({LOCK_KEY}); {head}"
    return _Statements(
        postgres=dialect == "postgresql",
        at_as_text=dialect == "sqlite",
        head=head,
        insert_entry=f"INSERT INTO {_ENTRY_TABLE} ({', '.join(_ENTRY_COLUMNS)}) VALUES ({values})",
        insert_node=f"INSERT INTO {_NODE_TABLE} (level, idx, hash) VALUES ({p}, {p}, {p})",
        update_head=f"UPDATE {_HEAD_TABLE} SET size = {p}, last_hash = {p}, frontier = {p} WHERE id = 1",
    )


@functools.lru_cache(maxsize=256)
def _pg_write(entries: int, nodes: int) -> str:
    """PostgreSQL: the entries, their nodes and the new head in one statement (one round trip)."""
    rows = ", ".join(["(" + ", ".join(["%s"] * len(_ENTRY_COLUMNS)) + ")"] * entries)
    node_rows = ", ".join(["(%s, %s, %s)"] * nodes)
    insert_nodes = f", n AS (INSERT INTO {_NODE_TABLE} (level, idx, hash) VALUES {node_rows})" if nodes else ""
    return (
        f"WITH e AS (INSERT INTO {_ENTRY_TABLE} ({', '.join(_ENTRY_COLUMNS)}) VALUES {rows}){insert_nodes}"
        f" UPDATE {_HEAD_TABLE} SET size = %s, last_hash = %s, frontier = %s WHERE id = 1"
    )


class EntryView(NamedTuple):
    """An appended entry as read back (a named tuple: the append path builds one per entry, and a frozen
    dataclass costs three times as much to build)."""

    seq: int
    at: datetime
    event_type: str
    actor: Actor
    subject_kind: str
    subject_id: str
    payload: dict[str, Any]
    prev_hash: str
    entry_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "type": self.event_type,
            "actor": {"iss": self.actor.issuer, "sub": self.actor.subject, "name": self.actor.name},
            "subject": {"kind": self.subject_kind, "id": self.subject_id},
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "entry_hash": self.entry_hash,
        }


class NewEntry(NamedTuple):
    """One entry to append (see `append_many`)."""

    at: datetime
    event_type: str
    actor: Actor
    subject_kind: str
    subject_id: str
    payload: dict[str, Any]


def append(
    session: Session,
    *,
    at: datetime,
    event_type: str,
    actor: Actor,
    subject_kind: str,
    subject_id: str,
    payload: dict[str, Any],
) -> EntryView:
    return append_many(session, [NewEntry(at, event_type, actor, subject_kind, subject_id, payload)])[0]


def append_many(session: Session, items: Sequence[NewEntry]) -> list[EntryView]:
    """Append entries in order in the caller's transaction, extending the hash chain and the Merkle tree.

    One lock, one read of the head and of the tree's frontier, and one insert per table however many entries
    there are: this is the group-commit path (many entries, one transaction, one durable commit).
    """
    if not items:
        return []
    conn = session.connection()  # begins the caller's transaction (BEGIN IMMEDIATE on SQLite) if not yet
    dialect = conn.dialect
    sql = _statements(dialect.name, dialect.paramstyle)
    dbapi = conn.connection.dbapi_connection
    if dbapi is None:
        raise tree.TreeError("the session's database connection is closed")
    cursor = dbapi.cursor()
    statement = sql.head
    try:
        cursor.execute(statement)
        if sql.postgres:
            cursor.nextset()  # past the lock's result
        current = cursor.fetchone()
        if current is None:
            raise tree.TreeError("the ledger has no tree head; run `amber db upgrade`")
        seq, prev_hash = int(current[0]), str(current[1])
        edge = tlog.Frontier.from_blob(seq, bytes(current[2]))
        rows, nodes, views = _encode(items, seq, prev_hash, edge, at_as_text=sql.at_as_text)
        new_head = (views[-1].seq, views[-1].entry_hash, edge.blob())
        if sql.postgres and len(rows) <= _PG_VALUES_MAX:
            statement = _pg_write(len(rows), len(nodes))
            cursor.execute(statement, [*itertools.chain(*rows, *nodes), *new_head])
        elif sql.postgres and hasattr(cursor, "copy"):  # psycopg: COPY is ~4x faster than INSERT for a batch
            statement = f"COPY {_ENTRY_TABLE} ({', '.join(_ENTRY_COLUMNS)}) FROM STDIN"
            _copy(cursor, statement, rows)
            statement = f"COPY {_NODE_TABLE} (level, idx, hash) FROM STDIN"
            _copy(cursor, statement, nodes)
            statement = sql.update_head
            cursor.execute(statement, new_head)
        else:
            statement = sql.insert_entry
            cursor.executemany(statement, rows)
            statement = sql.insert_node
            cursor.executemany(statement, nodes)
            statement = sql.update_head
            cursor.execute(statement, new_head)
    except dialect.loaded_dbapi.Error as exc:
        # The same exception (sqlalchemy.exc.IntegrityError, OperationalError, ...) Core would have raised.
        raise DBAPIError.instance(statement, None, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
    finally:
        cursor.close()
    return views


def _copy(cursor: Any, statement: str, rows: list[tuple[Any, ...]]) -> None:
    with cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def _encode(
    items: Sequence[NewEntry], seq: int, prev_hash: str, edge: tlog.Frontier, *, at_as_text: bool
) -> tuple[list[tuple[Any, ...]], list[tuple[int, int, bytes]], list[EntryView]]:
    """The entry rows, the tree nodes they complete and the views, chaining from (seq, prev_hash)."""
    rows: list[tuple[Any, ...]] = []
    nodes: list[tuple[int, int, bytes]] = []
    views: list[EntryView] = []
    sha256 = hashlib.sha256
    add_leaf = edge.append
    for item in items:
        seq += 1
        actor = item.actor
        at = item.at if item.at.tzinfo is UTC else as_utc(item.at)  # SQLite keeps no offset: store UTC only
        at_text, stored_at = format_utc(at)
        payload = payload_text(item.payload)
        data = entry_bytes(
            seq=seq,
            at=at,
            event_type=item.event_type,
            actor=actor,
            subject_kind=item.subject_kind,
            subject_id=item.subject_id,
            payload_json=payload,
            prev_hash=prev_hash,
            at_text=at_text,
        )
        entry_hash = sha256(data).hexdigest()
        created = add_leaf(sha256(b"\x00" + data).digest())
        if len(created) > 1:  # the subtrees the leaf completes; the leaf's own hash is not stored (tree.py)
            nodes += created[1:]
        rows.append(
            (
                seq,
                stored_at if at_as_text else at,
                item.event_type,
                actor.issuer,
                actor.subject,
                actor.name,
                item.subject_kind,
                item.subject_id,
                payload,
                prev_hash,
                entry_hash,
            )
        )
        views.append(
            EntryView(
                seq,
                at,
                item.event_type,
                actor,
                item.subject_kind,
                item.subject_id,
                item.payload,
                prev_hash,
                entry_hash,
            )
        )
        prev_hash = entry_hash
    return rows, nodes, views


def to_view(row: LedgerEntry) -> EntryView:
    return EntryView(
        seq=row.seq,
        at=as_utc(row.entry_at),
        event_type=row.event_type,
        actor=Actor(row.actor_issuer, row.actor_subject, row.actor_name),
        subject_kind=row.subject_kind,
        subject_id=row.subject_id,
        payload=parse_payload(row.payload),
        prev_hash=row.prev_hash,
        entry_hash=row.entry_hash,
    )


def entries(
    session: Session,
    *,
    after_seq: int = 0,
    limit: int | None = None,
    subject_id: str | None = None,
) -> list[EntryView]:
    query = select(LedgerEntry).where(LedgerEntry.seq > after_seq).order_by(LedgerEntry.seq)
    if subject_id is not None:
        query = query.where(LedgerEntry.subject_id == subject_id)
    if limit is not None:
        query = query.limit(limit)
    return [to_view(row) for row in session.scalars(query)]


def iter_raw(session: Session, batch: int = 5000, *, after_seq: int = 0) -> Iterator[LedgerEntry]:
    """Every row after `after_seq` in seq order, streamed in batches (for verification of large ledgers)."""
    after = after_seq
    while True:
        rows = list(
            session.scalars(select(LedgerEntry).where(LedgerEntry.seq > after).order_by(LedgerEntry.seq).limit(batch))
        )
        if not rows:
            return
        yield from rows
        after = rows[-1].seq


def latest(session: Session, *, event_type: str) -> EntryView | None:
    row = session.scalar(
        select(LedgerEntry).where(LedgerEntry.event_type == event_type).order_by(LedgerEntry.seq.desc()).limit(1)
    )
    return to_view(row) if row is not None else None


def head(session: Session) -> tuple[int, str]:
    row = session.execute(
        select(LedgerEntry.seq, LedgerEntry.entry_hash).order_by(LedgerEntry.seq.desc()).limit(1)
    ).first()
    return (row[0], row[1]) if row else (0, GENESIS)


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(LedgerEntry)) or 0)
