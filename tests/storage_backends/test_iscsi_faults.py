"""iSCSI pool health under real target faults, each on a tgtd of the test's own.

Every fault is real (docs/lab.md, iSCSI): a LUN taken offline or made read-only
with ``tgtadm``, tgtd crashed (SIGKILL: it ignores SIGTERM), tgtd frozen with
SIGSTOP so the kernel still accepts connections and nothing answers. Each
test asserts the health and message within the probe bound (2 s, the node's
default) and that the pool recovers once the fault is undone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import AsyncIterator

import pytest

from storage_backends import base, iscsi
from tests.fixtures.iscsi import (
    PLAIN_IQN,
    PLAIN_LUN_SIZE,
    TgtServer,
    private_tgtd_fixture,  # noqa: F401
)

#: The node's default probe bound.
BOUND = 2.0
#: A short call bound, for probes and attaches against a hung tgtd.
SHORT_BOUND = 0.3
#: How long an abandoned worker may outlive its call (libiscsi: deadline + 1 s grace).
WORKER_END_BOUND = 3.0
#: Wall-clock slack on top of a bound. These tests time the wall clock on purpose: tgtd
#: is a real server (frozen, killed, its LUN offline) and the probe's worker a real thread
#: in libiscsi, so real time is the property under test and a virtual clock would not
#: see it. Generous, for a loaded two-core CI host.
SLACK = 1.0


def pool(server: TgtServer, pool_id: str = "p1") -> base.PoolSpec:
    return base.PoolSpec(
        pool_id=pool_id,
        kind="iscsi",
        config={"portal": server.portal, "target": PLAIN_IQN, "lun": 1},
    )


@pytest.fixture
async def backend(private_tgtd: TgtServer) -> AsyncIterator[iscsi.IscsiBackend]:
    backend = iscsi.IscsiBackend(initiator=iscsi.UserspaceInitiator())
    info = await backend.attach(pool(private_tgtd), timeout=BOUND)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    yield backend


async def timed_probe(
    backend: iscsi.IscsiBackend, spec: base.PoolSpec, *, timeout: float = BOUND
) -> tuple[base.PoolInfo, float]:
    start = time.monotonic()
    info = await backend.probe(spec, timeout=timeout)
    return info, time.monotonic() - start


def probe_threads(pool_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"quantix-iscsi:{pool_id}"]


async def test_offline_lun_is_not_ready_then_recovers(
    backend: iscsi.IscsiBackend, private_tgtd: TgtServer
) -> None:
    target = private_tgtd.targets[1]
    private_tgtd.set_lun_online(target, 1, online=False)
    info, elapsed = await timed_probe(backend, pool(private_tgtd))
    assert info.health is base.PoolHealth.ERROR
    assert (
        info.error_message == f"LUN 1 of {PLAIN_IQN} is not ready (NOT READY, ASC/ASCQ 0x04/0x01)"
    )
    assert elapsed < BOUND

    private_tgtd.set_lun_online(target, 1, online=True)
    info = await backend.probe(pool(private_tgtd), timeout=BOUND)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.total_bytes == PLAIN_LUN_SIZE


async def test_write_protected_lun_is_degraded_then_recovers(
    backend: iscsi.IscsiBackend, private_tgtd: TgtServer
) -> None:
    target = private_tgtd.targets[1]
    private_tgtd.set_lun_readonly(target, 1, readonly=True)
    info = await backend.probe(pool(private_tgtd), timeout=BOUND)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message == "read-only"
    assert info.total_bytes == PLAIN_LUN_SIZE  # still measured

    private_tgtd.set_lun_readonly(target, 1, readonly=False)
    info = await backend.probe(pool(private_tgtd), timeout=BOUND)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_dead_tgtd_is_refused_then_recovers_after_restart(
    backend: iscsi.IscsiBackend, private_tgtd: TgtServer
) -> None:
    # tgtd ignores SIGTERM (empty handler): still serving afterwards.
    os.kill(private_tgtd.pid, signal.SIGTERM)
    info = await backend.probe(pool(private_tgtd), timeout=BOUND)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message

    private_tgtd.kill()  # SIGKILL: the portal now refuses connections
    info, elapsed = await timed_probe(backend, pool(private_tgtd))
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == f"iSCSI portal {private_tgtd.portal} refused the connection"
    assert elapsed < BOUND
    with pytest.raises(base.BackendUnavailable, match="refused the connection"):
        await backend.attach(pool(private_tgtd), timeout=BOUND)

    private_tgtd.restart()
    info = await backend.probe(pool(private_tgtd), timeout=BOUND)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_hung_tgtd_times_out_within_the_bound_without_stacking_workers(
    backend: iscsi.IscsiBackend, private_tgtd: TgtServer
) -> None:
    spec = pool(private_tgtd)
    private_tgtd.hang()
    try:
        info, elapsed = await timed_probe(backend, spec)
        assert info.health is base.PoolHealth.ERROR
        assert info.error_message == f"probe timed out after {BOUND:g}s"
        assert BOUND <= elapsed < BOUND + SLACK
        assert len(probe_threads("p1")) == 1  # the abandoned worker, still waiting

        # A second probe while the first worker is stuck starts no new worker.
        info, elapsed = await timed_probe(backend, spec, timeout=SHORT_BOUND)
        assert info.health is base.PoolHealth.ERROR
        assert info.error_message == (
            f"probe timed out; previous probe of {PLAIN_IQN} LUN 1 still running"
        )
        assert elapsed < SHORT_BOUND + SLACK
        assert len(probe_threads("p1")) == 1
    finally:
        private_tgtd.resume()

    info = await backend.probe(spec, timeout=BOUND)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.total_bytes == PLAIN_LUN_SIZE


async def test_an_abandoned_worker_ends_soon_even_if_the_target_stays_hung(
    backend: iscsi.IscsiBackend, private_tgtd: TgtServer
) -> None:
    # libiscsi's own PDU timeout follows the caller's deadline (+1 s grace):
    # a stuck probe costs one thread for seconds, not for ever.
    private_tgtd.hang()
    try:
        info = await backend.probe(pool(private_tgtd), timeout=1.0)
        assert info.error_message == "probe timed out after 1s"
        gave_up = time.monotonic()
        (worker,) = probe_threads("p1")
        await asyncio.to_thread(worker.join, 4.0)
        assert not worker.is_alive()
        assert time.monotonic() - gave_up < WORKER_END_BOUND
    finally:
        private_tgtd.resume()


async def test_attach_to_a_hung_portal_times_out(private_tgtd: TgtServer) -> None:
    backend = iscsi.IscsiBackend(initiator=iscsi.UserspaceInitiator())
    private_tgtd.hang()
    try:
        start = time.monotonic()
        with pytest.raises(base.BackendTimeout) as caught:
            await backend.attach(pool(private_tgtd), timeout=1.0)
        assert time.monotonic() - start < 1.0 + SLACK
        assert str(caught.value) == f"discovery on portal {private_tgtd.portal} timed out after 1s"
    finally:
        private_tgtd.resume()


async def test_a_cancelled_probe_propagates_cancellation(
    backend: iscsi.IscsiBackend, private_tgtd: TgtServer
) -> None:
    private_tgtd.hang()
    try:
        task = asyncio.create_task(backend.probe(pool(private_tgtd), timeout=BOUND))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        private_tgtd.resume()
