"""With TLS and authorization on (a real controller, real certificates): the agent's
other reports act only for the caller's own node, and the events and metrics are reads
any operator (a viewer too) may make."""

from __future__ import annotations

import asyncio

from grpclib.const import Status

from protos.limiquantix.compute import v1 as compute
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import report
from tests.qvdc.api.test_auth import (  # noqa: F401 - the fixtures, reused
    Connect,
    Seeded,
    connect,
    controller,
    pki,
    refused,
    seeded,
    snapshot,
)


async def test_reports_only_for_the_callers_own_node(
    connect: Connect,  # noqa: F811
    seeded: Seeded,  # noqa: F811
    store: EtcdStore,
) -> None:
    as_a = compute.NodeServiceStub(connect("host-a"))
    before = await snapshot(store)
    await refused(
        as_a.sync_full_state(
            compute.SyncFullStateRequest(node_id=seeded.b, storage_pools=[report(seeded.pool)])
        ),
        Status.PERMISSION_DENIED,
        "node_id",
        "host-b",
    )
    await refused(
        as_a.notify_storage_change(
            compute.StorageChangeNotification(node_id=seeded.b, pool=report(seeded.pool))
        ),
        Status.PERMISSION_DENIED,
        "node_id",
        "host-b",
    )
    operator = compute.NodeServiceStub(connect("ada"))
    await refused(
        operator.sync_full_state(compute.SyncFullStateRequest(node_id=seeded.a)),
        Status.PERMISSION_DENIED,
        "node certificate",
    )
    await asyncio.sleep(0.3)  # past the committer's delay: a write would have landed
    assert await snapshot(store) == before
    # For itself it may.
    answer = await as_a.sync_full_state(
        compute.SyncFullStateRequest(node_id=seeded.a, storage_pools=[report(seeded.pool)])
    )
    assert answer.acknowledged and answer.pools_reconciled == 1
    ack = await as_a.notify_storage_change(
        compute.StorageChangeNotification(node_id=seeded.a, pool=report(seeded.pool))
    )
    assert ack.action == "applied"


async def test_events_and_metrics_are_reads(
    connect: Connect,  # noqa: F811
    seeded: Seeded,  # noqa: F811
) -> None:
    viewer = compute.NodeServiceStub(connect("vic"))
    listed = await viewer.list_node_events(compute.ListNodeEventsRequest(node_id=seeded.a))
    assert listed.events == []
    await compute.NodeServiceStub(connect("host-a")).update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=seeded.a, cpu_usage_percent=5.0)
    )
    got = await viewer.get_node_metrics(compute.GetNodeMetricsRequest(id=seeded.a))
    assert got.cpu_usage_percent == 5.0
    stream = viewer.stream_events(compute.StreamEventsRequest(node_id=seeded.a))
    marker = await asyncio.wait_for(stream.__anext__(), 5)
    assert marker.metadata["marker"] == "subscribed"
    await stream.aclose()  # type: ignore[attr-defined]  # an async generator, typed as an iterator
    # A node may not read the fleet's events (reads are operators').
    await refused(
        compute.NodeServiceStub(connect("host-a")).list_node_events(
            compute.ListNodeEventsRequest(node_id=seeded.a)
        ),
        Status.PERMISSION_DENIED,
        "operator",
    )
