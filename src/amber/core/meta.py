"""Installation-wide facts stored with the state: the installation id that tags every role amber creates."""

from __future__ import annotations

from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from amber.core.db import Base


class Meta(Base):
    __tablename__ = "amber_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


def installation_id(session: Session) -> str:
    """The id written by the first migration. Reconciliation only touches roles carrying it."""
    value = session.scalar(select(Meta.value).where(Meta.key == "installation_id"))
    if not value:
        raise RuntimeError("amber's state store has no installation id; run `amber db upgrade`")
    return value
