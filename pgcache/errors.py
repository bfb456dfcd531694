"""Exceptions raised by pgcache.

Every error pgcache raises on its own account is a :class:`PgcacheError`. The
docstring of each class is its default message, so ``raise SchemaError()``
already says something useful; pass a message to be more specific.

Errors from the LLM itself (``openai.APIError`` and friends) are not wrapped:
the caller sees them exactly as it would without the cache.
"""

from __future__ import annotations


class PgcacheError(Exception):
    """pgcache failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(PgcacheError, ValueError):
    """Invalid pgcache configuration."""


class InvalidRequestError(PgcacheError, ValueError):
    """The request cannot be cached as given."""


class DatabaseError(PgcacheError):
    """The cache database could not be reached or failed."""


class SchemaError(DatabaseError):
    """The pgcache schema is missing or out of date: run `pgcache db upgrade`."""


class EmbedderError(PgcacheError):
    """The embedder failed or returned an unusable vector."""
