"""Gateway: how a grant is reached (direct or through the gateway) and the hash of its gateway token.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("via", sa.String(16), nullable=False, server_default="direct"))
        batch.add_column(sa.Column("gateway_token_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("amber's migrations are forward-only")
