"""Ledger storage for group commit: the index by subject serves the queries that use it, and on SQLite the two
append-heavy tables are stored by their keys.

- `ix_ledger_subject` (subject_kind, subject_id) becomes `ix_ledger_subject_id` (subject_id): every lookup is
  by subject id alone (receipts, the API's `?subject=`), which the old index could not seek.
- SQLite: `ledger_entries.seq` becomes the rowid (`INTEGER PRIMARY KEY`, no separate key index) and
  `ledger_tree_nodes` a `WITHOUT ROWID` table (the key is the table), so an append writes two b-trees fewer.
  The tables are rebuilt with their rows, indexes and append-only triggers. PostgreSQL keeps its tables.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"

ENTRY_COLUMNS = (
    "seq, entry_at, event_type, actor_issuer, actor_subject, actor_name, subject_kind, subject_id, payload, "
    "prev_hash, entry_hash"
)


def upgrade() -> None:
    op.drop_index("ix_ledger_subject", table_name="ledger_entries")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite()
    op.create_index("ix_ledger_subject_id", "ledger_entries", ["subject_id"])


def _rebuild_sqlite() -> None:
    # The column types are what SQLAlchemy's SQLite dialect writes for the models (tests/core/test_migrations.py).
    op.execute("ALTER TABLE ledger_entries RENAME TO ledger_entries_0006")
    op.execute("""
        CREATE TABLE ledger_entries (
            seq INTEGER NOT NULL,
            entry_at DATETIME NOT NULL,
            event_type VARCHAR(64) NOT NULL,
            actor_issuer VARCHAR(512) NOT NULL,
            actor_subject VARCHAR(512) NOT NULL,
            actor_name VARCHAR(512) NOT NULL,
            subject_kind VARCHAR(32) NOT NULL,
            subject_id VARCHAR(64) NOT NULL,
            payload TEXT NOT NULL,
            prev_hash VARCHAR(64) NOT NULL,
            entry_hash VARCHAR(64) NOT NULL,
            CONSTRAINT pk_ledger_entries PRIMARY KEY (seq)
        )""")
    op.execute(
        f"INSERT INTO ledger_entries ({ENTRY_COLUMNS}) SELECT {ENTRY_COLUMNS} FROM ledger_entries_0006 ORDER BY seq"
    )
    op.execute("DROP TABLE ledger_entries_0006")  # with its triggers
    op.execute("ALTER TABLE ledger_tree_nodes RENAME TO ledger_tree_nodes_0006")
    op.execute("""
        CREATE TABLE ledger_tree_nodes (
            level SMALLINT NOT NULL,
            idx BIGINT NOT NULL,
            hash BLOB NOT NULL,
            CONSTRAINT pk_ledger_tree_nodes PRIMARY KEY (level, idx)
        ) WITHOUT ROWID""")
    op.execute(
        "INSERT INTO ledger_tree_nodes (level, idx, hash) SELECT level, idx, hash FROM ledger_tree_nodes_0006"
        " ORDER BY level, idx"
    )
    op.execute("DROP TABLE ledger_tree_nodes_0006")
    for table in ("ledger_entries", "ledger_tree_nodes"):
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                "BEGIN SELECT RAISE(ABORT, 'amber ledger entries are append-only'); END"
            )


def downgrade() -> None:
    raise NotImplementedError("amber's migrations are forward-only")
