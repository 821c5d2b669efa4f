"""Signed checkpoints of the ledger's Merkle tree, the signing key, and key rotation.

Owns table `ledger_checkpoints` and the `ledger.key_rotated` entry. Invariants:
- a checkpoint is signed only over the tree as stored in the same transaction (size = last seq, root from
  the stored nodes), under the ledger lock, so it never claims entries that are not committed with it;
- only the key in force signs: the key named by the latest `ledger.key_rotated` entry, or, before any
  rotation, the key of the first checkpoint. A misconfigured key fails closed (no checkpoint) with a clear
  error instead of forking the key history;
- the private key is read by reference (`file:` / `env:`), held in memory, and never logged or returned.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from amber.core.clock import as_utc
from amber.core.db import is_postgres
from amber.core.errors import AmberError, ConfigError
from amber.ledger import tlog, tree
from amber.ledger.chain import Actor
from amber.ledger.models import LedgerEntry, SignedCheckpoint
from amber.ledger.service import LOCK_KEY, append, head

DEV_KEY_FILE = "ledger-signing.key"
LEDGER_DEV_KEY_WARNING = (
    "the ledger's checkpoints are signed with a development key kept in the state directory; "
    "set AMBER_LEDGER_SIGNING_KEY for anything auditors rely on"
)


class CheckpointError(AmberError):
    status = 409
    type_slug = "ledger-checkpoint"
    title = "Ledger checkpoint refused"


@dataclass(frozen=True)
class CheckpointView:
    id: int
    tree_size: int
    root_hash: str
    signed_at: datetime
    vkey: str
    note: str


def load_signer(reference: str) -> tlog.Signer:
    """Read a signing key from `file:/path` or `env:NAME`. Errors name the reference, never the key."""
    kind, _, where = reference.partition(":")
    if kind == "file":
        try:
            value = Path(where).expanduser().read_text()
        except OSError as exc:
            raise ConfigError(f"ledger signing key {reference}: cannot read the file ({exc.strerror})") from None
    elif kind == "env":
        value = os.environ.get(where, "")
        if not value:
            raise ConfigError(f"ledger signing key {reference}: the variable is not set")
    else:
        raise ConfigError("the ledger signing key must be given by reference: `file:/path` or `env:NAME`")
    try:
        return tlog.Signer.parse(value)
    except ValueError as exc:
        raise ConfigError(f"ledger signing key {reference}: {exc}") from None


def write_key(path: Path, signer: tlog.Signer) -> None:
    """Write a private key file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(signer.skey() + "\n")


def dev_signer(state_dir: Path, origin: str) -> tlog.Signer:
    """A signing key named after the origin, kept in the state directory, created on first use. For development
    and tests only. A key made before keys were named after the origin is returned as is: signing then refuses
    with the fix (rotate to a key named after the origin)."""
    path = state_dir / DEV_KEY_FILE
    if not path.exists():
        try:
            write_key(path, tlog.Signer.generate(origin))
        except ValueError as exc:
            raise ConfigError(f"AMBER_LEDGER_ORIGIN {origin!r} cannot name the ledger's key: {exc}") from None
    return load_signer(f"file:{path}")


def _view(row: SignedCheckpoint) -> CheckpointView:
    return CheckpointView(row.id, row.tree_size, row.root_hash, as_utc(row.signed_at), row.vkey, row.note)


def latest_checkpoint(session: Session) -> CheckpointView | None:
    row = session.scalar(select(SignedCheckpoint).order_by(SignedCheckpoint.id.desc()).limit(1))
    return _view(row) if row is not None else None


def checkpoints(session: Session, *, after_id: int = 0) -> list[CheckpointView]:
    rows = session.scalars(select(SignedCheckpoint).where(SignedCheckpoint.id > after_id).order_by(SignedCheckpoint.id))
    return [_view(row) for row in rows]


