"""amber's own state store: engine, sessions and the unit of work.

One request or job is one transaction: `with uow() as session:` commits at the end or rolls back on error.
Services receive a session and never commit. SQLite runs in WAL mode with `BEGIN IMMEDIATE` so concurrent
writers queue instead of failing with "database is locked" half-way through.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, create_engine, event, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


UnitOfWork = Callable[[], AbstractContextManager[Session]]


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        _private_file(make_url(url).database)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)


def _private_file(database: str | None) -> None:
    """Create the SQLite state file readable by its owner only (0600) before SQLite does (it would use the umask,
    usually 0644), and take group and other access away from an existing one. SQLite gives its -wal and -shm
    files the database file's mode. Not checked: the directory's mode (Runtime.build makes the state dir 0700)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.exists():
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide where transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before it is acknowledged, so a power loss or OS crash cannot take back a
        # grant, a shown credential or a ledger entry (NORMAL could lose the last commits; decision 0013).
        cursor.execute("PRAGMA synchronous=FULL")
        # Checkpoint the WAL into the database every ~40 MB instead of ~4 MB: a page rewritten by many commits
        # (the ledger's head, index leaves) is copied back once, and the checkpoint's fsyncs come 10x less
        # often. Durability is unchanged: a commit is in the WAL either way.
        cursor.execute("PRAGMA wal_autocheckpoint=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # On the driver connection directly: through `exec_driver_sql` this costs a fifth of a unit of work.
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")


def make_unit_of_work(engine: Engine) -> UnitOfWork:
    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)

    @contextmanager
    def unit_of_work() -> Iterator[Session]:
        session = factory()
        try:
            with session.begin():
                yield session
        finally:
            session.close()

    return unit_of_work


def is_postgres(session_or_engine: Session | Engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"
