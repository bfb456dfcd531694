"""Probes an operator can choose: ``pgcache_probes()`` honours the ``pgcache.probes`` setting.

Lookups probe ``pgcache_probes(lists)`` of the index's lists. Without the setting that is still
``ceil(sqrt(lists) / 8)``, at least 2: a lookup's cost stays near-constant as the table grows,
and recall falls slowly (docs/benchmarks-large.md measures it at a million entries, with a sweep
of larger values). ``pgcache.probes`` trades latency for recall without a schema change, for a
database, a role or one session::

    ALTER DATABASE cache SET pgcache.probes = 24;

A value that is not a positive whole number is an error naming the setting (lookups fail rather
than silently searching with something else); values above ``lists`` probe every list.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # STABLE, no longer IMMUTABLE: the answer now depends on a setting.
    op.execute(r"""
        CREATE OR REPLACE FUNCTION pgcache_probes(lists integer) RETURNS integer
        LANGUAGE plpgsql STABLE AS $$
        DECLARE
            chosen text := nullif(btrim(current_setting('pgcache.probes', true)), '');
        BEGIN
            IF chosen IS NULL THEN
                RETURN least(lists, greatest(2, ceil(sqrt(lists) / 8)::integer));
            END IF;
            IF chosen !~ '^[0-9]{1,9}$' OR chosen::integer < 1 THEN
                RAISE EXCEPTION 'pgcache.probes must be a positive whole number of ivfflat lists, got "%"', chosen
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            RETURN least(lists, chosen::integer);
        END
        $$
    """)


def downgrade() -> None:
    op.execute("""
        CREATE OR REPLACE FUNCTION pgcache_probes(lists integer) RETURNS integer
        LANGUAGE sql IMMUTABLE AS $$
            SELECT least(lists, greatest(2, ceil(sqrt(lists) / 8)::integer))
        $$
    """)
