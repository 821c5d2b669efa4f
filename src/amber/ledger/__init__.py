"""The ledger: an append-only, hash-chained, Merkle-tree-proved event log with signed checkpoints.

The only writer of the ledger tables (entries, tree nodes, checkpoints).
"""

from amber.ledger.chain import SYSTEM, Actor
from amber.ledger.service import EntryView, NewEntry, append, append_many, count, entries, head, iter_raw, latest
from amber.ledger.verify import ChainProblem, ChainReport, verify_chain

__all__ = [
    "SYSTEM",
    "Actor",
    "ChainProblem",
    "ChainReport",
    "EntryView",
    "NewEntry",
    "append",
    "append_many",
    "count",
    "entries",
    "head",
    "iter_raw",
    "latest",
    "verify_chain",
]
