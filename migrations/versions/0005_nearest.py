"""pgcache_nearest(): the semantic lookup with its index policy; the ivfflat index on halfvec.

The planner's cost model for ivfflat scans is rough: with a scope filter in place it
often prefers a sequential scan plus a sort, which detoasts every vector of the
scope (tens of milliseconds at 10k rows). The function chooses the plan itself:

* a scope with fewer than ``exact_below`` rows is searched exactly (scope index,
  then a sort: every candidate compared, cheap because the scope is small);
* a larger scope goes through the ivfflat index, with ``ivfflat.probes`` derived
  from the index's current ``lists`` (so a ``pgcache reindex`` takes effect for
  every client at once) and ``ivfflat.max_probes`` bounding iterative scans.

The ivfflat index is rebuilt over ``embedding::halfvec(1536)``: half the size (a
1536-d float vector fills an 8 KB index page on its own; two half-precision ones
fit), the same recall@1 once the candidates are re-ranked with the stored
full-precision vectors, and faster scans (docs/benchmarks.md, storage).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LOOKUP_COLUMNS = """
    id bigint, response jsonb, prompt_tokens integer, completion_tokens integer,
    similarity double precision, prompt text, min_similarity double precision
"""

LIVE = "(e.expires_at IS NULL OR e.expires_at > now())"
INDEX = "pgcache_entries_embedding_idx"
HALF = "embedding::halfvec(1536)"


def _index_lists() -> int:
    bind = op.get_bind()
    options = bind.execute(sa.text("SELECT reloptions FROM pg_class WHERE relname = :name"), {"name": INDEX}).scalar()
    for option in options or []:
        name, _, value = option.partition("=")
        if name == "lists":
            return int(value)
    return 1


def _rebuild_index(expression: str, ops: str) -> None:
    lists = _index_lists()
    op.execute(f"DROP INDEX {INDEX}")
    op.execute(f"CREATE INDEX {INDEX} ON pgcache_entries USING ivfflat (({expression}) {ops}) WITH (lists = {lists})")


def upgrade() -> None:
    _rebuild_index(HALF, "halfvec_cosine_ops")
    op.execute("""
        CREATE FUNCTION pgcache_index_lists() RETURNS integer
        LANGUAGE sql STABLE AS $$
            SELECT coalesce((SELECT option_value::integer
                             FROM pg_options_to_table((SELECT reloptions FROM pg_class
                                                       WHERE oid = 'pgcache_entries_embedding_idx'::regclass))
                             WHERE option_name = 'lists'), 100)
        $$
    """)
    # Probes grow with the square root of lists, so a lookup reads about 2 * rows^0.25 lists'
    # worth of vectors however large the table: measured in docs/benchmarks.md (index lifecycle).
    op.execute("""
        CREATE FUNCTION pgcache_probes(lists integer) RETURNS integer
        LANGUAGE sql IMMUTABLE AS $$
            SELECT least(lists, greatest(2, ceil(sqrt(lists) / 8)::integer))
        $$
    """)
    op.execute(f"""
        CREATE FUNCTION pgcache_nearest(query vector, wanted_scope bytea, wanted_embedder text,
                                        k integer DEFAULT 4, exact_below integer DEFAULT 500)
        RETURNS TABLE ({LOOKUP_COLUMNS})
        LANGUAGE plpgsql
        SET jit = off
        SET enable_sort = off
        SET ivfflat.iterative_scan = relaxed_order
        AS $fn$
        DECLARE
            scope_rows integer;
            lists integer;
            probes integer;
        BEGIN
            SELECT count(*) INTO scope_rows FROM (
                SELECT 1 FROM pgcache_entries AS e
                WHERE e.scope_key = wanted_scope AND e.embedder = wanted_embedder
                LIMIT exact_below) AS sample;
            IF scope_rows < exact_below THEN
                -- "+ 0": an expression the ivfflat index cannot serve, so every row of the scope is compared.
                RETURN QUERY
                SELECT e.id, e.response, e.prompt_tokens, e.completion_tokens,
                       1 - (e.embedding <=> query), e.prompt, e.min_similarity
                FROM pgcache_entries AS e
                WHERE e.scope_key = wanted_scope AND e.embedder = wanted_embedder AND {LIVE}
                ORDER BY (e.embedding <=> query) + 0
                LIMIT 1;
                RETURN;
            END IF;
            lists := pgcache_index_lists();
            probes := pgcache_probes(lists);
            PERFORM set_config('ivfflat.probes', probes::text, true),
                    set_config('ivfflat.max_probes', least(lists, 4 * probes)::text, true);
            -- The half-precision index picks k candidates in roughly ascending distance; their
            -- stored full-precision vectors rank them, so the similarity reported is exact.
            RETURN QUERY
            WITH candidates AS MATERIALIZED (
                SELECT e.id, e.response, e.prompt_tokens, e.completion_tokens, e.prompt, e.min_similarity,
                       e.embedding <=> query AS distance
                FROM pgcache_entries AS e
                WHERE e.scope_key = wanted_scope AND e.embedder = wanted_embedder AND {LIVE}
                ORDER BY e.{HALF} <=> query::halfvec(1536)
                LIMIT k
            )
            SELECT c.id, c.response, c.prompt_tokens, c.completion_tokens, 1 - c.distance, c.prompt,
                   c.min_similarity
            FROM candidates AS c ORDER BY c.distance + 0 LIMIT 1;
        END
        $fn$
    """)


def downgrade() -> None:
    op.execute("DROP FUNCTION pgcache_nearest(vector, bytea, text, integer, integer)")
    op.execute("DROP FUNCTION pgcache_probes(integer)")
    op.execute("DROP FUNCTION pgcache_index_lists()")
    _rebuild_index("embedding", "vector_cosine_ops")
