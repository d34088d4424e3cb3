"""CPython's garbage collector on a heap that grows with the fleet.

A replica holds about 150 tracked objects per host (its rows, the host's open
stream in grpclib and h2). A full collection visits every one of them with the
event loop stopped: measured at 100,000 hosts (15 million objects), 9.1 s. That
is longer than the replica's 10 s lease allows between refreshes, and the
collector schedules such a collection whenever the old generation has grown by a
quarter, which during a fleet's first connection happens repeatedly and in the
steady state happens rarely but at any time (a benchmark run lost half of a
20 s measurement to one).

:class:`CollectorPolicy` therefore *freezes* (``gc.freeze()``) what survives each
full collection: those objects have just been found reachable, and a replica's
long-lived state (rows, streams, sessions) is what survives. Later full
collections visit only what was allocated since, so a pause is bounded by
recent growth instead of by the fleet. Frozen objects are still freed by
reference counting; what they give up is collection as part of a reference
cycle. A closed heartbeat stream leaves no cyclic garbage (measured: 50 streams
opened, frozen and closed, then ``gc.unfreeze(); gc.collect()`` found nothing),
so hosts reconnecting do not leak. The policy also reports every collection
that stopped the loop for long (``SLOW_PAUSE``).

Freezing alone does not bound a full collection: CPython starts one only after
ten middle-generation collections, and only once the old generation has grown
by a quarter of what the last one found. At 100,000 hosts that let 10 million
objects pile up unfrozen while the fleet connected, and the next full
collection stopped the loop for 7.3 s (measured; a pause that long costs a
leader its 10 s lease, refreshed every 3.3 s). So after every middle-generation
collection the policy counts the old generation's unfrozen objects, and past
``full_budget`` it schedules a full collection on the running event loop (a
collection cannot start one from inside its own callback): each full collection
then visits at most about that many objects, plus one middle collection's.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SLOW_PAUSE = 0.2
"""Seconds: a collection pausing the event loop for this long is logged as a warning."""

FULL_BUDGET = 500_000
"""Unfrozen old objects past which the policy schedules a full collection. One middle
collection can promote up to a million more (20 x 50,000), so a full collection visits
at most about 1.5 million objects: about a second, at the 0.6-0.7 us per object measured
at 100,000 hosts."""


class CollectorPolicy:
    def __init__(
        self,
        *,
        freeze_survivors: bool = True,
        slow_pause: float = SLOW_PAUSE,
        full_budget: int = FULL_BUDGET,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._freeze = freeze_survivors
        self._slow = slow_pause
        self._budget = full_budget
        self._full_scheduled = False
        self._clock = clock
        self._started = 0.0
        self.full_collections = 0
        self.scheduled_full_collections = 0
        self.longest_pause = 0.0

    def install(self) -> None:
        if self._on_collection not in gc.callbacks:
            gc.callbacks.append(self._on_collection)
            # The interpreter's last collections at exit stop no event loop: do not report them.
            atexit.register(self.uninstall)

    def uninstall(self) -> None:
        while self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        pause = self._clock() - self._started
        self.longest_pause = max(self.longest_pause, pause)
        generation = info.get("generation", 0)
        if generation == 2:
            self.full_collections += 1
            if self._freeze:
                gc.freeze()  # the collection is over: moving its survivors is safe here
        elif generation == 1 and self._freeze:
            self._schedule_full_if_over_budget()
        if pause >= self._slow:
            log.warning(
                "garbage collection of generation %d stopped the event loop for %.2f s "
                "(%d objects frozen)",
                generation,
                pause,
                gc.get_freeze_count(),
            )

    def _schedule_full_if_over_budget(self) -> None:
        if self._full_scheduled or len(gc.get_objects(generation=2)) <= self._budget:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # collected in a thread without a loop: the next collection decides
        self._full_scheduled = True
        loop.call_soon(self._collect_full)

    def _collect_full(self) -> None:
        self._full_scheduled = False
        self.scheduled_full_collections += 1
        gc.collect()  # its "stop" callback freezes the survivors
