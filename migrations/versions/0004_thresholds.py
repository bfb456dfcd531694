"""Calibrated thresholds per namespace and embedder, shared by every process; guard verdicts in the ledger.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pgcache_lookups", sa.Column("rejected_by", sa.Text(), nullable=True))
    op.create_table(
        "pgcache_thresholds",
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("embedder", sa.Text(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("target_precision", sa.Double(), nullable=False),
        sa.Column("precision_lower", sa.Double(), nullable=False),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("calibrated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("threshold > 0 AND threshold <= 1", name="pgcache_thresholds_threshold_check"),
        sa.PrimaryKeyConstraint("namespace", "embedder", name="pgcache_thresholds_pkey"),
    )


def downgrade() -> None:
    op.drop_table("pgcache_thresholds")
    op.drop_column("pgcache_lookups", "rejected_by")
