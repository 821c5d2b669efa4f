"""Policy workflow: scheduled starts, pending expiry, approver sets, single use, break-glass reviews.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

TS = sa.DateTime(timezone=True)
IMMUTABLE_REQUEST_COLUMNS = (
    "requester_issuer",
    "requester_subject",
    "requester_name",
    "requester_groups",
    "resource",
    "level",
    "reason",
    "requested_ttl_s",
    "submitted_at",
    "supersedes_id",
    "requested_start_at",
    "break_glass",
)


def upgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(sa.Column("requested_start_at", TS, nullable=True))
        batch.add_column(sa.Column("break_glass", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("pending_expires_at", TS, nullable=True))
        batch.add_column(sa.Column("approver_all_groups", sa.Text, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("single_use", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("window_end_at", TS, nullable=True))
        batch.add_column(sa.Column("review_status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("reviewed_at", TS, nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.String(512), nullable=True))
    op.create_index("ix_access_requests_review", "access_requests", ["review_status"])
    with op.batch_alter_table("approvals") as batch:
        batch.add_column(sa.Column("approver_groups", sa.Text, nullable=False, server_default="[]"))
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("starts_at", TS, nullable=True))
        batch.add_column(sa.Column("single_use", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("session_seen_at", TS, nullable=True))
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
    )
    op.create_index("ix_notifications_pending", "notifications", ["delivered_at", "next_attempt_at"])
    if op.get_bind().dialect.name == "postgresql":
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in IMMUTABLE_REQUEST_COLUMNS)
        op.execute(f"""
            CREATE OR REPLACE FUNCTION amber_requests_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF {changed} THEN
                    RAISE EXCEPTION 'a submitted access request is immutable'
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN NEW;
            END $$""")
    else:
        # batch_alter_table recreated the table on SQLite, which drops its triggers: put them back, wider.
        op.execute("DROP TRIGGER IF EXISTS access_requests_immutable")
        op.execute("DROP TRIGGER IF EXISTS access_requests_no_delete")
        columns = ", ".join(IMMUTABLE_REQUEST_COLUMNS)
        op.execute(
            f"CREATE TRIGGER access_requests_immutable BEFORE UPDATE OF {columns} ON access_requests "
            "BEGIN SELECT RAISE(ABORT, 'a submitted access request is immutable'); END"
        )
        op.execute(
            "CREATE TRIGGER access_requests_no_delete BEFORE DELETE ON access_requests "
            "BEGIN SELECT RAISE(ABORT, 'access requests are never deleted'); END"
        )


def downgrade() -> None:
    raise NotImplementedError("amber's migrations are forward-only")
