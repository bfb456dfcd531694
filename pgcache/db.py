"""Database URLs, the embedded default, schema checks and migrations."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import embedded, queries
from .errors import ConfigurationError, DatabaseError, PgcacheError, SchemaError

VERSION_TABLE = queries.VERSION_TABLE
MIGRATION_LOCK_ID = queries.MIGRATION_LOCK_ID
LOCK_TIMEOUT_MS = 1000
"""How long a migration's statement waits for a lock before giving up (and being tried again):
lookups queued behind it wait at most this long, well inside their 2 s statement timeout."""
LOCK_ATTEMPTS = 8
"""Tries of a revision whose lock was not granted in time, with a doubling pause between them."""

_log = logging.getLogger(__name__)
_SCHEMES = {"postgresql", "postgres", "postgresql+psycopg"}
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def normalize_url(url: str) -> str:
    """Return ``url`` as a libpq URL (``postgresql://…``), accepting ``postgres://`` too.

    A malformed URL raises :class:`ConfigurationError` saying what is wrong; the
    message never contains the URL's password.
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("database URL must be a non-empty string")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        # Anything but a plain scheme may be "user:password@host", so it is not shown.
        shown = f", got {scheme!r}" if sep and _SCHEME.fullmatch(scheme) else ""
        raise ConfigurationError(f"database URL must start with postgresql:// or postgres://{shown}")
    normalized = "postgresql://" + rest
    try:
        urlsplit(normalized).port  # noqa: B018 - raises on a malformed port
        conninfo_to_dict(normalized)  # libpq's own parser: percent-encoding, parameter names
    except (ValueError, psycopg.Error) as exc:
        raise ConfigurationError(f"malformed database URL: {_scrub(str(exc).strip(), rest)}") from None
    return normalized


def _scrub(message: str, rest: str) -> str:
    """``message`` without the password of the URL ``scheme://rest``, in any form a parser may quote it."""
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]  # the authority, without urlsplit's checks
    tail = rest[len(netloc) :]
    secrets = [netloc.rpartition("@")[0].partition(":")[2], *re.findall(r"(?i)[?&]password=([^&#]*)", tail)]
    for secret in secrets:
        for form in {secret, unquote(secret)}:
            if form:
                message = message.replace(form, "***")
    return message


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form of a database URL (psycopg 3 driver)."""
    return "postgresql+psycopg://" + normalize_url(url).partition("://")[2]


def resolve_url(database_url: str | None = None, data_dir: Path | None = None) -> tuple[str, bool]:
    """Return ``(url, embedded)``: the given URL, or the embedded server's when none is given."""
    if database_url:
        return normalize_url(database_url), False
    return embedded.start(data_dir), True


def redact(url: str) -> str:
    """``url`` with any password replaced, for messages and logs."""
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    # libpq also takes the password as a query parameter (?password=...).
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return parts._replace(query=query).geturl()


def migrations_dir() -> Path:
    """Alembic scripts: shipped inside the wheel, or the checkout's top-level ``migrations/``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError("pgcache's migration scripts are missing from this installation")


def alembic_config(url: str):
    """An Alembic ``Config`` for ``url`` that needs no ini file."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["pgcache_url"] = normalize_url(url)
    return config


def head_revision() -> str:
    """The newest schema revision this version of pgcache knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    if head is None:
        raise SchemaError("pgcache's migration scripts have no head revision")
    return head


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory(str(migrations_dir())).walk_revisions()}


def current_revision(url: str) -> str | None:
    """The schema revision recorded in the database, or ``None`` when pgcache was never installed there."""
    try:
        with psycopg.connect(normalize_url(url), autocommit=True, connect_timeout=10) as conn:
            found = conn.execute(queries.FIND_VERSION_TABLE, (VERSION_TABLE,)).fetchone()
            if found is None or found[0] is None:
                return None
            row = conn.execute(queries.SCHEMA_VERSION).fetchone()
            return row[0] if row else None
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot read the schema version from {redact(url)}: {exc}") from exc


def upgrade(url: str, revision: str = "head") -> None:
    """Create or migrate the pgcache schema in the database at ``url``."""
    from alembic import command

    _run_alembic(command.upgrade, url, revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the schema down to ``revision`` (``base`` removes every pgcache table)."""
    from alembic import command

    _run_alembic(command.downgrade, url, revision)


def _run_alembic(action, url: str, revision: str) -> None:
    current = current_revision(url)
    if current is not None and current not in known_revisions():
        raise SchemaError(_newer_than_code(current))
    pause = 0.25
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            action(alembic_config(url), revision)
            return
        except PgcacheError:
            raise
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc
            if isinstance(cause, psycopg.errors.LockNotAvailable) and attempt < LOCK_ATTEMPTS:
                # Busy tables: the revisions done so far are committed; this one starts again.
                _log.warning(
                    "pgcache: migration waited %d ms for a lock (%s); trying again in %.2g s (attempt %d of %d)",
                    LOCK_TIMEOUT_MS,
                    " ".join(str(cause).split()),
                    pause,
                    attempt + 1,
                    LOCK_ATTEMPTS,
                )
                time.sleep(pause)
                pause *= 2
                continue
            raise SchemaError(f"migration of {redact(url)} to {revision} failed: {cause}") from exc


def check_schema(url: str, *, auto_upgrade: bool = False) -> None:
    """Make sure the database holds the schema this version of pgcache expects.

    With ``auto_upgrade`` a missing or old schema is migrated (the embedded
    database does this); otherwise it raises :class:`SchemaError` naming
    ``pgcache db upgrade``.
    """
    current = current_revision(url)
    head = head_revision()
    if current == head:
        return
    if current is not None and current not in known_revisions():
        raise SchemaError(_newer_than_code(current))
    if auto_upgrade:
        _log.info("migrating the pgcache schema from %s to %s", current or "nothing", head)
        upgrade(url)
        return
    if current is None:
        raise SchemaError(
            f"no pgcache schema in {redact(url)}: run `pgcache db upgrade` (or `alembic upgrade head`) first"
        )
    raise SchemaError(
        f"the pgcache schema in {redact(url)} is at revision {current} but this version needs {head}: "
        "run `pgcache db upgrade`"
    )


def _newer_than_code(current: str) -> str:
    return (
        f"the database schema is at revision {current}, newer than this version of pgcache "
        f"knows (head {head_revision()}); upgrade pgcache"
    )
