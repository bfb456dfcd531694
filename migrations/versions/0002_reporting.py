"""Reporting views, the pgcache_sweep() function, and ledger columns they need.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

HIT = "outcome IN ('exact', 'semantic')"

VIEWS = {
    "pgcache_daily_stats": f"""
        SELECT (at AT TIME ZONE 'UTC')::date AS day,
               namespace,
               model,
               count(*) AS lookups,
               count(*) FILTER (WHERE outcome = 'exact') AS exact_hits,
               count(*) FILTER (WHERE outcome = 'semantic') AS semantic_hits,
               count(*) FILTER (WHERE outcome = 'miss') AS misses,
               count(*) FILTER (WHERE outcome = 'bypass') AS bypasses,
               count(*) FILTER (WHERE outcome = 'error' OR error IS NOT NULL) AS errors,
               (count(*) FILTER (WHERE {HIT}))::double precision / count(*) AS hit_rate,
               coalesce(sum(prompt_tokens) FILTER (WHERE {HIT}), 0) AS prompt_tokens_saved,
               coalesce(sum(completion_tokens) FILTER (WHERE {HIT}), 0) AS completion_tokens_saved,
               avg(latency_ms) AS avg_latency_ms,
               avg(llm_ms) FILTER (WHERE outcome = 'miss') AS avg_llm_ms
        FROM pgcache_lookups
        GROUP BY 1, 2, 3
    """,
    "pgcache_namespace_stats": """
        SELECT n.namespace,
               coalesce(e.entries, 0) AS entries,
               coalesce(e.live_entries, 0) AS live_entries,
               coalesce(l.lookups, 0) AS lookups,
               coalesce(l.exact_hits, 0) AS exact_hits,
               coalesce(l.semantic_hits, 0) AS semantic_hits,
               coalesce(l.misses, 0) AS misses,
               CASE WHEN l.lookups > 0
                    THEN (l.exact_hits + l.semantic_hits)::double precision / l.lookups END AS hit_rate,
               l.first_lookup_at,
               l.last_lookup_at
        FROM (SELECT namespace FROM pgcache_entries UNION SELECT namespace FROM pgcache_lookups) AS n
        LEFT JOIN (
            SELECT namespace, count(*) AS entries,
                   count(*) FILTER (WHERE expires_at IS NULL OR expires_at > now()) AS live_entries
            FROM pgcache_entries GROUP BY namespace
        ) AS e USING (namespace)
        LEFT JOIN (
            SELECT namespace, count(*) AS lookups,
                   count(*) FILTER (WHERE outcome = 'exact') AS exact_hits,
                   count(*) FILTER (WHERE outcome = 'semantic') AS semantic_hits,
                   count(*) FILTER (WHERE outcome = 'miss') AS misses,
                   min(at) AS first_lookup_at, max(at) AS last_lookup_at
            FROM pgcache_lookups GROUP BY namespace
        ) AS l USING (namespace)
    """,
    "pgcache_top_entries": """
        SELECT id AS entry_id, namespace, model, prompt, source, tags, hit_count, last_hit_at,
               created_at, expires_at, (expires_at IS NULL OR expires_at > now()) AS live,
               hit_count * coalesce(total_tokens, 0) AS tokens_saved
        FROM pgcache_entries
        WHERE hit_count > 0
        ORDER BY hit_count DESC, id
    """,
    "pgcache_near_misses": """
        SELECT l.id AS lookup_id, l.at, l.namespace, l.model, l.similarity, l.threshold,
               l.threshold - l.similarity AS gap,
               q.prompt AS prompt,
               l.candidate_id,
               c.prompt AS candidate_prompt
        FROM pgcache_lookups AS l
        LEFT JOIN pgcache_entries AS q ON q.id = l.entry_id
        LEFT JOIN pgcache_entries AS c ON c.id = l.candidate_id
        WHERE l.outcome = 'miss' AND l.similarity < l.threshold AND l.similarity >= l.threshold - 0.05
    """,
}

SWEEP_FUNCTION = """
CREATE FUNCTION pgcache_sweep(batch_size integer DEFAULT 10000, ledger_retention interval DEFAULT '90 days')
RETURNS TABLE (entries_deleted bigint, lookups_deleted bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'pgcache_sweep: batch_size must be a positive integer, got %', batch_size;
    END IF;
    -- SKIP LOCKED: rows a concurrent sweep or writer holds are left for the next call.
    WITH doomed AS (
        SELECT id FROM pgcache_entries WHERE expires_at <= now()
        ORDER BY expires_at LIMIT batch_size FOR UPDATE SKIP LOCKED
    )
    DELETE FROM pgcache_entries AS e USING doomed WHERE e.id = doomed.id;
    GET DIAGNOSTICS entries_deleted = ROW_COUNT;
    WITH old AS (
        SELECT id FROM pgcache_lookups WHERE at < now() - ledger_retention
        ORDER BY at LIMIT batch_size FOR UPDATE SKIP LOCKED
    )
    DELETE FROM pgcache_lookups AS l USING old WHERE l.id = old.id;
    GET DIAGNOSTICS lookups_deleted = ROW_COUNT;
    RETURN NEXT;
END
$$
"""


def upgrade() -> None:
    op.add_column("pgcache_lookups", sa.Column("candidate_id", sa.BigInteger(), nullable=True))
    op.add_column("pgcache_lookups", sa.Column("llm_ms", sa.Double(), nullable=True))
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
    op.execute(SWEEP_FUNCTION)


def downgrade() -> None:
    op.execute("DROP FUNCTION pgcache_sweep(integer, interval)")
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    op.drop_column("pgcache_lookups", "llm_ms")
    op.drop_column("pgcache_lookups", "candidate_id")
