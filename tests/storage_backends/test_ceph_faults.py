"""ceph_rbd health under real faults of the session's Ceph cluster.

Every fault is real (docs/lab.md, Ceph RBD): a cluster flag that raises HEALTH_WARN
(``ceph osd set noout``), full ratios out of order for HEALTH_ERR, a pool
quota that fills, the monitor paused with SIGSTOP (hung) or stopped with
SIGTERM (dead) and started again, the OSD paused. Each test asserts the
health and the operator's message within the probe bound, and that the pool
recovers once the fault is undone: a probe that cannot see recovery is as
broken as one that cannot see the fault. The ``ceph_faults`` fixture repairs
the cluster after every test (resumes paused daemons, restarts the monitor,
clears noout), so one failing test does not break the next.

The OSD is paused, never restarted: its memstore would lose every object.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from storage_backends import base, ceph_rbd
from tests.fixtures.ceph import (  # noqa: F401  (fixtures used by name)
    POOL,
    CephCluster,
    RbdClient,
    fixture_ceph_cluster,
    fixture_ceph_faults,
    fixture_rbd_client,
)

PROBE_TIMEOUT = 2.0
#: What a probe may take beyond its bound (thread hand-over, TCP check). These tests time
#: the wall clock on purpose: the monitor and OSD are real daemons (paused, stopped) and
#: the probe's worker a real librados thread, so real time is the property under test and
#: a virtual clock would not see it. Generous, for a loaded two-core CI host.
SLACK = 1.0
ATTACH_TIMEOUT = 10.0
#: Seconds a health change may take to reach the monitors' health report.
SETTLE = 30.0


def spec(cluster: CephCluster, *, pool: str = POOL, pool_id: str = "p1") -> base.PoolSpec:
    return base.PoolSpec(
        pool_id=pool_id,
        kind="ceph_rbd",
        config={"pool_name": pool, "monitors": cluster.monitors},
    )


@pytest.fixture
async def backend() -> AsyncIterator[ceph_rbd.CephRbdBackend]:
    backend = ceph_rbd.CephRbdBackend(probe_timeout=PROBE_TIMEOUT)
    try:
        yield backend
    finally:
        for pool_id in list(backend._pools):
            detach_spec = base.PoolSpec(pool_id=pool_id, kind="ceph_rbd", config={})
            await backend.detach(detach_spec, timeout=ATTACH_TIMEOUT)


async def timed_probe(
    backend: ceph_rbd.CephRbdBackend, pool: base.PoolSpec, *, timeout: float = PROBE_TIMEOUT
) -> base.PoolInfo:
    """One probe, asserted to return within its bound."""
    started = time.monotonic()
    info = await backend.probe(pool, timeout=timeout)
    elapsed = time.monotonic() - started
    assert elapsed <= timeout + SLACK, f"probe took {elapsed:.2f}s, bound {timeout}s"
    return info


async def probe_until(
    backend: ceph_rbd.CephRbdBackend,
    pool: base.PoolSpec,
    done: Callable[[base.PoolInfo], bool],
    *,
    within: float = SETTLE,
) -> base.PoolInfo:
    """Probe (each within its bound) until ``done(info)``; fail with the last info."""
    deadline = time.monotonic() + within
    while True:
        info = await timed_probe(backend, pool)
        if done(info) or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.5)


def healthy(info: base.PoolInfo) -> bool:
    return info.health is base.PoolHealth.HEALTHY


async def wait_until_idle(backend: ceph_rbd.CephRbdBackend, pool_id: str) -> None:
    """Wait (bounded by librados' timeout) until the pool's worker has returned."""
    deadline = time.monotonic() + backend.client_timeout + SLACK
    while backend.busy(pool_id):
        assert time.monotonic() < deadline, "worker still running past librados' timeout"
        await asyncio.sleep(0.05)


def worker_threads(pool_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"quantix-ceph_rbd:{pool_id}"]


# -- cluster health -------------------------------------------------------------------


async def test_noout_flag_is_degraded_naming_the_check_then_healthy(
    backend: ceph_rbd.CephRbdBackend, ceph_faults: CephCluster
) -> None:
    pool = spec(ceph_faults)
    assert healthy(await backend.attach(pool, timeout=ATTACH_TIMEOUT))

    ceph_faults.ceph("osd", "set", "noout")
    info = await probe_until(backend, pool, lambda i: i.health is not base.PoolHealth.HEALTHY)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message == "cluster health HEALTH_WARN: noout flag(s) set (OSDMAP_FLAGS)"
    assert info.total_bytes > 0  # still measured: a flag does not take capacity away

    ceph_faults.ceph("osd", "unset", "noout")
    info = await probe_until(backend, pool, healthy)
    assert healthy(info), info.error_message
    assert info.error_message == ""


async def test_health_err_is_error_then_healthy(
    backend: ceph_rbd.CephRbdBackend, ceph_faults: CephCluster
) -> None:
    pool = spec(ceph_faults)
    assert healthy(await backend.attach(pool, timeout=ATTACH_TIMEOUT))
    # nearfull above backfillfull: the monitors raise HEALTH_ERR at once.
    ceph_faults.ceph("osd", "set-nearfull-ratio", "0.95")
    try:
        info = await probe_until(backend, pool, lambda i: i.health is base.PoolHealth.ERROR)
        assert info.health is base.PoolHealth.ERROR
        assert info.error_message == (
            "cluster health HEALTH_ERR: full ratio(s) out of order (OSD_OUT_OF_ORDER_FULL)"
        )
    finally:
        ceph_faults.ceph("osd", "set-nearfull-ratio", "0.85")
    assert healthy(await probe_until(backend, pool, healthy))


@pytest.fixture
def quota_pool(ceph_faults: CephCluster) -> Iterator[str]:
    """A one-PG RBD pool of its own, for a quota the other tests must not feel."""
    name = "quota"
    ceph_faults.ceph("osd", "pool", "create", name, "1", "1")
    ceph_faults.rbd("pool", "init", name)
    try:
        yield name
    finally:
        ceph_faults.ceph("osd", "pool", "delete", name, name, "--yes-i-really-really-mean-it")


async def test_pool_quota_caps_capacity_and_a_full_quota_is_degraded(
    backend: ceph_rbd.CephRbdBackend,
    ceph_faults: CephCluster,
    rbd_client: RbdClient,
    quota_pool: str,
) -> None:
    pool = spec(ceph_faults, pool=quota_pool)
    await backend.attach(pool, timeout=ATTACH_TIMEOUT)
    # A brand-new pool is missing from ceph df until the mgr's next report.
    info = await probe_until(backend, pool, healthy)
    assert healthy(info), info.error_message
    assert info.total_bytes > 100 * 1024**2  # the OSD's free space: no quota yet

    quota = 64 * 1024**2
    ceph_faults.ceph("osd", "pool", "set-quota", quota_pool, "max_bytes", str(quota))
    info = await probe_until(backend, pool, lambda i: i.total_bytes == quota)
    assert info.total_bytes == quota
    assert info.used_bytes + info.available_bytes == quota

    # Write past a tiny quota: the pool is full (POOL_FULL, HEALTH_WARN).
    rbd_client.create_image("filler", size=4 * 1024**2, pool=quota_pool)
    ceph_faults.ceph("osd", "pool", "set-quota", quota_pool, "max_bytes", "1")
    info = await probe_until(backend, pool, lambda i: "POOL_FULL" in i.error_message)
    assert info.health is base.PoolHealth.DEGRADED
    assert "1 pool(s) full (POOL_FULL)" in info.error_message
    assert info.available_bytes == 0
    assert info.total_bytes == info.used_bytes > 0


# -- the monitor hung or dead ------------------------------------------------------------


async def test_hung_monitor_times_out_within_the_bound_with_one_worker(
    backend: ceph_rbd.CephRbdBackend, ceph_faults: CephCluster
) -> None:
    pool = spec(ceph_faults)
    assert healthy(await backend.attach(pool, timeout=ATTACH_TIMEOUT))
    with ceph_faults.paused("mon"):
        info = await timed_probe(backend, pool)
        assert info.health is base.PoolHealth.ERROR
        assert info.error_message == (
            "probe timed out after 2s while asking the monitors for cluster health"
        )
        assert info.mount_path == "rbd:rbd"

        # librados gives up only at 3 s: the abandoned worker is still stuck, and
        # the next probe reports that instead of starting a second worker.
        assert backend.busy("p1")
        info = await timed_probe(backend, pool, timeout=0.3)
        assert info.health is base.PoolHealth.ERROR
        assert info.error_message == (
            "probe timed out after 0.3s: the previous call on rbd:rbd is still "
            "asking the monitors for cluster health"
        )
        assert len(worker_threads("p1")) == 1

        # Once it has returned, the next probe drops the failed handle and
        # reconnects, which the hung monitor does not answer either.
        await wait_until_idle(backend, "p1")
        info = await timed_probe(backend, pool)
        assert info.error_message == (
            "probe timed out after 2s while connecting to the Ceph monitors "
            f"{ceph_faults.monitors[0]}"
        )
        assert len(worker_threads("p1")) == 1

    info = await probe_until(backend, pool, healthy, within=10.0)
    assert healthy(info), info.error_message
    assert len(worker_threads("p1")) <= 1


async def test_dead_monitor_is_unreachable_then_healthy_after_restart(
    backend: ceph_rbd.CephRbdBackend, ceph_faults: CephCluster
) -> None:
    pool = spec(ceph_faults)
    assert healthy(await backend.attach(pool, timeout=ATTACH_TIMEOUT))
    handle = backend._pools["p1"].cluster
    ceph_faults.stop_mon()

    unreachable = (
        f"Ceph cluster unreachable: monitors {ceph_faults.monitors[0]} did not answer "
        "within 2s (connection refused)"
    )
    info = await timed_probe(backend, pool)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == unreachable
    # The next probe reconnects (the handle failed) and is told the same.
    info = await timed_probe(backend, pool)
    assert info.error_message == unreachable
    # So is a pool attached while the monitor is down.
    with pytest.raises(ceph_rbd.ClusterUnreachable, match="connection refused"):
        await backend.attach(spec(ceph_faults, pool_id="p2"), timeout=ATTACH_TIMEOUT)

    ceph_faults.start_mon()
    info = await probe_until(backend, pool, healthy, within=15.0)
    assert healthy(info), info.error_message
    assert backend._pools["p1"].cluster is not handle  # replaced, not trusted after the fault


async def test_hung_osd_times_out_naming_the_step(
    backend: ceph_rbd.CephRbdBackend, ceph_faults: CephCluster
) -> None:
    pool = spec(ceph_faults)
    assert healthy(await backend.attach(pool, timeout=ATTACH_TIMEOUT))
    with ceph_faults.paused("osd"):
        info = await timed_probe(backend, pool)
        assert info.health is base.PoolHealth.ERROR
        # The monitors still answer (health, ceph df); the image listing needs the OSD.
        assert info.error_message == (
            "probe timed out after 2s while listing RBD images in rbd:rbd (waiting for OSDs)"
        )
    info = await probe_until(backend, pool, healthy, within=15.0)
    assert healthy(info), info.error_message
