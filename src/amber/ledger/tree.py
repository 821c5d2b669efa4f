"""The ledger's RFC 9162 Merkle tree in the database: stored perfect subtrees, roots and proofs.

Owns table `ledger_tree_nodes`. Invariant: after every committed append the table holds every perfect subtree
of the tree over entries 1..n (leaf index = seq - 1), written in the same transaction as the entry, so the
tree is never recomputed: an append reads the frontier (at most log2(n) rows), and a proof reads O(log n) rows
in one query. Callers serialize appends (see service.py); this module does not lock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from amber.core.errors import AmberError
from amber.ledger import tlog
from amber.ledger.models import TreeNode

T = TypeVar("T")


class TreeError(AmberError):
    status = 500
    type_slug = "ledger-tree"
    title = "Ledger Merkle tree is inconsistent"


def _fetch(session: Session, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
    """The stored nodes at `keys` (level, index), in one query on the session's DBAPI connection: a proof is a
    few dozen primary-key lookups, and SQLAlchemy's expanding IN lists cost more than running them."""
    if not keys:
        return {}
    wanted = list(dict.fromkeys(keys))
    conn = session.connection()
    dbapi = conn.connection.dbapi_connection
    if dbapi is None:
        raise TreeError("the session's database connection is closed")
    dialect = conn.dialect
    sql = _lookup(dialect.name, dialect.paramstyle, len(wanted))
    if dialect.name == "postgresql":
        params: list[Any] = [[level for level, _ in wanted], [idx for _, idx in wanted]]
    else:
        params = [value for key in wanted for value in key]
    cursor = dbapi.cursor()
    try:
        cursor.execute(sql, params)
        found = {(level, idx): bytes(value) for level, idx, value in cursor.fetchall()}
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, params, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc
    finally:
        cursor.close()
    missing = [key for key in wanted if key not in found]
    if missing:
        raise TreeError(f"the ledger's Merkle tree is missing node(s) {missing[:3]}; run `amber db upgrade`")
    return found


@functools.cache
def _lookup(dialect: str, paramstyle: str, count: int) -> str:
    """The lookup of `count` nodes: on PostgreSQL one statement for every count (prepared once by the driver),
    joining two arrays; elsewhere a VALUES list joined on the primary key (a row-value IN list would make
    SQLite scan the table)."""
    table = TreeNode.__tablename__
    if dialect == "postgresql":
        return (
            f"SELECT n.level, n.idx, n.hash FROM {table} AS n"
            " JOIN unnest(%s::smallint[], %s::bigint[]) AS k(level, idx) ON n.level = k.level AND n.idx = k.idx"
        )
    p = "?" if paramstyle == "qmark" else "%s"
    values = ", ".join([f"({p}, {p})"] * count)
    return (
        f"WITH k(level, idx) AS (VALUES {values}) SELECT n.level, n.idx, n.hash FROM k"
        f" JOIN {table} AS n ON n.level = k.level AND n.idx = k.idx"
    )


def frontier(session: Session, size: int) -> tlog.Frontier:
    positions = tlog.Frontier.positions(size)
    found = _fetch(session, positions)
    return tlog.Frontier(size, [found[key] for key in positions])


def store(session: Session, nodes: Sequence[tuple[int, int, bytes]]) -> None:
    if nodes:
        session.execute(insert(TreeNode), [{"level": lv, "idx": ix, "hash": h} for lv, ix, h in nodes])


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
