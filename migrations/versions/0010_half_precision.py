"""Half the bytes per entry: vectors stored in half precision, the index over their first 768 dimensions.

* ``pgcache_entries.embedding`` becomes ``halfvec(1536)``: 3 KB instead of 6 KB per vector.
  Cosine similarities computed from it differ from full precision by less than 1e-3
  (docs/benchmarks-large.md measures the largest error), far below what separates a hit from
  a miss.
* ``pgcache_entries_embedding_idx`` is rebuilt over ``subvector(embedding, 1, 768)::halfvec(768)``:
  five index tuples fit a page instead of two, so the index is 2.5 times smaller and a scan
  reads half the bytes. The index only picks candidates; ``pgcache_nearest()`` and
  ``pgcache_neighbours()`` rank them by the whole stored vector, so the similarity they report
  is the full one. Embedders narrower than 769 dimensions (384, 768) are zero-padded, so for
  them the index sees the whole vector.
* The vector stays in TOAST (halfvec's default storage). Kept in the row, it would halve the
  time of an exact search of a scope, but every hit-count update would then copy 3.7 KB rows
  that no longer fit their page twice: 4,990 bytes of WAL per update instead of 1,157, twice
  the time (20,000 entries, 5,000 updates in batches of 500), and new index entries each time.
* Both functions keep their signatures (the query is a ``vector``, converted once).

Converting a populated table rewrites it under an exclusive lock (lookups wait); downgrading
converts back, and the precision lost is not recovered.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEX = "pgcache_entries_embedding_idx"
HEAD = "subvector({}, 1, 768)::halfvec(768)"
"""What the index covers of a vector: its first 768 dimensions."""
INDEXED = HEAD.format("embedding")
LIVE = "(e.expires_at IS NULL OR e.expires_at > now())"
LOOKUP_COLUMNS = """
    id bigint, response jsonb, prompt_tokens integer, completion_tokens integer,
    similarity double precision, prompt text, min_similarity double precision
"""

# The body both functions share: exact search of a small scope, else index candidates ranked by the whole vector.
SEARCH = f"""
        DECLARE
            q {{stored}} := query::{{stored}};
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
                       1 - (e.embedding <=> q), e.prompt, e.min_similarity
                FROM pgcache_entries AS e
                WHERE e.scope_key = wanted_scope AND e.embedder = wanted_embedder AND {LIVE}
                ORDER BY (e.embedding <=> q) + 0
                LIMIT {{wanted}};
                RETURN;
            END IF;
            lists := pgcache_index_lists();
            probes := pgcache_probes(lists);
            PERFORM set_config('ivfflat.probes', probes::text, true),
                    set_config('ivfflat.max_probes', least(lists, 4 * probes)::text, true);
            RETURN QUERY
            WITH candidates AS MATERIALIZED (
                SELECT e.id, e.response, e.prompt_tokens, e.completion_tokens, e.prompt, e.min_similarity,
                       e.embedding <=> q AS distance
                FROM pgcache_entries AS e
                WHERE e.scope_key = wanted_scope AND e.embedder = wanted_embedder AND {LIVE}
                ORDER BY {{index_order}}
                LIMIT {{candidates}}
            )
            SELECT c.id, c.response, c.prompt_tokens, c.completion_tokens, 1 - c.distance, c.prompt,
                   c.min_similarity
            FROM candidates AS c ORDER BY c.distance + 0 LIMIT {{wanted}};
        END
"""

SETTINGS = """
        LANGUAGE plpgsql
        SET jit = off
        SET enable_sort = off
        SET ivfflat.iterative_scan = relaxed_order
"""


def functions(stored: str, index_order: str) -> list[str]:
    """``pgcache_nearest()`` and ``pgcache_neighbours()`` over a column of type ``stored``."""
    parts = {"stored": stored, "index_order": index_order}
    nearest = SEARCH.format(wanted="1", candidates="k", **parts)
    neighbours = SEARCH.format(wanted="n", candidates="greatest(k, n)", **parts)
    return [
        f"""
        CREATE OR REPLACE FUNCTION pgcache_nearest(query vector, wanted_scope bytea, wanted_embedder text,
                                                   k integer DEFAULT 4, exact_below integer DEFAULT 500)
        RETURNS TABLE ({LOOKUP_COLUMNS}) {SETTINGS} AS $fn${nearest}$fn$
        """,
        f"""
        CREATE OR REPLACE FUNCTION pgcache_neighbours(query vector, wanted_scope bytea, wanted_embedder text,
                                                      n integer, k integer, exact_below integer)
        RETURNS TABLE ({LOOKUP_COLUMNS}) {SETTINGS} AS $fn${neighbours}$fn$
        """,
    ]


def _index_lists() -> int:
    options = (
        op.get_bind()
        .execute(sa.text("SELECT reloptions FROM pg_class WHERE relname = :name"), {"name": INDEX})
        .scalar()
    )
    for option in options or []:
        name, _, value = option.partition("=")
        if name == "lists":
            return int(value)
    return 1


def _rebuild(column_type: str, expression: str, ops: str) -> None:
    """The column converted to ``column_type`` and the index rebuilt with the lists it had."""
    lists = _index_lists()
    op.execute(f"DROP INDEX {INDEX}")
    op.execute(f"ALTER TABLE pgcache_entries ALTER COLUMN embedding TYPE {column_type} USING embedding::{column_type}")
    op.execute(f"CREATE INDEX {INDEX} ON pgcache_entries USING ivfflat (({expression}) {ops}) WITH (lists = {lists})")


def upgrade() -> None:
    _rebuild("halfvec(1536)", INDEXED, "halfvec_cosine_ops")
    for statement in functions("halfvec(1536)", f"{HEAD.format('e.embedding')} <=> {HEAD.format('q')}"):
        op.execute(statement)


def downgrade() -> None:
    _rebuild("vector(1536)", "embedding::halfvec(1536)", "halfvec_cosine_ops")
    # As revisions 0005 and 0006 had them: the half-precision index picks, the full vectors rank.
    for statement in functions("vector(1536)", "e.embedding::halfvec(1536) <=> q::halfvec(1536)"):
        op.execute(statement)
