"""Alembic environment. amber runs migrations programmatically (core/migrate.py); no alembic.ini needed."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("amber migrations run through `amber db upgrade` (core.migrate.upgrade)")
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
