"""Ledger Merkle tree and signed checkpoints: `ledger_tree_nodes`, `ledger_checkpoints` (both append-only),
`ledger_cursors` (how far each witness and SIEM stream has received) and `ledger_tree_head` (one row: size,
last hash and frontier, so an append reads one row).

Existing entries are added to the tree here, once, in seq order (the same leaf bytes `ledger.append` uses).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from amber.core.clock import as_utc
from amber.ledger import tlog
from amber.ledger.chain import Actor, entry_body, parse_payload

revision = "0003"
down_revision = "0002"

TS = sa.DateTime(timezone=True)
TABLES = ("ledger_tree_nodes", "ledger_checkpoints")


def upgrade() -> None:
    op.create_table(
        "ledger_tree_nodes",
        sa.Column("level", sa.SmallInteger, autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_ledger_tree_nodes"),
    )
    op.create_table(
        "ledger_checkpoints",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), autoincrement=True, nullable=False),
        sa.Column("tree_size", sa.BigInteger, nullable=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("signed_at", TS, nullable=False),
        sa.Column("vkey", sa.String(512), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_checkpoints"),
    )
    op.create_index("ix_ledger_checkpoints_size", "ledger_checkpoints", ["tree_size"])
    op.create_table(
        "ledger_cursors",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_ledger_cursors"),
    )
    op.create_table(
        "ledger_tree_head",
        sa.Column("id", sa.SmallInteger, autoincrement=False, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_tree_head"),
    )
    _backfill()
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(
                f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION amber_ledger_append_only()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION amber_ledger_append_only()"
            )
    else:
        for table in TABLES:
            for action in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                    "BEGIN SELECT RAISE(ABORT, 'amber ledger entries are append-only'); END"
                )


def _backfill() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT seq, entry_at, event_type, actor_issuer, actor_subject, actor_name, subject_kind, subject_id, "
            "payload, prev_hash, entry_hash FROM ledger_entries ORDER BY seq"
        ).columns(entry_at=TS)
    )
    edge = tlog.Frontier()
    last_hash = tlog.GENESIS
    batch: list[dict[str, object]] = []
    nodes = sa.table("ledger_tree_nodes", sa.column("level"), sa.column("idx"), sa.column("hash"))
    for row in rows:
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
        last_hash = row.entry_hash
        batch += [
            {"level": lv, "idx": ix, "hash": h} for lv, ix, h in edge.append(tlog.leaf_hash(tlog.canonical_json(body)))
        ]
        if len(batch) >= 10000:
            bind.execute(nodes.insert(), batch)
            batch = []
    if batch:
        bind.execute(nodes.insert(), batch)
    head = sa.table(
        "ledger_tree_head", sa.column("id"), sa.column("size"), sa.column("last_hash"), sa.column("frontier")
    )
    bind.execute(head.insert(), [{"id": 1, "size": edge.size, "last_hash": last_hash, "frontier": edge.blob()}])


def downgrade() -> None:
    raise NotImplementedError("the ledger's Merkle tree and checkpoints are never dropped")
