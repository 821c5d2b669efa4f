"""Initial state: requests, approvals, grants, the ledger (append-only by trigger), installation id.

Revision ID: 0001
Revises:
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

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
)


def upgrade() -> None:
    op.create_table(
        "amber_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    op.bulk_insert(
        sa.table("amber_meta", sa.column("key", sa.String), sa.column("value", sa.String)),
        [{"key": "installation_id", "value": secrets.token_hex(8)}],
    )
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("requester_issuer", sa.String(512), nullable=False),
        sa.Column("requester_subject", sa.String(512), nullable=False),
        sa.Column("requester_name", sa.String(512), nullable=False),
        sa.Column("requester_groups", sa.Text, nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("level", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("requested_ttl_s", sa.Integer, nullable=False),
        sa.Column("supersedes_id", sa.String(40), nullable=True),
        sa.Column("submitted_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("decision_reasons", sa.Text, nullable=False),
        sa.Column("policy_ids", sa.Text, nullable=False),
        sa.Column("policy_hash", sa.String(64), nullable=False),
        sa.Column("granted_ttl_s", sa.Integer, nullable=False),
        sa.Column("approvals_required", sa.Integer, nullable=False),
        sa.Column("approver_groups", sa.Text, nullable=False),
        sa.Column("closed_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_access_requests"),
    )
    op.create_index("ix_access_requests_status", "access_requests", ["status"])
    op.create_index("ix_access_requests_requester", "access_requests", ["requester_issuer", "requester_subject"])
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "request_id",
            sa.String(40),
            sa.ForeignKey("access_requests.id", name="fk_approvals_request_id_access_requests"),
            nullable=False,
        ),
        sa.Column("approver_issuer", sa.String(512), nullable=False),
        sa.Column("approver_subject", sa.String(512), nullable=False),
        sa.Column("approver_name", sa.String(512), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("decided_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
        sa.UniqueConstraint("request_id", "approver_issuer", "approver_subject", name="uq_approvals_one_per_person"),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column(
            "request_id",
            sa.String(40),
            sa.ForeignKey("access_requests.id", name="fk_grants_request_id_access_requests"),
            nullable=False,
        ),
        sa.Column("grantee_issuer", sa.String(512), nullable=False),
        sa.Column("grantee_subject", sa.String(512), nullable=False),
        sa.Column("grantee_name", sa.String(512), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("level", sa.String(64), nullable=False),
        sa.Column("role_name", sa.String(63), nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("activated_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("end_reason", sa.Text, nullable=True),
        sa.Column("ended_by", sa.String(512), nullable=True),
        sa.Column("credential_shown_at", TS, nullable=True),
        sa.Column("deprovisioned_at", TS, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("connect_host", sa.String(255), nullable=True),
        sa.Column("connect_port", sa.Integer, nullable=True),
        sa.Column("connect_database", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_grants"),
        sa.UniqueConstraint("request_id", name="uq_grants_request_id"),
        sa.UniqueConstraint("role_name", name="uq_grants_role_name"),
    )
    op.create_index("ix_grants_status_expires", "grants", ["status", "expires_at"])
    op.create_index("ix_grants_grantee", "grants", ["grantee_issuer", "grantee_subject"])
    op.create_table(
        "ledger_entries",
        sa.Column("seq", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("entry_at", TS, nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("actor_issuer", sa.String(512), nullable=False),
        sa.Column("actor_subject", sa.String(512), nullable=False),
        sa.Column("actor_name", sa.String(512), nullable=False),
        sa.Column("subject_kind", sa.String(32), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_ledger_entries"),
    )
    op.create_index("ix_ledger_subject", "ledger_entries", ["subject_kind", "subject_id"])
    if op.get_bind().dialect.name == "postgresql":
        _postgres_triggers()
    else:
        _sqlite_triggers()


def _sqlite_triggers() -> None:
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER ledger_entries_no_{action.lower()} BEFORE {action} ON ledger_entries "
            "BEGIN SELECT RAISE(ABORT, 'amber ledger entries are append-only'); END"
        )
    columns = ", ".join(IMMUTABLE_REQUEST_COLUMNS)
    op.execute(
        f"CREATE TRIGGER access_requests_immutable BEFORE UPDATE OF {columns} ON access_requests "
        "BEGIN SELECT RAISE(ABORT, 'a submitted access request is immutable'); END"
    )
    op.execute(
        "CREATE TRIGGER access_requests_no_delete BEFORE DELETE ON access_requests "
        "BEGIN SELECT RAISE(ABORT, 'access requests are never deleted'); END"
    )


def _postgres_triggers() -> None:
    op.execute("""
        CREATE FUNCTION amber_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'amber ledger entries are append-only' USING ERRCODE = 'insufficient_privilege';
        END $$""")
    op.execute(
        "CREATE TRIGGER ledger_entries_no_update_delete BEFORE UPDATE OR DELETE ON ledger_entries "
        "FOR EACH ROW EXECUTE FUNCTION amber_ledger_append_only()"
    )
    op.execute(
        "CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries "
        "FOR EACH STATEMENT EXECUTE FUNCTION amber_ledger_append_only()"
    )
    changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in IMMUTABLE_REQUEST_COLUMNS)
    op.execute(f"""
        CREATE FUNCTION amber_requests_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {changed} THEN
                RAISE EXCEPTION 'a submitted access request is immutable' USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NEW;
        END $$""")
    op.execute(
        "CREATE TRIGGER access_requests_immutable BEFORE UPDATE ON access_requests "
        "FOR EACH ROW EXECUTE FUNCTION amber_requests_immutable()"
    )
    op.execute(
        "CREATE TRIGGER access_requests_no_delete BEFORE DELETE ON access_requests "
        "FOR EACH ROW EXECUTE FUNCTION amber_ledger_append_only()"
    )


def downgrade() -> None:
    raise NotImplementedError("amber's first migration cannot be undone: it holds the ledger")
