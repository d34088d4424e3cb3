"""Probing bounds: a hung, failing or rogue backend costs one pool's report, never more.

The scripted FakeBackend honours its timeout (like a good backend); the
``Rogue`` backend below ignores both the timeout and cancellation, which is
what our own limits exist for. The module runs on looptime's virtual clock
(everything, the scripted controller included, is in this process), so the
prober's test uses the node's real probe bound and asserts how long a round
takes.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from node import app, probing
from storage_backends import base, fake

LOG = logging.getLogger("test")

pytestmark = pytest.mark.looptime


class Rogue(fake.FakeBackend):
    """A backend whose probe ignores its timeout and swallows cancellation until released."""

    def __init__(self, *, kind: str) -> None:
        super().__init__(kind=kind)
        self.release = asyncio.Event()
        self.rogue_ids: set[str] = set()
        self.rogue_started = 0
        #: Only armed probes misbehave (so attaching, which probes, still works).
        self.armed = True

    async def probe(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        if spec.pool_id not in self.rogue_ids or not self.armed:
            return await super().probe(spec, timeout=timeout)
        self.rogue_started += 1
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:  # misbehaving on purpose
                continue
        return base.PoolInfo(pool_id=spec.pool_id, kind=self.kind, health=base.PoolHealth.HEALTHY)


def spec(pool_id: str) -> base.PoolSpec:
    return base.PoolSpec(pool_id=pool_id, kind="local_dir", config={})


PROBE_TIMEOUT = 2.0
"""The node's default probe bound (NodeSettings.probe_timeout); free on virtual time."""


async def test_each_probe_is_bounded_and_failures_become_reports():
    loop = asyncio.get_running_loop()
    backend = Rogue(kind="local_dir")
    backend.rogue_ids.add("rogue")
    gate = backend.hang_probe("hung")
    backend.pool("hung2").probe_gate = gate
    backend.script("failing", probe_error=base.ProbeError("stale file handle"))
    backend.script("buggy", probe_error=ZeroDivisionError("oops"))
    backend.script("full", health=base.PoolHealth.DEGRADED, error_message="nearly full: 2% free")
    prober = probing.Prober(timeout=PROBE_TIMEOUT, logger=LOG)
    ids = ["fine", "full", "hung", "hung2", "failing", "buggy", "rogue"]
    targets = {pid: (backend, spec(pid)) for pid in ids}
    try:
        started = loop.time()
        results = await prober.probe_all(targets)
        # One round costs about one bound: the hung probes wait side by side, and the
        # rogue one is abandoned at the prober's own limit, a little past the bound.
        assert PROBE_TIMEOUT <= loop.time() - started < 2 * PROBE_TIMEOUT
        assert set(results) == set(ids)
        health = {k: v.health for k, v in results.items()}
        assert health == {
            "fine": base.PoolHealth.HEALTHY,
            "full": base.PoolHealth.DEGRADED,
            "hung": base.PoolHealth.ERROR,
            "hung2": base.PoolHealth.ERROR,
            "failing": base.PoolHealth.ERROR,
            "buggy": base.PoolHealth.ERROR,
            "rogue": base.PoolHealth.ERROR,
        }
        assert results["hung"].error_message == "probe timed out after 2s"
        assert results["rogue"].error_message == "probe timed out after 2s"
        assert results["failing"].error_message == "probe failed: stale file handle"
        assert results["buggy"].error_message == "probe failed: ZeroDivisionError: oops"
        assert results["full"].error_message == "nearly full: 2% free"
        # Concurrent, not one after another: both hung probes were waiting at once.
        assert backend.max_probes_in_flight >= 2

        # The rogue probe is still running: it is not started again, only reported.
        assert prober.stragglers == {"rogue"}
        started = loop.time()
        again = await prober.probe_all(targets)
        # Without a rogue to wait for, the round ends when the honest hung probes time out.
        # Virtual time, but the probes' worker threads run in real time: a little slack.
        assert loop.time() - started == pytest.approx(PROBE_TIMEOUT, abs=0.25)
        assert backend.rogue_started == 1
        assert again["rogue"].health is base.PoolHealth.ERROR
        assert "previous probe still running" in again["rogue"].error_message
        assert again["fine"].health is base.PoolHealth.HEALTHY

        # Once it finally ends, the pool is probed normally again.
        backend.release.set()
        gate.set()
        async with asyncio.timeout(5):
            while prober.stragglers:  # noqa: ASYNC110 - polling the prober's state
                await asyncio.sleep(0.01)
        third = await prober.probe_all(targets)
        assert backend.rogue_started == 2
        assert third["rogue"].health is base.PoolHealth.HEALTHY
        assert third["hung"].health is base.PoolHealth.HEALTHY
    finally:
        backend.release.set()
        gate.set()
        await prober.close()


async def test_a_hung_pool_never_stalls_heartbeats(
    controller, node_settings, run_app, pool_def, eventually
):
    backend = Rogue(kind="local_dir")
    backend.rogue_ids.add("stuck")
    backend.armed = False
    controller.assigned = [pool_def("ok"), pool_def("stuck")]
    node = app.NodeApp(
        settings=node_settings(controller.endpoint, probe_timeout=0.2, heartbeat_interval=0.1),
        backend_factory=lambda kind: backend,
    )
    try:
        await run_app(node)
        await eventually(lambda: backend.attached == {"ok", "stuck"}, what="both attached")
        backend.armed = True
        await eventually(lambda: backend.rogue_started >= 1, what="the stuck probe started")
        started = backend.rogue_started
        n = len(controller.requests)
        # Heartbeats keep flowing while the probe hangs ...
        await controller.wait_requests(n + 5)
        assert backend.rogue_started == started  # ... and the stuck probe is not piled up.

        def reported() -> dict[str, tuple[int, str]]:
            latest: dict[str, tuple[int, str]] = {}
            for r in controller.requests:
                for p in r.storage_pools:
                    latest[p.pool_id] = (int(p.health), p.error_message)
            return latest

        await eventually(
            lambda: reported().get("stuck", (0, ""))[0] == base.PoolHealth.ERROR,
            what="stuck pool reported as ERROR",
        )
        assert reported()["stuck"][1].startswith("probe timed out after 0.2s")
        assert reported()["ok"] == (base.PoolHealth.HEALTHY, "")
    finally:
        backend.release.set()
