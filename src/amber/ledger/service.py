"""Appending to and reading the ledger. The ONLY code that writes the ledger table.

Invariant: an entry is appended in the same transaction as the state change it records, so either both
are committed or neither is. Appends are serialized (a transaction-scoped advisory lock on PostgreSQL;
SQLite's BEGIN IMMEDIATE already serializes writers) so that seq has no gaps, each entry links to the
one before it, and the Merkle tree's nodes (tree.py) are extended in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session

from amber.core.clock import as_utc
from amber.core.crypto import canonical_json, sha256_hex
from amber.core.db import Base, is_postgres
from amber.ledger import tlog, tree
from amber.ledger.chain import GENESIS, Actor, entry_body, parse_payload, payload_text
from amber.ledger.models import LedgerEntry, TreeHead, TreeNode

LOCK_KEY = 0x616D626572  # "amber"

# The append path's statements, built once: constructing them per call costs more than running them.
_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_HEAD = select(TreeHead.size, TreeHead.last_hash, TreeHead.frontier).where(TreeHead.id == 1)
_INSERT_ENTRY = insert(Base.metadata.tables[LedgerEntry.__tablename__])
_INSERT_NODE = insert(Base.metadata.tables[TreeNode.__tablename__])
_UPDATE_HEAD = (
    update(Base.metadata.tables[TreeHead.__tablename__])
    .where(Base.metadata.tables[TreeHead.__tablename__].c.id == 1)
    .values(size=bindparam("new_size"), last_hash=bindparam("new_last_hash"), frontier=bindparam("new_frontier"))
)


@dataclass(frozen=True)
class EntryView:
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


@dataclass(frozen=True)
class NewEntry:
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
    conn = session.connection()
    if is_postgres(session):
        conn.execute(_LOCK, {"key": LOCK_KEY})
    current = conn.execute(_HEAD).first()
    if current is None:
        raise tree.TreeError("the ledger has no tree head; run `amber db upgrade`")
    seq, prev_hash = current.size, current.last_hash
    edge = tlog.Frontier.from_blob(seq, current.frontier)
    rows: list[dict[str, Any]] = []
    nodes: list[tuple[int, int, bytes]] = []
    views: list[EntryView] = []
    for item in items:
        seq += 1
        body = entry_body(
            seq=seq,
            at=item.at,
            event_type=item.event_type,
            actor=item.actor,
            subject_kind=item.subject_kind,
            subject_id=item.subject_id,
            payload=item.payload,
            prev_hash=prev_hash,
        )
        data = canonical_json(body)
        entry_hash = sha256_hex(data)
        nodes += edge.append(tlog.leaf_hash(data))
        rows.append(
            {
                "seq": seq,
                "entry_at": item.at,
                "event_type": item.event_type,
                "actor_issuer": item.actor.issuer,
                "actor_subject": item.actor.subject,
                "actor_name": item.actor.name,
                "subject_kind": item.subject_kind,
                "subject_id": item.subject_id,
                "payload": payload_text(item.payload),
                "prev_hash": prev_hash,
                "entry_hash": entry_hash,
            }
        )
        views.append(
            EntryView(
                seq,
                item.at,
                item.event_type,
                item.actor,
                item.subject_kind,
                item.subject_id,
                item.payload,
                prev_hash,
                entry_hash,
            )
        )
        prev_hash = entry_hash
    conn.execute(_INSERT_ENTRY, rows)
    conn.execute(_INSERT_NODE, [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in nodes])
    conn.execute(_UPDATE_HEAD, {"new_size": seq, "new_last_hash": prev_hash, "new_frontier": edge.blob()})
    return views


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
