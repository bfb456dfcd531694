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
        _configure(connection=connection)
        with context.begin_transaction():
            # Two processes upgrading a fresh database at once: the second waits, then finds it done.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": db.MIGRATION_LOCK_ID})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
