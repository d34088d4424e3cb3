"""Clocks and an interruptible sleep.

Liveness is judged on a monotonic clock; wall time is for display and storage.
A :class:`FakeClock` lets tests move time by hand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, *, start: float = 1_000.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        self._now += seconds


async def sleep(seconds: float, *, wakeup: asyncio.Event | None = None) -> bool:
    """Sleep up to ``seconds``; return True if ``wakeup`` was set first (it is then cleared)."""
    if wakeup is None:
        await asyncio.sleep(max(seconds, 0))
        return False
    if wakeup.is_set():
        wakeup.clear()
        return True
    try:
        async with asyncio.timeout(max(seconds, 0)):
            await wakeup.wait()
    except TimeoutError:
        return False
    wakeup.clear()
    return True
