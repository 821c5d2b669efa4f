"""Inclusion and consistency proofs, receipts and export bundles: what amber hands to people who check it.

Owns the exported entry encoding (the canonical body plus its `hash`) and the bundle layout. Invariant:
everything produced here verifies with tlog.py alone (tools/amber_verify.py), given the public key.
What this does NOT check: who may see an entry; callers (api, cli) decide that before asking for a receipt.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from amber.core.clock import as_utc
from amber.core.errors import NotFound
from amber.ledger import tlog, tree
from amber.ledger.chain import Actor, entry_body, entry_bytes, parse_payload
from amber.ledger.checkpoints import CheckpointError, CheckpointView, checkpoints, key_history, latest_checkpoint
from amber.ledger.models import LedgerEntry
from amber.ledger.service import head


def exported(row: LedgerEntry) -> dict[str, Any]:
    """The entry as exported: its canonical body (the Merkle leaf data) plus `hash` (= entry_hash)."""
    body = entry_body(
        seq=row.seq,
        at=as_utc(row.entry_at),
        event_type=row.event_type,
        actor=Actor(row.actor_issuer, row.actor_subject, row.actor_name),
        subject_kind=row.subject_kind,
        subject_id=row.subject_id,
        payload=parse_payload(row.payload),
        prev_hash=row.prev_hash,
    )
    return {**body, "hash": row.entry_hash}


@dataclass(frozen=True)
class InclusionProof:
    seq: int
    tree_size: int
    leaf_hash: bytes
    proof: list[bytes]
    root: bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "leaf_index": self.seq - 1,
            "tree_size": self.tree_size,
            "leaf_hash": self.leaf_hash.hex(),
            "proof": [h.hex() for h in self.proof],
            "root": self.root.hex(),
        }


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: list[bytes]

    def as_dict(self) -> dict[str, Any]:
        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": self.old_root.hex(),
            "new_root": self.new_root.hex(),
            "proof": [h.hex() for h in self.proof],
        }


def _size(session: Session, size: int | None) -> int:
    current, _ = head(session)
    if size is None:
        return current
    if not 0 <= size <= current:
        raise NotFound(f"the ledger has {current} entries; there is no tree of size {size}")
    return size


def inclusion(session: Session, seq: int, size: int | None = None) -> InclusionProof:
    n = _size(session, size)
    if not 1 <= seq <= n:
        raise NotFound(f"entry {seq} is not in the tree of size {n}")
    return InclusionProof(
        seq, n, tree.leaf(session, seq - 1), tree.inclusion_proof(session, seq - 1, n), tree.root(session, n)
    )


def consistency(session: Session, old_size: int, new_size: int | None = None) -> ConsistencyProof:
    n = _size(session, new_size)
    if not 0 <= old_size <= n:
        raise NotFound(f"no consistency proof from size {old_size} to size {n}")
    return ConsistencyProof(
        old_size, n, tree.root(session, old_size), tree.root(session, n), tree.consistency_proof(session, old_size, n)
    )


def rotations(session: Session, size: int) -> list[dict[str, Any]]:
    """Each key rotation entry among the first `size` entries: {entry (as exported), index, proof (hex)}, the
    proof placing it in the tree of `size` entries."""
    n = _size(session, size)
    rows = session.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.event_type == tlog.KEY_ROTATION_EVENT, LedgerEntry.seq <= n)
        .order_by(LedgerEntry.seq)
    )
    return [
        {
            "entry": exported(row),
            "index": row.seq - 1,
            "proof": [h.hex() for h in tree.inclusion_proof(session, row.seq - 1, n)],
        }
        for row in rows
    ]


def receipt(session: Session, seq: int, checkpoint: CheckpointView | None = None) -> str:
    """Entry + checkpoint + inclusion proof as one c2sp.org/tlog-proof@v1 text. Needs a checkpoint covering seq."""
    checkpoint = checkpoint or latest_checkpoint(session)
    if checkpoint is None or checkpoint.tree_size < seq:
        raise CheckpointError(f"entry {seq} is not covered by a signed checkpoint yet")
    row = session.get(LedgerEntry, seq)
    if row is None:
        raise NotFound(f"no ledger entry {seq}")
    proof = tree.inclusion_proof(session, seq - 1, checkpoint.tree_size)
    return tlog.format_receipt(exported(row), seq - 1, proof, checkpoint.note)


VERIFIER_ADVICE = (
    "Verify with a verifier from a source you trust: the published amber package (`amber audit verify --bundle DIR "
    "--key KEY`) or tools/amber_verify.py from amber's repository, and the key obtained independently. The "
    "amber_verify.py in this bundle is a convenience copy only: whoever made the bundle could have changed it."
)


def export_bundle(session: Session, directory: Path, origin: str) -> dict[str, Any]:
    """Write entries.jsonl, checkpoints.jsonl, keys.txt, manifest.json and amber_verify.py into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    # Checkpoints first, then the head: every checkpoint read is then covered by the entries exported, even
    # when appends commit while the export runs (PostgreSQL's READ COMMITTED sees them).
    signed = checkpoints(session)
    size, _ = head(session)
    count = 0
    with (directory / "entries.jsonl").open("wb") as handle:
        for data, seq, _, _, entry_hash in _bodies(session):
            if seq > size:
                break
            handle.write(_exported_line(data, entry_hash))
            count += 1
    with (directory / "checkpoints.jsonl").open("w", encoding="utf-8") as handle:
        for cp in signed:
            line = {"id": cp.id, "tree_size": cp.tree_size, "signed_at": cp.signed_at.isoformat(), "note": cp.note}
            handle.write(json.dumps(line, sort_keys=True) + "\n")
    keys = key_history(session)
    (directory / "keys.txt").write_text("".join(f"{key}\n" for key in keys))
    shutil.copyfile(tlog.__file__, directory / "amber_verify.py")
    manifest = {
        "format": "amber-ledger-bundle/1",
        "origin": origin,
        "entries": count,
        "checkpoints": len(signed),
        "latest_checkpoint_size": signed[-1].tree_size if signed else None,
        "keys": keys,
        "verifier": VERIFIER_ADVICE,
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_tree(
    session: Session,
    keys: Sequence[tlog.Verifier],
    witnessed: Sequence[tuple[str, str]],
    since: tuple[str, str] | None,
    origin: str | None,
    *,
    allow_unsigned_tail: bool = True,
    legacy_key_names: bool = False,
    witness_keys: Sequence[tlog.Verifier] = (),
    min_witnesses: int = 0,
) -> list[str]:
    """The stored Merkle tree against the entries, and every checkpoint (stored or given) against both.

    With `allow_unsigned_tail=False` (the CLI's default), entries no trusted checkpoint covers are a problem.
    """
    notes = [(f"#{cp.id}", cp.note) for cp in checkpoints(session)]
    history = key_history(session)
    trusted = list(keys) or ([tlog.Verifier.parse(history[0])] if history else [])
    if (witnessed or since) and not trusted:
        return ["signature: no trusted key: pass --key (no checkpoint was ever signed here)"]
    result = tlog.verify_leaves(
        _leaves(session),
        [*notes, *witnessed],
        trusted,
        origin=origin,
        since=since,
        allow_unsigned_tail=allow_unsigned_tail,
        legacy_key_names=legacy_key_names,
        witness_keys=witness_keys,
        min_witnesses=min_witnesses,
    )
    problems = [str(p) for p in result.problems]
    size, _ = head(session)
    try:
        stored = tree.root(session, size)
    except tree.TreeError as exc:
        return [*problems, f"tree: {exc.message}"]
    if stored != result.root:
        problems.append(f"tree: the stored Merkle tree's root at size {size} does not match the entries")
    return problems


_COLUMNS = (
    LedgerEntry.seq,
    LedgerEntry.entry_at,
    LedgerEntry.event_type,
    LedgerEntry.actor_issuer,
    LedgerEntry.actor_subject,
    LedgerEntry.actor_name,
    LedgerEntry.subject_kind,
    LedgerEntry.subject_id,
    LedgerEntry.payload,
    LedgerEntry.prev_hash,
    LedgerEntry.entry_hash,
)


def _bodies(session: Session, batch: int = 20_000) -> Iterator[tuple[bytes, int, str, str, str]]:
    """(canonical body, seq, type, prev hash, entry hash) for every entry in seq order, from plain rows (no ORM
    objects: this is the 1M-entry path). The body is rebuilt from the columns exactly as `append` built it, with
    the stored payload text as is: `append` stored the very canonical JSON it hashed, so the entry hash covers
    the column itself (re-encoding it would also accept a payload rewritten into another JSON spelling)."""
    after = 0
    while True:
        query = select(*_COLUMNS).where(LedgerEntry.seq > after).order_by(LedgerEntry.seq).limit(batch)
        rows = session.connection().execute(query).all()  # Core rows: ORM rows cost more than hashing them
        for seq, at, kind, iss, sub, name, skind, sid, payload, prev, entry_hash in rows:
            data = entry_bytes(
                seq=seq,
                at=as_utc(at),
                event_type=kind,
                actor=Actor(iss, sub, name),
                subject_kind=skind,
                subject_id=sid,
                payload_json=payload,
                prev_hash=prev,
            )
            yield data, seq, kind, prev, entry_hash
        if len(rows) < batch:
            return
        after = rows[-1][0]


def _exported_line(data: bytes, entry_hash: str) -> bytes:
    """`canonical_json(exported(row))` from the body's canonical bytes: `hash` sorts between `at` and `payload`,
    and `,"payload":` first occurs as that key (inside a JSON string a quote is always escaped)."""
    cut = data.index(b',"payload":')
    return data[:cut] + b',"hash":' + encode_basestring(entry_hash).encode() + data[cut:] + b"\n"


def _leaves(session: Session) -> Iterator[tlog.Leaf]:
    """(canonical body, stored hash, entry) for every entry; the entry is the whole body only for key rotations
    (whose payload the verifier reads), else just seq, prev and type."""
    for data, seq, kind, prev, entry_hash in _bodies(session):
        entry = json.loads(data) if kind == tlog.KEY_ROTATION_EVENT else {"seq": seq, "prev": prev, "type": kind}
        yield data, entry_hash, entry
