"""The hand-written migration and the SQLAlchemy models describe the same schema, on both state stores."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from amber import access_requests, grants, ledger  # noqa: F401 - registers every model on Base.metadata
from amber.core import meta  # noqa: F401
from amber.core.db import Base, make_engine
from amber.core.migrate import upgrade


def test_models_match_migrations(state_url: str) -> None:
    engine = make_engine(state_url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent: a second upgrade is a no-op
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()
