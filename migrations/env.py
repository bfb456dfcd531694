"""Alembic environment for the pgcache schema.

The database URL comes from the caller (``pgcache db upgrade`` passes it in),
else from ``sqlalchemy.url`` in the ini file, else from ``PGCACHE_DATABASE_URL``
or the embedded server. Only ``pgcache_*`` objects are managed, so the schema
can live inside an application's own database.
"""

from alembic import context
from sqlalchemy import create_engine, pool, text

from pgcache import db
from pgcache.config import Settings
from pgcache.models import Base

config = context.config


def _url() -> str:
    url = config.attributes.get("pgcache_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return db.normalize_url(url)
    settings = Settings.from_env()
    return db.resolve_url(settings.database_url, settings.data_dir)[0]


def _include_object(obj, name, type_, reflected, compare_to) -> bool:
    if type_ == "table":
        return name.startswith("pgcache_")
    table = getattr(obj, "table", None)
    return table is None or table.name.startswith("pgcache_")


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=Base.metadata,
        version_table=db.VERSION_TABLE,
        include_object=_include_object,
        compare_type=True,
        **kwargs,
    )


def run_offline() -> None:
    _configure(url=db.sqlalchemy_url(_url()), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(db.sqlalchemy_url(_url()), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Two processes upgrading at once: the second waits here, then finds the work done. A
        # session lock, as every revision commits on its own (so that live traffic never waits
        # for the locks of a whole chain).
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": db.MIGRATION_LOCK_ID})
        # A statement that cannot take its lock soon gives up rather than queueing every lookup
        # behind it; `pgcache db upgrade` tries that revision again (db.upgrade).
        connection.execute(text(f"SET lock_timeout = '{db.LOCK_TIMEOUT_MS}ms'"))
        connection.commit()
        try:
            _configure(connection=connection, transaction_per_migration=True)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": db.MIGRATION_LOCK_ID})
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
