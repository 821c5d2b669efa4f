"""Gateway: a SCRAM-SHA-256 verifier of the grant's gateway token, so clients can log in with SCRAM.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    # Nullable: tokens issued before this revision have only their HMAC and log in with a cleartext password
    # (inside TLS) until they are re-issued.
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("gateway_scram_verifier", sa.String(255), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("amber's migrations are forward-only")
