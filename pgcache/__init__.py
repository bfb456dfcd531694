"""pgcache: a persistent two-tier LLM response cache on PostgreSQL + pgvector.

from pgcache import Cache

cache = Cache()  # embedded PostgreSQL, OpenAI embeddings and chat
print(cache.query("What is SQL injection?").content)
"""

from .cache import Cache
from .client import wrap
from .config import Settings
from .errors import ConfigurationError, DatabaseError, EmbedderError, InvalidRequestError, PgcacheError, SchemaError
from .options import CallOptions
from .result import CacheResult

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheResult",
    "CallOptions",
    "ConfigurationError",
    "DatabaseError",
    "EmbedderError",
    "InvalidRequestError",
    "PgcacheError",
    "SchemaError",
    "Settings",
    "wrap",
]
