"""CPython's garbage collector on a heap that grows with the fleet.

A replica holds about 150 tracked objects per host, and a full collection visits
every one of them with the event loop stopped: at 100,000 hosts that is seconds,
longer than the leader's lease allows between refreshes (figures in
docs/architecture.md and benchmarks/RESULTS.md).

:class:`CollectorPolicy` therefore *freezes* (``gc.freeze()``) what survives each
full collection: a replica's long-lived state (rows, streams, sessions) is what
survives, so later full collections visit only what was allocated since. Frozen
objects are still freed by reference counting; what they give up is collection
as part of a reference cycle, and a closed heartbeat stream leaves no cyclic
garbage, so hosts reconnecting do not leak.

Freezing alone does not bound a full collection: CPython starts one only once the
old generation has grown by a quarter, so while a fleet connects millions of
objects can pile up unfrozen. After every middle-generation collection the policy
therefore counts the old generation's unfrozen objects and, past ``full_budget``,
schedules a full collection on the running event loop (a collection cannot start
one from inside its own callback). It also reports every collection that stopped
the loop for long (``SLOW_PAUSE``).

The private dependency is CPython's: ``gc.callbacks``, ``gc.freeze`` and
``gc.get_objects(generation=...)`` (tests/qvdc/runtime/test_collector.py).
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
