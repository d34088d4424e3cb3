"""GetNodeMetrics / StreamNodeMetrics from real heartbeats, and NotifyStorageChange /
SyncFullState applied like heartbeats, against a real controller and etcd over gRPC."""

from __future__ import annotations

import asyncio

import grpclib.client
import pytest
from grpclib.const import Status

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.engines.intake import NOT_REPORTED
from tests.qvdc.api.helpers import (
    TIMEOUT,
    create_request,
    eventually,
    expect_error,
    register_request,
    report,
)

GiB = 1 << 30
MiB = 1 << 20
Health = storage.PoolHostStatusHealth
Change = compute.StorageChangeEventType


def heartbeat(
    node_id: str, *reports: compute.StoragePoolStatusReport, cpu: float = 37.5
) -> compute.UpdateHeartbeatRequest:
    return compute.UpdateHeartbeatRequest(
        node_id=node_id,
        cpu_usage_percent=cpu,
        memory_used_mib=3 * 1024,
        memory_total_mib=8 * 1024,
        running_vm_count=2,
        load_1m=0.5,
        load_5m=0.25,
        load_15m=0.125,
        storage_pools=list(reports),
    )


async def _metrics(nodes: compute.NodeServiceStub, node_id: str) -> compute.NodeMetrics:
    return await nodes.get_node_metrics(compute.GetNodeMetricsRequest(id=node_id), timeout=TIMEOUT)


async def _rows(pools: storage.StoragePoolServiceStub, pool_id: str) -> dict[str, Health]:
    got = await pools.get_pool(storage.GetPoolRequest(id=pool_id), timeout=TIMEOUT)
    return {row.node_id: row.health for row in got.status.host_statuses}


