"""Verifying the hash chain: recompute every entry's hash and link, and name the first bad entry.

What this does NOT prove on its own: that nobody with write access rewrote the whole chain from some point
on and recomputed every hash. That needs a head kept outside amber (signed checkpoints, a later issue).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from amber.core.clock import as_utc
from amber.ledger.chain import GENESIS, Actor, entry_body, hash_body, parse_payload
from amber.ledger.models import LedgerEntry


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    check: str
    message: str

    def __str__(self) -> str:
        return f"entry {self.seq}: {self.check}: {self.message}"


@dataclass(frozen=True)
class ChainReport:
    entries: int
    head_hash: str
    problem: ChainProblem | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_chain(rows: Iterable[LedgerEntry]) -> ChainReport:
    expected_seq = 1
    prev = GENESIS
    count = 0
    for row in rows:
        if row.seq != expected_seq:
            what = "missing (deleted?)" if row.seq > expected_seq else "out of order"
            return ChainReport(
                count,
                prev,
                ChainProblem(
                    expected_seq,
                    "sequence",
                    f"expected entry {expected_seq} but found {row.seq}: entry {what}",
                ),
            )
        if row.prev_hash != prev:
            return ChainReport(
                count,
                prev,
                ChainProblem(
                    row.seq,
                    "link",
                    "prev_hash does not match the previous entry's hash "
                    "(an entry before it was changed, removed or inserted)",
                ),
            )
        try:
            payload = parse_payload(row.payload)
        except ValueError:
            return ChainReport(count, prev, ChainProblem(row.seq, "payload", "payload is not a JSON object"))
        body = entry_body(
            seq=row.seq,
            at=as_utc(row.entry_at),
            event_type=row.event_type,
            actor=Actor(row.actor_issuer, row.actor_subject, row.actor_name),
            subject_kind=row.subject_kind,
            subject_id=row.subject_id,
            payload=payload,
            prev_hash=row.prev_hash,
        )
        computed = hash_body(body)
        if computed != row.entry_hash:
            return ChainReport(
                count,
                prev,
                ChainProblem(row.seq, "hash", "the entry's content does not match its hash (it was edited)"),
            )
        prev = row.entry_hash
        expected_seq += 1
        count += 1
    return ChainReport(count, prev, None)
