"""Is the bucket reachable? One warning when its requests start failing, one line when they succeed again.

A store retries every request with backoff, silently. `StoreHealth` sees each failed attempt (`failed`) and
each answered request (`answered`) and logs only the changes: the first failure of an outage, and the first
answer after it, with how long it lasted. Attempts in between are counted, not logged. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time

from trainer.errors import first_line

logger = logging.getLogger(__name__)


class StoreHealth:
    def __init__(self, name: str, retry_seconds: float | None = None) -> None:
        self.name = name
        self.retry_seconds = retry_seconds  # how long each request is retried, for the warning
        self.outages = 0  # how many times requests started failing
        self._down_since: float | None = None
        self._failures = 0  # failed attempts in the current outage
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        with self._lock:
            return self._down_since is not None

    def failed(self, err: BaseException) -> None:
        """A request attempt failed and will be retried."""
        with self._lock:
            self._failures += 1
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self.outages += 1
        retrying = f" for up to {self.retry_seconds:.0f} s per request" if self.retry_seconds else ""
        logger.warning("%s: requests are failing (%s: %s); retrying with backoff%s", self.name, type(err).__name__,
                       first_line(err, if_empty="no message")[:200], retrying)

    def answered(self) -> None:
        """A request got its answer."""
        with self._lock:
            if self._down_since is None:
                return
            lasted, failures = time.monotonic() - self._down_since, self._failures
            self._down_since, self._failures = None, 0
        logger.warning("%s: reachable again after %.0f s (%d failed attempt(s)); uploads resume", self.name, lasted,
                       failures)
