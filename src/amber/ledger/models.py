"""The ledger tables: entries, Merkle tree nodes, signed checkpoints. Rows are only ever inserted: database
triggers refuse UPDATE, DELETE and TRUNCATE on all three."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, Integer, LargeBinary, SmallInteger, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from amber.core.db import Base


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    # On SQLite, INTEGER PRIMARY KEY: seq is the rowid, the table is stored by it (no separate key index).
    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    entry_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    event_type: Mapped[str] = mapped_column(String(64))
    actor_issuer: Mapped[str] = mapped_column(String(512))
    actor_subject: Mapped[str] = mapped_column(String(512))
    actor_name: Mapped[str] = mapped_column(String(512))
    subject_kind: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)  # canonical JSON, exactly the bytes that were hashed
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("ix_ledger_subject_id", "subject_id"),)


class TreeNode(Base):
    """A perfect subtree of the ledger's RFC 9162 Merkle tree: leaves [idx * 2**level, (idx+1) * 2**level).

    Level 0 holds the leaf hashes. Rows are only ever inserted, in the same transaction as the entry that
    completes them; the tree's right edge (its frontier) is the node per set bit of the size.
    """

    __tablename__ = "ledger_tree_nodes"

    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))

    __table_args__ = {"sqlite_with_rowid": False}  # noqa: RUF012 - SQLAlchemy's declarative table options


class SignedCheckpoint(Base):
    """A C2SP checkpoint (origin, tree size, root) as the signed note that was published. Insert-only."""

    __tablename__ = "ledger_checkpoints"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigInteger)
    root_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    vkey: Mapped[str] = mapped_column(String(512))  # the signer's verifier key (name+id+key)
    note: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_ledger_checkpoints_size", "tree_size"),)


class Cursor(Base):
    """How far a consumer (a witness, a SIEM stream) has durably received: the last checkpoint id or seq."""

    __tablename__ = "ledger_cursors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TreeHead(Base):
    """One row: the ledger's size, last entry hash and Merkle frontier (32-byte hashes, largest subtree first).

    Updated in the same transaction as every append so an append reads one row instead of scanning; it is a
    cache of what `ledger_entries` and `ledger_tree_nodes` say, and verification recomputes both.
    """

    __tablename__ = "ledger_tree_head"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