async def test_metrics_are_the_nodes_own_last_heartbeat_and_refused_once_stale(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    node = await nodes.register_node(register_request("measured"), timeout=TIMEOUT)
    a = await pools.create_pool(create_request("meas-a", nodes=[node.id]), timeout=TIMEOUT)
    b = await pools.create_pool(create_request("meas-b", nodes=[node.id]), timeout=TIMEOUT)
    # Registered, never heard: nothing current to show.
    await expect_error(_metrics(nodes, node.id), Status.FAILED_PRECONDITION, "no heartbeat")
    await nodes.update_heartbeat(
        heartbeat(
            node.id,
            report(a.id, total=100 * GiB, used=10 * GiB),
            report(b.id, total=50 * GiB, used=5 * GiB),
        ),
        timeout=TIMEOUT,
    )
    # The pool rows are written through the group commit: they show once the view has them.
    got = await eventually(
        lambda: _metrics(nodes, node.id),
        lambda m: m.storage_total_bytes > 0,
        what="storage figures",
    )
    assert got.node_id == node.id
    assert got.cpu_usage_percent == 37.5
    assert (got.memory_total_bytes, got.memory_used_bytes) == (8 * 1024 * MiB, 3 * 1024 * MiB)
    assert got.memory_available_bytes == 5 * 1024 * MiB
    assert (got.load_1m, got.load_5m, got.load_15m) == (0.5, 0.25, 0.125)
    assert got.vm_running_count == 2
    assert got.cpu_cores_total == 4  # registration: 1 socket x 4 cores
    assert (got.storage_total_bytes, got.storage_used_bytes) == (150 * GiB, 15 * GiB)
    # Not managed by this slice: zero, never invented.
    assert (got.vm_count, got.cpu_cores_allocated, got.memory_allocated_bytes) == (0, 0, 0)
    # A new heartbeat's figures replace the old ones; an ERROR pool stops counting.
    await nodes.update_heartbeat(
        heartbeat(node.id, report(a.id, total=100 * GiB, used=10 * GiB), report(b.id, health=3)),
        timeout=TIMEOUT,
    )
    got = await eventually(
        lambda: _metrics(nodes, node.id),
        lambda m: m.storage_total_bytes == 100 * GiB,
        what="the ERROR pool not counted",
    )
    assert got.cpu_usage_percent == 37.5
    # Silent past the grace (3 s): refused, naming the last heartbeat.
    stale = await eventually(
        lambda: _status_of(_metrics(nodes, node.id)),
        lambda status: status is Status.FAILED_PRECONDITION,
        what="stale figures refused",
    )
    assert stale is Status.FAILED_PRECONDITION
    await expect_error(_metrics(nodes, node.id), Status.FAILED_PRECONDITION, "not current")
    await expect_error(_metrics(nodes, "nobody"), Status.NOT_FOUND, "id")
    await expect_error(_metrics(nodes, ""), Status.INVALID_ARGUMENT, "id")


async def _status_of(call: object) -> Status | None:
    try:
        await call  # type: ignore[misc]
    except grpclib.exceptions.GRPCError as exc:
        return exc.status
    return None


async def test_stream_node_metrics_follows_the_heartbeats(
    nodes: compute.NodeServiceStub, channel: grpclib.client.Channel
) -> None:
    node = await nodes.register_node(register_request("streamed"), timeout=TIMEOUT)
    await nodes.update_heartbeat(heartbeat(node.id, cpu=10.0), timeout=TIMEOUT)
    seen: list[compute.NodeMetrics] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    async for message in nodes.stream_node_metrics(
        compute.StreamNodeMetricsRequest(node_id=node.id, interval_sec=1), timeout=10
    ):
        seen.append(message)
        if len(seen) == 1:
            await nodes.update_heartbeat(heartbeat(node.id, cpu=90.0), timeout=TIMEOUT)
        if len(seen) == 2:
            break
    assert [m.cpu_usage_percent for m in seen] == [10.0, 90.0]
    assert 0.9 <= loop.time() - started < 3.0  # one interval between them
    for bad in (3601, 2**32 - 1):
        with pytest.raises(grpclib.exceptions.GRPCError) as info:
            async for _ in nodes.stream_node_metrics(
                compute.StreamNodeMetricsRequest(node_id=node.id, interval_sec=bad), timeout=5
            ):
                pass
        assert info.value.status == Status.INVALID_ARGUMENT
        assert "interval_sec" in (info.value.message or "")
    # A stream whose node goes silent ends with the same refusal as GetNodeMetrics.
    with pytest.raises(grpclib.exceptions.GRPCError) as info:
        async for _ in nodes.stream_node_metrics(
            compute.StreamNodeMetricsRequest(node_id=node.id, interval_sec=1), timeout=15
        ):
            pass
    assert info.value.status == Status.FAILED_PRECONDITION


async def test_notify_storage_change_is_applied_like_a_heartbeat(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    node = await nodes.register_node(register_request("notifier"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("notified", nodes=[node.id]), timeout=TIMEOUT)
    await nodes.update_heartbeat(heartbeat(node.id, report(pool.id)), timeout=TIMEOUT)
    await eventually(
        lambda: _rows(pools, pool.id), lambda r: r.get(node.id) == Health.HEALTHY, what="healthy"
    )

    async def notify(
        pool_report: compute.StoragePoolStatusReport, kind: Change = Change.STORAGE_CHANGE_UPDATED
    ) -> compute.StorageChangeAck:
        return await nodes.notify_storage_change(
            compute.StorageChangeNotification(
                node_id=node.id, pool=pool_report, event_type=kind, timestamp_unix=1
            ),
            timeout=TIMEOUT,
        )

    ack = await notify(report(pool.id, health=3, error="disk gone"))
    assert (ack.acknowledged, ack.action, ack.error) == (True, "applied", "")
    await eventually(
        lambda: _rows(pools, pool.id), lambda r: r.get(node.id) == Health.ERROR, what="ERROR"
    )
    # UNMOUNTED says so whatever health the report carries.
    await notify(report(pool.id), Change.STORAGE_CHANGE_UNMOUNTED)
    await eventually(
        lambda: _rows(pools, pool.id),
        lambda r: r.get(node.id) == Health.UNMOUNTED,
        what="UNMOUNTED",
    )
    # By name, as upstream's agent may name pools.
    await notify(report("notified"), Change.STORAGE_CHANGE_MOUNTED)
    await eventually(
        lambda: _rows(pools, pool.id), lambda r: r.get(node.id) == Health.HEALTHY, what="again"
    )
    ignored = await notify(report("no-such-pool"))
    assert (ignored.acknowledged, ignored.action) == (True, "ignored")
    assert "no-such-pool" in ignored.error
    await expect_error(
        nodes.notify_storage_change(
            compute.StorageChangeNotification(node_id=node.id), timeout=TIMEOUT
        ),
        Status.INVALID_ARGUMENT,
        "pool",
    )
    await expect_error(
        nodes.notify_storage_change(
            compute.StorageChangeNotification(node_id="ghost", pool=report(pool.id)),
            timeout=TIMEOUT,
        ),
        Status.NOT_FOUND,
        "node",
    )


async def test_sync_full_state_reconciles_pools_and_names_the_conflicts(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub, controller: Controller
) -> None:
    node = await nodes.register_node(register_request("syncer"), timeout=TIMEOUT)
    other = await nodes.register_node(register_request("bystander"), timeout=TIMEOUT)
    kept = await pools.create_pool(create_request("sync-kept", nodes=[node.id]), timeout=TIMEOUT)
    lost = await pools.create_pool(create_request("sync-lost", nodes=[node.id]), timeout=TIMEOUT)
    foreign = await pools.create_pool(
        create_request("sync-other", nodes=[other.id]), timeout=TIMEOUT
    )
    answer = await nodes.sync_full_state(
        compute.SyncFullStateRequest(
            node_id=node.id,
            host_info=compute.HostInfo(
                hostname="syncer",
                memory_total_bytes=16 * GiB,
                memory_available_bytes=12 * GiB,
                cpu_cores=8,
                cpu_usage_percent=12.5,
            ),
            vms=[compute.VmStatusReport(id="vm-1", name="ignored")],
            storage_pools=[report(kept.id), report(foreign.id), report("made-up")],
            state_hash="abc",
        ),
        timeout=TIMEOUT,
    )
    assert answer.acknowledged
    assert answer.pools_reconciled == 1
    assert (answer.vms_reconciled, answer.vms_discovered, answer.vms_lost) == (0, 0, 0)
    conflicts = {(c.resource_id, c.conflict_type) for c in answer.conflicts}
    assert conflicts == {
        (lost.id, "missing_on_node"),
        (foreign.id, "missing_in_db"),
        ("made-up", "missing_in_db"),
    }
    assert all(c.resource_type == "storage_pool" and c.message for c in answer.conflicts)
    # Applied as a full heartbeat: the reported pool HEALTHY, the missing one UNMOUNTED.
    await eventually(
        lambda: _rows(pools, kept.id), lambda r: r.get(node.id) == Health.HEALTHY, what="kept"
    )
    got = await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=lost.id), timeout=TIMEOUT),
        lambda p: any(r.health == Health.UNMOUNTED for r in p.status.host_statuses),
        what="the unreported pool UNMOUNTED",
    )
    [row] = [r for r in got.status.host_statuses if r.node_id == node.id]
    assert row.error_message == NOT_REPORTED
    # host_info's figures are the node's latest.
    metrics = await _metrics(nodes, node.id)
    assert metrics.cpu_usage_percent == 12.5
    assert (metrics.memory_total_bytes, metrics.memory_used_bytes) == (16 * GiB, 4 * GiB)
    await expect_error(
        nodes.sync_full_state(compute.SyncFullStateRequest(node_id="ghost"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "node",
    )
