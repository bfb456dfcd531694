"""Entries and the lookup ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

MIN_PGVECTOR = (0, 8)


def _ensure_pgvector() -> None:
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
    ).scalar()
    if available is None:
        raise RuntimeError(
            "pgvector extension missing: this PostgreSQL server has no 'vector' extension; "
            "install pgvector >= 0.8 on the server (or use the embedded default database)"
        )
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    installed = bind.execute(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    if tuple(int(part) for part in installed.split(".")[:2]) < MIN_PGVECTOR:
        raise RuntimeError(
            f"pgvector {installed} is installed; pgcache needs >= 0.8: run ALTER EXTENSION vector UPDATE"
        )


def upgrade() -> None:
    _ensure_pgvector()
    op.create_table(
        "pgcache_entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("exact_key", sa.LargeBinary(), nullable=False),
        sa.Column("scope_key", sa.LargeBinary(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("embedder", sa.Text(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("request", postgresql.JSONB(), nullable=False),
        sa.Column("response", postgresql.JSONB(), nullable=False),
        sa.Column("embedding", Vector(1536), nullable=True),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column("source", sa.Text(), server_default=sa.text("'llm'"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hit_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_hit_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), nullable=True),
        sa.CheckConstraint("source IN ('llm', 'warm', 'manual')", name="pgcache_entries_source_check"),
        sa.CheckConstraint("(embedding IS NULL) = (embedder IS NULL)", name="pgcache_entries_embedder_check"),
        sa.PrimaryKeyConstraint("id", name="pgcache_entries_pkey"),
        sa.UniqueConstraint("exact_key", name="pgcache_entries_exact_key_key"),
    )
    op.create_index("pgcache_entries_expires_at_idx", "pgcache_entries", ["expires_at"])
    op.create_index("pgcache_entries_scope_idx", "pgcache_entries", ["scope_key", "embedder"])
    # One list: until `pgcache reindex` trains real centroids, an index scan visits
    # every vector, so even a small or freshly loaded cache finds its true nearest entry.
    op.create_index(
        "pgcache_entries_embedding_idx",
        "pgcache_entries",
        ["embedding"],
        postgresql_using="ivfflat",
        postgresql_with={"lists": 1},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )

    op.create_table(
        "pgcache_lookups",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("namespace", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=True),
        sa.Column("embedder", sa.Text(), nullable=True),
        sa.Column("similarity", sa.Double(), nullable=True),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('exact', 'semantic', 'miss', 'bypass', 'error')", name="pgcache_lookups_outcome_check"
        ),
        sa.PrimaryKeyConstraint("id", name="pgcache_lookups_pkey"),
    )
    op.create_index("pgcache_lookups_at_idx", "pgcache_lookups", ["at"])
    op.create_index("pgcache_lookups_namespace_at_idx", "pgcache_lookups", ["namespace", "at"])


def downgrade() -> None:
    op.drop_table("pgcache_lookups")
    op.drop_table("pgcache_entries")
