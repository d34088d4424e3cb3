"""Readiness of a replica: the one verdict behind ``/readyz`` and grpc.health.v1.

A replica is ready when its view has listed the keyspace (before that its answers
would be about an empty cluster) and etcd answers a cheap request (a revision query)
within the etcd timeout: a replica cut off from etcd still answers heartbeats from its
view, but cannot register a node or change a pool, so a load balancer should prefer
another. The probe's verdict is kept for ``ttl`` seconds and concurrent checks share
one probe, so health checks cannot load etcd. Liveness (``/healthz``) is not this: a
replica that cannot reach etcd is not helped by a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

NOT_LISTED = "the replica has not listed the cluster state yet"


class Readiness:
    """``await check()`` -> ``(ready, reason)``; see the module docstring."""

    def __init__(
        self,
        *,
        listed: Callable[[], bool],
        probe: Callable[[], Awaitable[object]],
        timeout: float,
        ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listed = listed
        self._probe = probe
        self._timeout = timeout
        self._ttl = ttl
        self._clock = clock
        self._verdict: tuple[bool, str] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def check(self) -> tuple[bool, str]:
        if not self._listed():
            return False, NOT_LISTED
        async with self._lock:
            if self._verdict is not None and self._clock() - self._at < self._ttl:
                return self._verdict
            verdict = await self._run_probe()
            if verdict != self._verdict:
                if verdict[0]:
                    log.info("replica ready")
                else:
                    log.warning("replica not ready: %s", verdict[1])
            self._verdict, self._at = verdict, self._clock()
            return verdict

    async def _run_probe(self) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self._timeout):
                await self._probe()
        except TimeoutError:
            return False, f"etcd did not answer within {self._timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure is the verdict, not a crash
            return False, f"etcd is unreachable ({type(exc).__name__})"
        return True, "ready"

    async def ready(self) -> bool:
        """Only the verdict (grpclib's ``ServiceCheck`` function)."""
        return (await self.check())[0]
