"""The aggregator through a real controller and a real etcd, where time alone changes a pool.

* Every node silent (the liveness freeze marks nobody OFFLINE): the rows still turn stale
  at their grace, with no etcd event, and the pool is never READY nor counts their capacity;
  heartbeats resuming bring it back, again with no event.
* A pool assigned to a live host that has not reported yet is PENDING, never ERROR.
* Pool messages name a host by hostname and short id.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.domain import aggregation
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    controller_settings,
    create_request,
    eventually,
    register_request,
    report,
)

PoolPhase = storage.StoragePoolStatusPhase
NodePhase = compute.NodeStatusPhase
Health = storage.PoolHostStatusHealth
GRACE = 3.0


async def _controller(
    store: EtcdStore, etcd_settings: EtcdSettings, *, interval: float, grace: float
) -> Controller:
    base = controller_settings(etcd_settings, grace=grace)
    settings = dataclasses.replace(
        base,
        heartbeat=dataclasses.replace(base.heartbeat, interval=interval),
        monitor=dataclasses.replace(base.monitor, grace=grace, check_period=0.1),
    )
    controller = Controller(store=store, settings=settings)
    await controller.start()
    return controller


@pytest.fixture
async def controller(
    store: EtcdStore, etcd_settings: EtcdSettings, request: pytest.FixtureRequest
) -> AsyncIterator[Controller]:
    interval, grace = getattr(request, "param", (1.0, GRACE))
    controller = await _controller(store, etcd_settings, interval=interval, grace=grace)
    try:
        yield controller
    finally:
        await controller.stop()


@pytest.fixture
async def stubs(
    controller: Controller,
) -> AsyncIterator[tuple[compute.NodeServiceStub, storage.StoragePoolServiceStub]]:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        yield compute.NodeServiceStub(channel), storage.StoragePoolServiceStub(channel)
    finally:
        channel.close()


class Beater:
    """Heartbeats from some nodes every 0.3 s, reporting the pool HEALTHY, until stopped."""

    def __init__(self, nodes: compute.NodeServiceStub, pool_id: str, node_ids: list[str]) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run(nodes, pool_id, node_ids))

    async def _run(self, nodes: compute.NodeServiceStub, pool_id: str, node_ids: list[str]) -> None:
        while not self._stop.is_set():
            await asyncio.gather(*(_beat(nodes, n, pool_id) for n in node_ids))
            try:
                await asyncio.wait_for(self._stop.wait(), 0.3)
            except TimeoutError:
                pass

    async def stop(self) -> None:
        self._stop.set()
        await self._task


async def _beat(nodes: compute.NodeServiceStub, node_id: str, pool_id: str) -> None:
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node_id, storage_pools=[report(pool_id)]),
        timeout=TIMEOUT,
    )


async def test_all_nodes_silent_at_once_pool_unknown_while_liveness_is_frozen(
    controller: Controller,
    stubs: tuple[compute.NodeServiceStub, storage.StoragePoolServiceStub],
) -> None:
    nodes, pools = stubs
    ids = [
        (await nodes.register_node(register_request(f"mute-{i}"), timeout=TIMEOUT)).id
        for i in range(3)
    ]
    pool = await pools.create_pool(create_request("mute", nodes=ids), timeout=TIMEOUT)

    def get() -> Awaitable[storage.StoragePool]:
        return pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)

    beater = Beater(nodes, pool.id, ids)
    try:
        await eventually(get, lambda p: p.status.phase == PoolPhase.READY, what="READY")
        # Steady heartbeats: once the hosts' first-report window has passed (it costs one
        # recomputation), the deadlines are only rescheduled and no pool is recomputed.
        await asyncio.sleep(aggregation.report_due(since=0.0, interval=1.0) + 0.5)
        before = controller.aggregator.recomputed
        await asyncio.sleep(2 * GRACE)
        assert controller.aggregator.recomputed == before
    finally:
        await beater.stop()
    # Every node silent in one pass: liveness freezes (nobody OFFLINE) ...
    frozen = await eventually(
        get, lambda p: p.status.phase == PoolPhase.UNKNOWN, timeout=20, what="UNKNOWN"
    )
    assert all(row.stale for row in frozen.status.host_statuses), frozen.status.host_statuses
    assert (frozen.status.capacity.total_bytes, frozen.status.healthy_node_ids) == (0, [])
    # ... and the pool did not wait for an OFFLINE that the freeze never writes.
    for node_id in ids:
        node = await nodes.get_node(compute.GetNodeRequest(id=node_id), timeout=TIMEOUT)
        assert node.status.phase == NodePhase.READY, node.status
    beater = Beater(nodes, pool.id, ids)
    try:
        back = await eventually(
            get, lambda p: p.status.phase == PoolPhase.READY, timeout=20, what="READY again"
        )
        assert back.status.capacity.total_bytes == 3 * (100 << 30)
    finally:
        await beater.stop()


async def test_pool_is_never_ready_on_rows_past_their_grace_in_two_waves(
    stubs: tuple[compute.NodeServiceStub, storage.StoragePoolServiceStub],
) -> None:
    nodes, pools = stubs
    ids = [
        (await nodes.register_node(register_request(f"wave-{i}"), timeout=TIMEOUT)).id
        for i in range(4)
    ]
    pool = await pools.create_pool(create_request("waves", nodes=ids), timeout=TIMEOUT)

    def get() -> Awaitable[storage.StoragePool]:
        return pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)

    async def beat(which: list[str]) -> None:
        await asyncio.gather(*(_beat(nodes, n, pool.id) for n in which))

    await beat(ids)
    await eventually(get, lambda p: p.status.phase == PoolPhase.READY, what="READY")

    # Wave 1: two of four go silent. Not a mass outage: they go OFFLINE the ordinary way.
    survivors = Beater(nodes, pool.id, ids[2:])
    try:
        degraded = await eventually(
            get,
            lambda p: (
                p.status.phase == PoolPhase.DEGRADED
                and sorted(p.status.healthy_node_ids) == sorted(ids[2:])
            ),
            timeout=20,
            what="DEGRADED after the first wave",
        )
        assert degraded.status.capacity.total_bytes == 2 * (100 << 30)
    finally:
        await survivors.stop()
    # Wave 2: the other two go silent too (every live node silent in one pass: whether
    # liveness freezes or judges them, the rows turn stale at their grace).
    frozen = await eventually(
        get, lambda p: p.status.phase == PoolPhase.UNKNOWN, timeout=20, what="UNKNOWN"
    )
    assert all(row.stale for row in frozen.status.host_statuses), frozen.status.host_statuses
    assert frozen.status.healthy_node_ids == []
    assert frozen.status.capacity.total_bytes == 0
    # Watched for longer than a grace, it never reads READY or counts a stale figure.
    loop = asyncio.get_running_loop()
    until = loop.time() + GRACE + 1.0
    while loop.time() < until:
        seen = await get()
        assert seen.status.phase != PoolPhase.READY
        assert seen.status.capacity.total_bytes == 0
        await asyncio.sleep(0.2)
    # Heartbeats resume: the pool is READY again.
    everyone = Beater(nodes, pool.id, ids)
    try:
        back = await eventually(
            get, lambda p: p.status.phase == PoolPhase.READY, timeout=20, what="READY again"
        )
        assert back.status.capacity.total_bytes == 4 * (100 << 30)
        assert not any(row.stale for row in back.status.host_statuses)
    finally:
        await everyone.stop()


@pytest.mark.parametrize("controller", [(5.0, 15.0)], indirect=True)
async def test_a_pool_on_a_live_host_that_has_not_reported_yet_is_pending_never_error(
    stubs: tuple[compute.NodeServiceStub, storage.StoragePoolServiceStub],
) -> None:
    nodes, pools = stubs
    node = await nodes.register_node(register_request("newcomer"), timeout=TIMEOUT)
    await nodes.update_heartbeat(compute.UpdateHeartbeatRequest(node_id=node.id), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("fresh", nodes=[node.id]), timeout=TIMEOUT)

    def get() -> Awaitable[storage.StoragePool]:
        return pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)

    pending = await eventually(
        get, lambda p: bool(p.status.host_statuses), what="the aggregate with its host row"
    )
    assert pending.status.phase == PoolPhase.PENDING, pending.status
    [row] = pending.status.host_statuses
    assert (row.health, row.stale, row.hostname) == (Health.UNKNOWN, False, "newcomer")
    assert "first report" in row.error_message
    assert pending.status.unhealthy_node_ids == []
    assert "newcomer (" in pending.status.error_message
    # For a while (well inside the host's 5 s interval + 1.25 s) it stays PENDING.
    for _ in range(10):
        seen = await get()
        assert seen.status.phase == PoolPhase.PENDING, seen.status
        await asyncio.sleep(0.1)
    await _beat(nodes, node.id, pool.id)
    await eventually(get, lambda p: p.status.phase == PoolPhase.READY, what="READY")


async def test_pool_messages_name_hosts_by_hostname_and_short_id(
    stubs: tuple[compute.NodeServiceStub, storage.StoragePoolServiceStub],
) -> None:
    nodes, pools = stubs
    sick = await nodes.register_node(register_request("host-sick"), timeout=TIMEOUT)
    well = await nodes.register_node(register_request("host-well"), timeout=TIMEOUT)
    pool = await pools.create_pool(
        create_request("named", nodes=[sick.id, well.id]), timeout=TIMEOUT
    )
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(
            node_id=sick.id, storage_pools=[report(pool.id, health=3, error="disk on fire")]
        ),
        timeout=TIMEOUT,
    )
    await _beat(nodes, well.id, pool.id)
    got = await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
        lambda p: p.status.phase == PoolPhase.DEGRADED,
        what="DEGRADED",
    )
    assert got.status.error_message == (
        f"1 of 2 hosts unhealthy: host-sick ({sick.id[:8]}) ERROR: disk on fire"
    )
