"""The ledger's RFC 9162 Merkle tree in the database: stored perfect subtrees, roots and proofs.

Owns table `ledger_tree_nodes`. Invariant: after every committed append the table holds every perfect subtree
of two or more leaves of the tree over entries 1..n (leaf index = seq - 1), written in the same transaction as
the entry, so the tree is never recomputed: an append reads the frontier (the head row), and a proof reads
O(log n) rows in one query. A leaf's hash is not stored (since revision 0007; older leaves still have their
row, which is no longer read): it is computed from its entry when a proof needs it, which halves the rows an
append writes. Callers serialize appends (see service.py); this module does not lock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from amber.core.clock import as_utc
from amber.core.errors import AmberError
from amber.ledger import tlog
from amber.ledger.chain import Actor, entry_bytes
from amber.ledger.models import LedgerEntry, TreeNode

T = TypeVar("T")


class TreeError(AmberError):
    status = 500
    type_slug = "ledger-tree"
    title = "Ledger Merkle tree is inconsistent"


def _fetch(session: Session, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The nodes at `keys` (level, index): stored subtrees and the entries of the leaves, in one query on the
    session's DBAPI connection (a proof is a few dozen primary-key lookups, and SQLAlchemy's expanding IN lists
    cost more than running them)."""
    if not keys:
        return {}
    wanted = list(dict.fromkeys(keys))
    nodes = [key for key in wanted if key[0] > 0]
    leaves = [idx + 1 for level, idx in wanted if level == 0]  # their entries' seq
    conn = session.connection()
    dbapi = conn.connection.dbapi_connection
    if dbapi is None:
        raise TreeError("the session's database connection is closed")
    dialect = conn.dialect
    postgres = dialect.name == "postgresql"
    sql = _lookup(dialect.name, dialect.paramstyle, len(nodes), len(leaves))
    if postgres:
        params: list[Any] = [[level for level, _ in nodes], [idx for _, idx in nodes], leaves]
    else:
        params = [*(value for key in nodes for value in key), *leaves]
    cursor = dbapi.cursor()
    try:
        cursor.execute(sql, params)
        found = {}
        for level, idx, value, *entry in cursor.fetchall():
            found[(level, idx)] = bytes(value) if level else _leaf_hash(idx + 1, *entry)
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
    finally:
        cursor.close()
    missing = [key for key in wanted if key not in found]
    if missing:
        raise TreeError(f"the ledger's Merkle tree is missing node(s) {missing[:3]}; run `amber db upgrade`")
    return found


_ENTRY = "entry_at, event_type, actor_issuer, actor_subject, actor_name, subject_kind, subject_id, payload, prev_hash"
_NO_ENTRY = ", ".join(["NULL"] * len(_ENTRY.split(",")))


def _leaf_hash(seq: int, at: datetime | str, *fields: str) -> bytes:
    """RFC 9162's leaf hash of the entry with these columns (as `append` hashed them: the stored payload text)."""
    kind, iss, sub, name, skind, sid, payload, prev = fields
    # SQLite hands the DateTime column back as SQLAlchemy wrote it (UTC wall clock), PostgreSQL as a datetime.
    when = datetime.fromisoformat(at).replace(tzinfo=UTC) if isinstance(at, str) else as_utc(at)
    data = entry_bytes(
        seq=seq,
        at=when,
        event_type=kind,
        actor=Actor(iss, sub, name),
        subject_kind=skind,
        subject_id=sid,
        payload_json=payload,
        prev_hash=prev,
    )
    return tlog.leaf_hash(data)


@functools.cache
def _lookup(dialect: str, paramstyle: str, nodes: int, leaves: int) -> str:
    """The lookup of `nodes` stored nodes and `leaves` entries, as rows (level, idx, hash, *entry columns).

    On PostgreSQL one statement for every count (prepared once by the driver) joining arrays; elsewhere a
    VALUES list joined on the primary key (a row-value IN list would make SQLite scan the table)."""
    table, entries = TreeNode.__tablename__, LedgerEntry.__tablename__
    leaf_rows = f"SELECT 0, seq - 1, NULL, {_ENTRY} FROM {entries} WHERE seq"
    if dialect == "postgresql":
        return (
            f"SELECT n.level, n.idx, n.hash, {_NO_ENTRY} FROM {table} AS n"
            " JOIN unnest(%s::smallint[], %s::bigint[]) AS k(level, idx) ON n.level = k.level AND n.idx = k.idx"
            f" UNION ALL {leaf_rows} = ANY(%s::bigint[])"
        )
    p = "?" if paramstyle == "qmark" else "%s"
    parts = []
    if nodes:
        values = ", ".join([f"({p}, {p})"] * nodes)
        parts.append(
            f"SELECT * FROM (WITH k(level, idx) AS (VALUES {values}) SELECT n.level, n.idx, n.hash, {_NO_ENTRY}"
            f" FROM k JOIN {table} AS n ON n.level = k.level AND n.idx = k.idx)"
        )
    if leaves:
        parts.append(f"{leaf_rows} IN ({', '.join([p] * leaves)})")
    return " UNION ALL ".join(parts)


def frontier(session: Session, size: int) -> tlog.Frontier:
    positions = tlog.Frontier.positions(size)
    found = _fetch(session, positions)
    return tlog.Frontier(size, [found[key] for key in positions])


def _compute(session: Session, compute: Callable[[tlog.NodeGetter], T]) -> T:
    """Run a pure tree computation after fetching, in one query, exactly the nodes it reads."""
    found = _fetch(session, tlog.needed_nodes(compute))
    return compute(lambda level, idx: found[(level, idx)])


def root(session: Session, size: int) -> bytes:
    return _compute(session, lambda node: tlog.tree_root(size, node))


def inclusion_proof(session: Session, index: int, size: int) -> list[bytes]:
    return _compute(session, lambda node: tlog.inclusion_proof(index, size, node))


def consistency_proof(session: Session, old_size: int, new_size: int) -> list[bytes]:
    return _compute(session, lambda node: tlog.consistency_proof(old_size, new_size, node))


def leaf(session: Session, index: int) -> bytes:
    return _fetch(session, [(0, index)])[(0, index)]
