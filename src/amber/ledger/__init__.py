"""The ledger: an append-only, hash-chained event log. The only writer of the ledger table."""

from amber.ledger.chain import SYSTEM, Actor
from amber.ledger.service import EntryView, append, count, entries, head, iter_raw, latest
from amber.ledger.verify import ChainProblem, ChainReport, verify_chain

__all__ = [
    "SYSTEM",
    "Actor",
    "ChainProblem",
    "ChainReport",
    "EntryView",
    "append",
    "count",
    "entries",
    "head",
    "iter_raw",
    "latest",
    "verify_chain",
]
