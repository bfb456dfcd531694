"""Parsing of human durations such as ``30m``, ``12h``, ``7d`` or ``never``."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from .errors import ConfigurationError
from .validation import short_repr

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_NEVER = {"never", "none", "forever", "0"}
MAX_TTL = 100 * 365.25 * 86400
"""Longest TTL in seconds (a century). Entries meant to outlive it take ``None``; far larger values
would overflow PostgreSQL's timestamps."""


def parse_ttl(value: str | float | timedelta | None, *, name: str = "ttl") -> float | None:
    """Return a TTL in seconds, or ``None`` for entries that never expire.

    Accepts a number of seconds, a ``timedelta``, ``None``, or a string such as
    ``"90"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` or ``"never"``. Zero means
    "never" in strings only; a numeric TTL must be positive and at most
    :data:`MAX_TTL`.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool):
        raise ConfigurationError(f"{name} must be a duration, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds) or seconds <= 0:
            raise ConfigurationError(f"{name} must be a positive number of seconds or None, got {short_repr(value)}")
        return _at_most_a_century(seconds, name)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _NEVER:
            return None
        match = _PATTERN.match(text)
        if match:
            seconds = float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
            if seconds > 0:
                return _at_most_a_century(seconds, name)
        raise ConfigurationError(f"{name} must look like 90, 30m, 12h, 7d, 2w or 'never', got {short_repr(value)}")
    raise ConfigurationError(f"{name} must be a duration, got {type(value).__name__}")


def _at_most_a_century(seconds: float, name: str) -> float:
    if seconds > MAX_TTL:
        raise ConfigurationError(f"{name} must be at most 100 years (5200w); use 'never' for entries that never expire")
    return seconds
