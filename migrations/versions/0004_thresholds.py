"""Semantic-hit quality: calibrated thresholds, guard verdicts, feedback and per-entry thresholds.

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
    op.add_column("pgcache_lookups", sa.Column("prompt", sa.Text(), nullable=True))
    op.add_column("pgcache_lookups", sa.Column("judge_tokens", sa.Integer(), nullable=True))
    op.add_column("pgcache_entries", sa.Column("min_similarity", sa.Double(), nullable=True))
    op.create_table(
        "pgcache_feedback",
        sa.Column("lookup_id", sa.Uuid(), nullable=False),
        sa.Column("verdict", sa.Text(), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("embedder", sa.Text(), nullable=True),
        sa.Column("entry_id", sa.BigInteger(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("entry_prompt", sa.Text(), nullable=True),
        sa.Column("similarity", sa.Double(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("verdict IN ('right', 'wrong')", name="pgcache_feedback_verdict_check"),
        sa.PrimaryKeyConstraint("lookup_id", name="pgcache_feedback_pkey"),
    )
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
    op.drop_table("pgcache_feedback")
    op.drop_column("pgcache_entries", "min_similarity")
    op.drop_column("pgcache_lookups", "judge_tokens")
    op.drop_column("pgcache_lookups", "prompt")
    op.drop_column("pgcache_lookups", "rejected_by")
