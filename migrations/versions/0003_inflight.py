"""Leases for single-flight: one LLM call per exact key across processes and machines.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # UNLOGGED: a lease only matters while its holder runs; losing them in a crash is harmless.
    op.create_table(
        "pgcache_inflight",
        sa.Column("exact_key", sa.LargeBinary(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("exact_key", name="pgcache_inflight_pkey"),
        prefixes=["UNLOGGED"],
    )


def downgrade() -> None:
    op.drop_table("pgcache_inflight")
