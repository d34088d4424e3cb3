"""Measure every held pool concurrently, each under its own time limit.

A hung NFS server must cost one pool's report, never the heartbeat (DESIGN
section 7). Three layers make sure of that:

1. every backend method takes ``timeout`` and is expected to honour it (the
   local_dir and fake backends do, and report ``ERROR "probe timed out
   after Xs"`` themselves);
2. in case a backend does not, each probe also runs under our own
   ``asyncio.timeout`` (a little longer than the backend's, so a well-behaved
   backend's own message wins);
3. in case a backend even swallows the cancellation, probes run as separate
   tasks and :meth:`Prober.probe_all` waits for them with ``asyncio.wait``
   and a hard deadline. A probe still running past it is abandoned (cancelled
   again and remembered as a *straggler*), and its pool is reported as timed
   out. A pool whose previous probe is still straggling is not probed again
   (it would only pile up); it is reported as ERROR until that probe ends.

Every probe outcome becomes a ``PoolInfo``: a backend error is reported as
``ERROR`` with the error text, and an unexpected exception (a backend bug) is
additionally logged with its traceback. Nothing here raises for a sick pool.

The probe loop itself (:meth:`Prober.run`) is deliberately dumb: every
``interval`` seconds, probe what the reconciler says is attached and hand the
results back. The reconciler decides what a result means (for example, a
health change wakes the heartbeat loop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from storage_backends import base

#: What to probe, by pool id (from PoolManager.probe_targets).
Targets = Mapping[str, tuple[base.StorageBackend, base.PoolSpec]]


ProbeObserver = Callable[[str, float, bool], None]
"""``on_probe(kind, seconds, failed)``: one probe of a ``kind`` pool ended after ``seconds``;
``failed``: it raised, timed out or reported ERROR (``node.metrics``)."""


class Recorder(Protocol):
    """Where probe results go (PoolManager.record_probe)."""

    def __call__(self, *, spec: base.PoolSpec, info: base.PoolInfo) -> None: ...


def error_info(*, spec: base.PoolSpec, message: str) -> base.PoolInfo:
    """An ERROR report for ``spec`` saying ``message``."""
    return base.PoolInfo(
        pool_id=spec.pool_id,
        kind=spec.kind,
        health=base.PoolHealth.ERROR,
        error_message=message,
        probed_at=time.time(),
    )


class Prober:
    """Runs bounded, concurrent probes; remembers probes that would not stop."""

    def __init__(
        self, *, timeout: float, logger: logging.Logger, on_probe: ProbeObserver | None = None
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"probe timeout must be > 0: {timeout}")
        self._timeout = timeout
        self._logger = logger
        # Our own limit, a little beyond the backend's, so its message wins.
        self._soft_limit = timeout * 1.1 + 0.05
        # The hard limit for a probe that ignores cancellation.
        self._hard_limit = self._soft_limit + max(0.1, timeout * 0.25)
        self._stragglers: dict[str, asyncio.Task[base.PoolInfo]] = {}
        self._on_probe = on_probe
        self.rounds = 0

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def stragglers(self) -> frozenset[str]:
        """Pool ids whose abandoned probe is still running."""
        return frozenset(self._stragglers)

    async def probe_one(
        self, *, backend: base.StorageBackend, spec: base.PoolSpec
    ) -> base.PoolInfo:
        """Probe one pool; always returns a PoolInfo (ERROR with the reason on failure)."""
        started = time.monotonic()
        info = await self._probe_one(backend=backend, spec=spec)
        if self._on_probe is not None:
            failed = info.health is base.PoolHealth.ERROR
            self._on_probe(spec.kind, time.monotonic() - started, failed)
        return info

    async def _probe_one(
        self, *, backend: base.StorageBackend, spec: base.PoolSpec
    ) -> base.PoolInfo:
        try:
            async with asyncio.timeout(self._soft_limit):
                info = await backend.probe(spec, timeout=self._timeout)
        except TimeoutError:
            return error_info(spec=spec, message=f"probe timed out after {self._timeout:g}s")
        except base.BackendError as exc:
            return error_info(spec=spec, message=f"probe failed: {exc}")
        except Exception as exc:  # a backend bug: report it, log it, carry on
            self._logger.exception("probe of pool %s crashed", spec.pool_id)
            return error_info(spec=spec, message=f"probe failed: {type(exc).__name__}: {exc}")
        if info.pool_id != spec.pool_id:
            self._logger.error(
                "backend %s answered a probe of %s for pool %s",
                spec.kind,
                spec.pool_id,
                info.pool_id,
            )
            return error_info(
                spec=spec, message=f"backend returned a report for pool {info.pool_id!r}"
            )
        return info

    async def probe_all(self, targets: Targets) -> dict[str, base.PoolInfo]:
        """Probe every target concurrently; returns a PoolInfo for each of them.

        Returns within the hard limit whatever the backends do.
        """
        results: dict[str, base.PoolInfo] = {}
        tasks: dict[str, asyncio.Task[base.PoolInfo]] = {}
        for pool_id, (backend, spec) in targets.items():
            if pool_id in self._stragglers:
                results[pool_id] = error_info(
                    spec=spec,
                    message=(
                        f"probe timed out after {self._timeout:g}s; previous probe still running"
                    ),
                )
                continue
            tasks[pool_id] = asyncio.create_task(
                self.probe_one(backend=backend, spec=spec), name=f"probe-{pool_id}"
            )
        try:
            if tasks:
                await asyncio.wait(tasks.values(), timeout=self._hard_limit)
        finally:
            # Also on our own cancellation: no probe task outlives this call unnoticed.
            for pool_id, task in tasks.items():
                if not task.done():
                    self._abandon(pool_id=pool_id, task=task)
        for pool_id, task in tasks.items():
            spec = targets[pool_id][1]
            if task.done() and not task.cancelled():
                results[pool_id] = task.result()  # probe_one never raises Exception
            else:
                results[pool_id] = error_info(
                    spec=spec, message=f"probe timed out after {self._timeout:g}s"
                )
                if self._on_probe is not None:  # abandoned: it never told probe_one's end
                    self._on_probe(spec.kind, self._hard_limit, True)
        self.rounds += 1
        return results

    def _abandon(self, *, pool_id: str, task: asyncio.Task[base.PoolInfo]) -> None:
        self._logger.warning(
            "probe of pool %s ignored its %gs timeout; abandoning it", pool_id, self._timeout
        )
        task.cancel()
        self._stragglers[pool_id] = task

        def forget(t: asyncio.Task[base.PoolInfo]) -> None:
            if self._stragglers.get(pool_id) is t:
                del self._stragglers[pool_id]
            if not t.cancelled() and t.exception() is not None:
                self._logger.debug("abandoned probe of %s ended with %r", pool_id, t.exception())

        task.add_done_callback(forget)

    async def run(
        self,
        *,
        targets: Callable[[], Targets],
        record: Recorder,
        interval: float,
    ) -> None:
        """Probe ``targets()`` every ``interval`` seconds and ``record`` each result."""
        while True:
            current = targets()
            if current:
                infos = await self.probe_all(current)
                for pool_id, info in infos.items():
                    record(spec=current[pool_id][1], info=info)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        """Cancel abandoned probes and give them a moment to end (bounded)."""
        stragglers = list(self._stragglers.values())
        for task in stragglers:
            task.cancel()
        if stragglers:
            await asyncio.wait(stragglers, timeout=self._hard_limit)