def key_history(session: Session) -> list[str]:
    """Every verifier key the ledger has used, oldest first: the first checkpoint's key, then each rotation's."""
    first = session.scalar(select(SignedCheckpoint.vkey).order_by(SignedCheckpoint.id).limit(1))
    keys = [first] if first else []
    rows = session.scalars(
        select(LedgerEntry.payload).where(LedgerEntry.event_type == tlog.KEY_ROTATION_EVENT).order_by(LedgerEntry.seq)
    )
    for payload in rows:
        fields = json.loads(payload)
        if not keys:
            keys.append(str(fields["old_key"]))
        keys.append(str(fields["new_key"]))
    return keys


def key_in_force(session: Session) -> str | None:
    history = key_history(session)
    return history[-1] if history else None


def _lock(session: Session) -> None:
    if is_postgres(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


def sign(session: Session, signer: tlog.Signer, origin: str, at: datetime) -> CheckpointView:
    """Sign the tree as it is in this transaction. Returns the latest checkpoint if it already covers it.

    Does NOT publish to witnesses; that happens after commit.
    """
    _lock(session)
    _check_key_name(origin, signer, "ledger signing key")
    expected = key_in_force(session)
    if expected is not None and expected != signer.verifier.vkey:
        raise CheckpointError(
            f"the configured ledger signing key ({signer.verifier.name}+{signer.verifier.key_id.hex()}) is not "
            "the key in force; rotate to it with `amber audit rotate-key`"
        )
    size, _ = head(session)
    last = latest_checkpoint(session)
    if last is not None and last.tree_size == size and last.vkey == signer.verifier.vkey:
        return last
    root = tree.root(session, size)
    note = tlog.sign_checkpoint(tlog.Checkpoint(origin, size, root), signer)
    row = SignedCheckpoint(tree_size=size, root_hash=root.hex(), signed_at=at, vkey=signer.verifier.vkey, note=note)
    session.add(row)
    session.flush()
    return _view(row)


def _check_key_name(origin: str, signer: tlog.Signer, what: str) -> None:
    """Fail closed before signing: C2SP tlog-checkpoint wants the log's key named after the origin."""
    if signer.name != origin:
        raise CheckpointError(
            f"the {what} is named {signer.name!r} but the checkpoint origin is {origin!r}; a log's key must be "
            "named after its origin. Fix: `amber audit keygen --out NEW.key` (named after the origin by default), "
            "then `amber audit rotate-key --new-key file:NEW.key` and set AMBER_LEDGER_SIGNING_KEY=file:NEW.key "
            "(docs/ledger.md, 'Key names')"
        )


def rotate_key(
    session: Session, *, old: tlog.Signer, new: tlog.Signer, origin: str, at: datetime, actor: Actor
) -> CheckpointView:
    """Record `ledger.key_rotated` (signed by the old key) and sign a first checkpoint with the new key."""
    _lock(session)
    expected = key_in_force(session)
    if expected is not None and expected != old.verifier.vkey:
        raise CheckpointError("the old key given is not the ledger's key in force; nothing was rotated")
    if old.verifier == new.verifier:
        raise CheckpointError("the new key is the key in force already")
    _check_key_name(origin, new, "new ledger signing key")
    if expected is None:
        if old.name != origin:
            raise CheckpointError(
                "no checkpoint was ever signed, so there is nothing to hand over: set AMBER_LEDGER_SIGNING_KEY to "
                "the new key instead of rotating"
            )
        # No checkpoint yet: the first checkpoint fixes the old key as the start of the key history.
        sign(session, old, origin, at)
    statement = tlog.rotation_statement(origin, old.verifier.vkey, new.verifier.vkey)
    append(
        session,
        at=at,
        event_type=tlog.KEY_ROTATION_EVENT,
        actor=actor,
        subject_kind="ledger",
        subject_id=new.verifier.key_id.hex(),
        payload={
            "origin": origin,
            "old_key": old.verifier.vkey,
            "new_key": new.verifier.vkey,
            "signature": base64.b64encode(old.sign(statement)).decode(),
        },
    )
    return sign(session, new, origin, at)


__all__ = [
    "CheckpointError",
    "CheckpointView",
    "checkpoints",
    "dev_signer",
    "key_history",
    "key_in_force",
    "latest_checkpoint",
    "load_signer",
    "rotate_key",
    "sign",
    "write_key",
]
