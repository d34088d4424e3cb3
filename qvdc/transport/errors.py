"""Refused requests are logged as client errors: one short line each, rate-limited.

A client can send refusable requests as fast as the network carries them; a log line
(let alone a traceback) per refusal would let it fill the disk and drown what the
operator needs. :class:`RefusalLog` logs one line per refusal through a token bucket
per key (the method and the status): ``burst`` lines at once, then ``per_second``,
and when lines flow again after a pause the first one says how many were suppressed
meanwhile. The lines quote at most :data:`LINE_MAX` characters of the message.
INTERNAL is not a refusal: it is logged with its traceback where it is raised
(``qvdc.api.errors``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

#: Characters of a refusal's message a log line quotes.
LINE_MAX = 200

#: Keys (method, status) remembered before the table starts afresh.
_MAX_KEYS = 4096


class _Bucket:
    __slots__ = ("at", "suppressed", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.suppressed = 0


class RefusalLog:
    """One line per refused request, at most ``burst`` at once and ``per_second`` after,
    per key."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        level: int = logging.INFO,
        burst: int = 10,
        per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._burst = float(burst)
        self._rate = per_second
        self._clock = clock
        self._buckets: dict[Hashable, _Bucket] = {}

    def refused(self, method: str, status: str, message: str) -> bool:
        """Log ``method: STATUS: message`` unless its bucket is empty; True if logged."""
        if not self._logger.isEnabledFor(self._level):
            return False
        key = (method, status)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= _MAX_KEYS:
                self._buckets.clear()
            bucket = self._buckets[key] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
            bucket.at = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return False
        bucket.tokens -= 1.0
        text = message if len(message) <= LINE_MAX else message[:LINE_MAX] + "…"
        text = text.replace("\n", "\\n")  # one line, whatever the message holds
        if bucket.suppressed:
            self._logger.log(
                self._level,
                "%s: %s: %s (and %d similar lines not logged)",
                method,
                status,
                text,
                bucket.suppressed,
            )
            bucket.suppressed = 0
        else:
            self._logger.log(self._level, "%s: %s: %s", method, status, text)
        return True
