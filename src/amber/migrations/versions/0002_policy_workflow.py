"""Policy workflow: request windows, pending expiry, single-use grants, break-glass reviews.

Revision ID: 0002
Revises: 0001
"""

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    # Filled in by the Cedar policy work (issue 3); kept as a fixed point of the revision chain.
    pass


def downgrade() -> None:
    pass
