"""The ledger's RFC 9162 Merkle tree in the database: stored perfect subtrees, roots and proofs.

Owns table `ledger_tree_nodes`. Invariant: after every committed append the table holds every perfect subtree
of the tree over entries 1..n (leaf index = seq - 1), written in the same transaction as the entry, so the
tree is never recomputed: an append reads the frontier (at most log2(n) rows), and a proof reads O(log n) rows
in one query. Callers serialize appends (see service.py); this module does not lock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import Select, and_, bindparam, insert, or_, select
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
    if not keys:
        return {}
    by_level: dict[int, list[int]] = {}
    for level, idx in keys:
        by_level.setdefault(level, []).append(idx)
    params: dict[str, object] = {}
    for n, (level, ids) in enumerate(by_level.items()):
        params[f"l{n}"], params[f"i{n}"] = level, sorted(set(ids))
    rows = session.execute(_lookup(len(by_level)), params)
    found = {(level, idx): bytes(value) for level, idx, value in rows}
    missing = [key for key in keys if key not in found]
    if missing:
        raise TreeError(f"the ledger's Merkle tree is missing node(s) {missing[:3]}; run `amber db upgrade`")
    return found


@functools.cache
def _lookup(levels: int) -> Select[int, int, bytes]:
    """Nodes at `levels` distinct levels, one primary-key range per level (a row-value IN list makes SQLite
    scan the table). Built once per number of levels so SQLAlchemy's compiled cache applies."""
    condition = or_(
        *(
            and_(TreeNode.level == bindparam(f"l{n}"), TreeNode.idx.in_(bindparam(f"i{n}", expanding=True)))
            for n in range(levels)
        )
    )
    return select(TreeNode.level, TreeNode.idx, TreeNode.hash).where(condition)


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
