"""A circuit breaker that keeps a failing cache database off the callers' path.

Closed: every call uses the database. A failure opens the breaker: calls skip
the cache at once, without waiting for a timeout each. After ``cooldown``
seconds one call is let through as a probe (half-open); its success closes the
breaker, its failure opens it again for twice as long (up to
``max_cooldown``). Each change of state is logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

_log = logging.getLogger("pgcache")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(
        self,
        cooldown: float = 2.0,
        max_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        subject: str = "cache database",
        fallback: str = "calls go straight to the LLM",
        recovery: str = "caching resumed",
    ) -> None:
        self.subject, self.fallback, self.recovery = subject, fallback, recovery
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.cooldown = cooldown
        self.state = CLOSED
        self.failures = 0
        """Cache operations that failed since the cache was created."""
        self.skipped = 0
        """Calls that skipped the cache because the breaker was open."""
        self._clock = clock
        self._opened_at = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """Whether this call may use the database; counts it as skipped if not."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                self.state = HALF_OPEN
                return True
            self.skipped += 1
            return False

    def success(self) -> None:
        if self.state == CLOSED:
            return
        with self._lock:
            if self.state != CLOSED:
                _log.warning(
                    "pgcache: %s available again; %s (%d calls skipped it)", self.subject, self.recovery, self.skipped
                )
                self.state, self.cooldown = CLOSED, self.base_cooldown

    def failure(self, error: BaseException) -> None:
        with self._lock:
            self.failures += 1
            if self.state == CLOSED:
                _log.warning(
                    "pgcache: %s unavailable, %s: %s", self.subject, self.fallback, " ".join(str(error).split())
                )
            elif self.state == HALF_OPEN:
                self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self.state, self._opened_at = OPEN, self._clock()
