"""Per-call cache options: the ``pgcache={...}`` keyword of wrapped clients and ``chat()``'s keywords."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .config import UNSET
from .durations import parse_ttl
from .errors import InvalidRequestError
from .validation import check_name, check_tags, check_threshold


@dataclass(frozen=True)
class CallOptions:
    """How one call uses the cache.

    ``ttl`` (seconds, ``"7d"``, ``None`` = never; default: the cache's),
    ``tags``, ``namespace`` and ``threshold`` as for ``Cache``; ``bypass``
    skips the lookup (the answer is still stored, refreshing the entry);
    ``no_store`` keeps the answer out of the cache.
    """

    ttl: Any = UNSET
    tags: tuple[str, ...] = ()
    namespace: str | None = None
    threshold: float | None = None
    bypass: bool = False
    no_store: bool = False

    @classmethod
    def build(cls, options: Mapping[str, Any] | CallOptions | None = None, **overrides: Any) -> CallOptions:
        """Validated options from a mapping (``pgcache={...}``) and keyword overrides."""
        if isinstance(options, CallOptions):
            values = {f.name: getattr(options, f.name) for f in fields(cls)}
        elif options is None:
            values = {}
        elif isinstance(options, Mapping):
            unknown = sorted(set(options) - {f.name for f in fields(cls)})
            if unknown:
                raise InvalidRequestError(
                    f"unknown pgcache option {unknown[0]!r}; expected one of {', '.join(f.name for f in fields(cls))}"
                )
            values = dict(options)
        else:
            raise InvalidRequestError(f"pgcache options must be a dict, got {type(options).__name__}")
        values.update({k: v for k, v in overrides.items() if v is not UNSET})
        if values.get("ttl", UNSET) is not UNSET:
            parse_ttl(values["ttl"])
        if values.get("tags") is not None:
            values["tags"] = tuple(check_tags(values["tags"]))
        else:
            values["tags"] = ()
        if values.get("namespace") is not None:
            check_name(values["namespace"], "namespace")
        if values.get("threshold") is not None:
            values["threshold"] = check_threshold(values["threshold"])
        for flag in ("bypass", "no_store"):
            if not isinstance(values.get(flag, False), bool):
                raise InvalidRequestError(f"pgcache option {flag} must be True or False, got {values[flag]!r}")
        return cls(**values)
