"""Identity and SCIM: people and groups the identity provider provisions (`scim_users`, `scim_groups`,
`scim_members`), web sign-in sessions (`web_sessions`, stored as hashes) and sign-ins in flight (`web_logins`).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scim_users",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("user_name", sa.String(512), nullable=False),
        sa.Column("external_id", sa.String(512), nullable=True),
        sa.Column("subject", sa.String(512), nullable=True),
        sa.Column("display_name", sa.String(512), nullable=True),
        sa.Column("emails", sa.Text, nullable=False, server_default="[]"),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_scim_users"),
    )
    op.create_index("ix_scim_users_user_name", "scim_users", ["user_name"])
    op.create_index("ix_scim_users_subject", "scim_users", ["issuer", "subject"])
    op.create_table(
        "scim_groups",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(512), nullable=False),
        sa.Column("external_id", sa.String(512), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_scim_groups"),
    )
    op.create_index("ix_scim_groups_display_name", "scim_groups", ["display_name"])
    op.create_table(
        "scim_members",
        sa.Column(
            "group_id",
            sa.String(40),
            sa.ForeignKey("scim_groups.id", name="fk_scim_members_group_id_scim_groups"),
            nullable=False,
        ),
        sa.Column(
            "user_id",
            sa.String(40),
            sa.ForeignKey("scim_users.id", name="fk_scim_members_user_id_scim_users"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("group_id", "user_id", name="pk_scim_members"),
    )
    op.create_index("ix_scim_members_user_id", "scim_members", ["user_id"])
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(512), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("email", sa.String(512), nullable=True),
        sa.Column("groups", sa.Text, nullable=False, server_default="[]"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("end_reason", sa.String(256), nullable=True),
        sa.PrimaryKeyConstraint("id_hash", name="pk_web_sessions"),
    )
    op.create_index("ix_web_sessions_subject", "web_sessions", ["issuer", "subject"])
    op.create_table(
        "web_logins",
        sa.Column("state_hash", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("code_verifier", sa.String(128), nullable=False),
        sa.Column("return_to", sa.String(512), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("state_hash", name="pk_web_logins"),
    )


def downgrade() -> None:
    op.drop_table("web_logins")
    op.drop_index("ix_web_sessions_subject", table_name="web_sessions")
    op.drop_table("web_sessions")
    op.drop_index("ix_scim_members_user_id", table_name="scim_members")
    op.drop_table("scim_members")
    op.drop_index("ix_scim_groups_display_name", table_name="scim_groups")
    op.drop_table("scim_groups")
    op.drop_index("ix_scim_users_subject", table_name="scim_users")
    op.drop_index("ix_scim_users_user_name", table_name="scim_users")
    op.drop_table("scim_users")
