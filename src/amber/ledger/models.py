"""The ledger table. Rows are only ever inserted: database triggers refuse UPDATE, DELETE and TRUNCATE."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from amber.core.db import Base


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
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

    __table_args__ = (Index("ix_ledger_subject", "subject_kind", "subject_id"),)
