"""NodeService and the heartbeat path over a real grpclib server and a real etcd."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable

import grpclib.client
import grpclib.const
import pytest
from grpclib.const import Status

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.engines.intake import NOT_REPORTED
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    create_request,
    eventually,
    expect_error,
    register_request,
    report,
)

NodePhase = compute.NodeStatusPhase
PoolPhase = storage.StoragePoolStatusPhase
Health = storage.PoolHostStatusHealth


async def test_register_is_idempotent_by_hostname(nodes: compute.NodeServiceStub) -> None:
    first = await nodes.register_node(register_request("host-1", "10.0.0.9:9090"), timeout=TIMEOUT)
    assert first.id
    assert first.management_ip == "10.0.0.9"  # port stripped
    assert first.status.phase == NodePhase.READY
    assert first.status.last_heartbeat is not None  # upstream never filled it
    again = await nodes.register_node(register_request("host-1", "10.0.0.10"), timeout=TIMEOUT)
    assert again.id == first.id
    assert again.management_ip == "10.0.0.10"
    other = await nodes.register_node(register_request("host-2"), timeout=TIMEOUT)
    assert other.id != first.id


@pytest.mark.parametrize(
    ("hostname", "ip", "field"),
    [
        pytest.param("", "10.0.0.1", "hostname", id="missing-hostname"),
        pytest.param("bad host", "10.0.0.1", "hostname", id="bad-hostname"),
        pytest.param("h1", "", "management_ip", id="missing-ip"),
        pytest.param("h1", "not-an-ip", "management_ip", id="bad-ip"),
        pytest.param("h1", "10.0.0.1:port", "management_ip", id="bad-port"),
    ],
)
async def test_register_rejects_bad_input(
    nodes: compute.NodeServiceStub, hostname: str, ip: str, field: str
) -> None:
    await expect_error(
        nodes.register_node(
            compute.RegisterNodeRequest(hostname=hostname, management_ip=ip), timeout=TIMEOUT
        ),
        Status.INVALID_ARGUMENT,
        field,
    )
    assert (await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)).total_count == 0


async def test_ipv6_management_address_is_accepted(nodes: compute.NodeServiceStub) -> None:
    node = await nodes.register_node(register_request("v6-host", "[fd00::5]:9090"), timeout=TIMEOUT)
    assert node.management_ip == "fd00::5"


async def test_get_list_and_filters(nodes: compute.NodeServiceStub) -> None:
    a = await nodes.register_node(register_request("alpha"), timeout=TIMEOUT)
    b = await nodes.register_node(register_request("bravo"), timeout=TIMEOUT)
    await nodes.disable_node(
        compute.DisableNodeRequest(id=b.id, reason="disk swap"), timeout=TIMEOUT
    )
    got = await nodes.get_node(compute.GetNodeRequest(id=a.id), timeout=TIMEOUT)
    assert got.hostname == "alpha" and got.spec.cpu.cores_per_socket == 4
    await expect_error(
        nodes.get_node(compute.GetNodeRequest(id="ghost"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "ghost",
    )
    await expect_error(
        nodes.get_node(compute.GetNodeRequest(), timeout=TIMEOUT), Status.INVALID_ARGUMENT, "id"
    )
    maint = await nodes.list_nodes(
        compute.ListNodesRequest(phases=[NodePhase.MAINTENANCE]), timeout=TIMEOUT
    )
    assert [n.hostname for n in maint.nodes] == ["bravo"]
    page1 = await nodes.list_nodes(compute.ListNodesRequest(page_size=1), timeout=TIMEOUT)
    page2 = await nodes.list_nodes(
        compute.ListNodesRequest(page_size=1, page_token=page1.next_page_token), timeout=TIMEOUT
    )
    assert [n.hostname for n in page1.nodes + page2.nodes] == ["alpha", "bravo"]
    assert page2.next_page_token == ""
    await expect_error(
        nodes.list_nodes(compute.ListNodesRequest(page_token="garbage!"), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "page_token",
    )


async def test_maintenance_is_never_overridden_by_heartbeats(
    nodes: compute.NodeServiceStub, controller: Controller
) -> None:
    node = await nodes.register_node(register_request("maint"), timeout=TIMEOUT)
    disabled = await nodes.disable_node(
        compute.DisableNodeRequest(id=node.id, reason="firmware"), timeout=TIMEOUT
    )
    assert disabled.status.phase == NodePhase.MAINTENANCE
    assert disabled.status.error_message == "firmware"
    for _ in range(3):
        await nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node.id), timeout=TIMEOUT
        )
    controller.monitor.check()
    await asyncio.sleep(0.3)  # let a (wrong) transition write land if there were one
    still = await nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
    assert still.status.phase == NodePhase.MAINTENANCE
    enabled = await nodes.enable_node(compute.EnableNodeRequest(id=node.id), timeout=TIMEOUT)
    assert enabled.status.phase == NodePhase.READY
    await expect_error(
        nodes.enable_node(compute.EnableNodeRequest(id="ghost"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "ghost",
    )
    await expect_error(
        nodes.disable_node(compute.DisableNodeRequest(id="ghost"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "ghost",
    )
    await expect_error(
        nodes.disable_node(compute.DisableNodeRequest(), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "id",
    )


async def test_heartbeat_errors(nodes: compute.NodeServiceStub) -> None:
    await expect_error(
        nodes.update_heartbeat(compute.UpdateHeartbeatRequest(), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "node_id",
    )
    await expect_error(
        nodes.update_heartbeat(compute.UpdateHeartbeatRequest(node_id="ghost"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "ghost",
    )


async def test_heartbeat_reclaims_a_node_whose_status_changed_underneath(
    nodes: compute.NodeServiceStub, controller: Controller, store: EtcdStore
) -> None:
    """Heartbeats of a node already live and owned here skip reading its status; a change
    of that status (here another replica claiming it) must end the skipping."""
    node = await nodes.register_node(register_request("reclaimed"), timeout=TIMEOUT)
    key = keys.node_status(node.id)

    async def owner() -> str:
        await nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node.id), timeout=TIMEOUT
        )
        kv = await store.get(key)
        return str(json.loads(kv.value).get("ownerReplica", "")) if kv else ""

    await eventually(owner, lambda o: o == controller.replica_id, what="owned here")
    await owner()  # a heartbeat of a live node owned here: the skipping path

    kv = await store.get(key)
    assert kv is not None
    doc = json.loads(kv.value)
    doc["ownerReplica"] = "another-replica"
    claimed = await store.put(key, json.dumps(doc).encode())
    await controller.view.wait_for_revision(claimed, timeout=TIMEOUT)

    await eventually(owner, lambda o: o == controller.replica_id, what="reclaimed")


async def test_unary_heartbeat_returns_assignments_with_full_configs(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    node = await nodes.register_node(register_request("hb"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("hb-pool", nodes=[node.id]), timeout=TIMEOUT)
    resp = await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id), timeout=TIMEOUT
    )
    assert resp.acknowledged
    assert resp.heartbeat_interval_secs == 1
    assert resp.assigned_pool_ids == [pool.id]
    assert [p.spec.backend.local_dir.path for p in resp.assigned_pools] == ["/srv/pools/hb-pool"]


async def test_only_material_changes_are_written(
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
    controller: Controller,
    store: EtcdStore,
) -> None:
    node = await nodes.register_node(register_request("writer"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("w-pool", nodes=[node.id]), timeout=TIMEOUT)
    key = keys.host_status(pool.id, node.id)

    async def beat(used_gib: float, health: int = 1) -> int:
        await nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(
                node_id=node.id,
                storage_pools=[
                    report(pool.id, total=100 << 30, used=int(used_gib * 2**30), health=health)
                ],
            ),
            timeout=TIMEOUT,
        )
        await controller.committer.flushed(timeout=TIMEOUT)
        kv = await store.get(key)
        assert kv is not None
        return kv.mod_revision

    first = await beat(10)
    assert await beat(10) == first  # identical: no write
    assert await beat(10.5) == first  # drift below 1 % of 100 GiB: no write
    moved = await beat(12)  # 2 GiB > min(1 GiB, 1 GiB): write
    assert moved > first
    last = await beat(12, health=2)  # health change: write
    assert last > moved

    # Once the write comes back through the watch, the row is held once: decoded in the
    # view, with no raw value in the watch cache and no copy left in the intake.
    await controller.view.wait_for_revision(last, timeout=TIMEOUT)
    assert controller.intake.unconfirmed_writes == 0
    cached = controller.view.cache.get(key)
    assert cached is not None and cached.mod_revision == last and cached.value == b""
    status = controller.view.host_status(pool.id, node.id)
    assert status is not None and status.report.health.name == "DEGRADED"
    assert status.report.used_bytes == 12 << 30


async def test_pool_aggregates_and_goes_unknown_when_its_only_host_goes_silent(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    node = await nodes.register_node(register_request("lonely"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("agg", nodes=[node.id]), timeout=TIMEOUT)
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(pool.id)]),
        timeout=TIMEOUT,
    )

    def get() -> Awaitable[storage.StoragePool]:
        return pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)

    ready = await eventually(get, lambda p: p.status.phase == PoolPhase.READY, what="READY")
    assert ready.status.capacity.total_bytes == 100 << 30
    [row] = ready.status.host_statuses
    assert (row.node_id, row.health, row.stale, row.hostname) == (
        node.id,
        Health.HEALTHY,
        False,
        "lonely",
    )
    assert ready.status.healthy_node_ids == [node.id]
    # No more heartbeats: after the grace (3 s here) the row is stale, never HEALTHY-and-fresh.
    silent = await eventually(
        get, lambda p: p.status.phase == PoolPhase.UNKNOWN, timeout=15, what="UNKNOWN after grace"
    )
    [row] = silent.status.host_statuses
    assert row.stale
    assert silent.status.healthy_node_ids == []
    assert silent.status.capacity.total_bytes == 0  # a stale figure is never shown
    # The row turns stale at the grace; the node's transition follows within a check period.
    offline = await eventually(
        lambda: nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT),
        lambda n: n.status.phase == NodePhase.OFFLINE,
        what="OFFLINE",
    )
    assert [c.reason for c in offline.status.conditions][-1] == "HeartbeatTimeout"
    # One heartbeat brings it back.
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(pool.id)]),
        timeout=TIMEOUT,
    )
    await eventually(get, lambda p: p.status.phase == PoolPhase.READY, what="READY again")
    back = await nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
    assert back.status.phase == NodePhase.READY
    assert [c.reason for c in back.status.conditions][-1] == "HeartbeatRestored"


async def test_unreported_assigned_pool_is_unmounted_with_a_reason(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    node = await nodes.register_node(register_request("forgetful"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("forgotten", nodes=[node.id]), timeout=TIMEOUT)
    await nodes.update_heartbeat(compute.UpdateHeartbeatRequest(node_id=node.id), timeout=TIMEOUT)
    # Within its first interval (1 s here, plus a second) the host may not know of the pool
    # yet: PENDING. Then, with no further event, the omission counts.
    got = await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
        lambda p: p.status.phase == PoolPhase.ERROR,
        what="ERROR once the host had its interval",
    )
    [row] = got.status.host_statuses
    assert row.health == Health.UNMOUNTED
    assert "not reported" in row.error_message


async def _open_stream(channel: grpclib.client.Channel):  # type: ignore[no-untyped-def]
    return channel.request(
        "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
        grpclib.const.Cardinality.STREAM_STREAM,
        compute.UpdateHeartbeatRequest,
        compute.UpdateHeartbeatResponse,
        timeout=30,
    )


async def test_stream_rejects_unknown_node(channel: grpclib.client.Channel) -> None:
    with pytest.raises(grpclib.exceptions.GRPCError) as info:
        async with await _open_stream(channel) as stream:
            await stream.send_message(compute.UpdateHeartbeatRequest(node_id="ghost", sequence=1))
            await stream.recv_message()
    assert info.value.status == Status.NOT_FOUND
    assert "ghost" in (info.value.message or "")


async def test_stream_answers_and_pushes_assignment_changes(
    channel: grpclib.client.Channel,
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
    controller: Controller,
) -> None:
    node = await nodes.register_node(register_request("streamer"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("pushed"), timeout=TIMEOUT)
    async with await _open_stream(channel) as stream:
        await stream.send_message(compute.UpdateHeartbeatRequest(node_id=node.id, sequence=1))
        first = await stream.recv_message()
        assert first is not None and first.sequence == 1 and first.assigned_pool_ids == []
        assert not first.request_full_sync
        # Assigning the pool pushes the full definition at once, without a heartbeat.
        await pools.assign_pool_to_node(
            storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id=node.id), timeout=TIMEOUT
        )
        async with asyncio.timeout(TIMEOUT):
            pushed = await stream.recv_message()
        assert pushed is not None and pushed.unsolicited
        assert pushed.assigned_pool_ids == [pool.id]
        assert pushed.assigned_pools[0].spec.backend.local_dir.path == "/srv/pools/pushed"
        # A delta heartbeat is answered; definitions are not repeated when unchanged.
        await stream.send_message(
            compute.UpdateHeartbeatRequest(
                node_id=node.id, sequence=2, delta=True, storage_pools=[report(pool.id)]
            )
        )
        second = await stream.recv_message()
        assert second is not None and second.sequence == 2 and not second.unsolicited
        assert second.assigned_pool_ids == [pool.id] and second.assigned_pools == []
        # Unassigning pushes the empty set (upstream agents never detached on empty lists).
        await pools.unassign_pool_from_node(
            storage.UnassignPoolFromNodeRequest(pool_id=pool.id, node_id=node.id), timeout=TIMEOUT
        )
        async with asyncio.timeout(TIMEOUT):
            emptied = await stream.recv_message()
        assert emptied is not None and emptied.unsolicited and emptied.assigned_pool_ids == []
        await stream.end()

    # The stream's push callback is unregistered when it ends.
    async def open_streams() -> int:
        return controller.hub.open_streams

    await eventually(open_streams, lambda n: n == 0, what="stream unregistered")


async def test_delta_first_on_a_new_stream_asks_for_full_sync(
    channel: grpclib.client.Channel, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("resumer"), timeout=TIMEOUT)
    async with await _open_stream(channel) as stream:
        await stream.send_message(
            compute.UpdateHeartbeatRequest(node_id=node.id, sequence=7, delta=True)
        )
        resp = await stream.recv_message()
        assert resp is not None and resp.request_full_sync and resp.sequence == 7
        await stream.end()


async def test_every_row_of_a_host_is_accounted_for(
    channel: grpclib.client.Channel,
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
    controller: Controller,
    store: EtcdStore,
) -> None:
    """Full heartbeats report everything the host has, deltas what changed or went."""
    node = await nodes.register_node(register_request("accounted"), timeout=TIMEOUT)
    a = await pools.create_pool(create_request("acc-a", nodes=[node.id]), timeout=TIMEOUT)
    b = await pools.create_pool(create_request("acc-b", nodes=[node.id]), timeout=TIMEOUT)
    c = await pools.create_pool(create_request("acc-c"), timeout=TIMEOUT)  # not assigned

    async def rows() -> dict[str, tuple[str, str]]:
        await controller.committer.flushed(timeout=TIMEOUT)
        found = {}
        for pool in (a, b, c):
            kv = await store.get(keys.host_status(pool.id, node.id))
            if kv is not None:
                status = codec.decode_host_status(pool.id, node.id, kv.value)
                found[pool.name] = (status.report.health.name, status.report.error_message)
        return found

    # An unassigned pool named by its *name*, as upstream agents report discovered pools.
    full = [report(a.id), report(b.id), report("acc-c")]
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=full), timeout=TIMEOUT
    )
    healthy = ("HEALTHY", "")
    assert await rows() == {"acc-a": healthy, "acc-b": healthy, "acc-c": healthy}

    # A full heartbeat without B (assigned) and C (not assigned): B is not mounted there
    # any more, and the host let go of C.
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(a.id)]),
        timeout=TIMEOUT,
    )
    assert await rows() == {"acc-a": healthy, "acc-b": ("UNMOUNTED", NOT_REPORTED)}

    async with await _open_stream(channel) as stream:
        await stream.send_message(
            compute.UpdateHeartbeatRequest(node_id=node.id, sequence=1, storage_pools=full[:2])
        )
        assert await stream.recv_message() is not None
        assert await rows() == {"acc-a": healthy, "acc-b": healthy}
        # A delta lists nothing unchanged; what it removes is gone as in a full one.
        await stream.send_message(
            compute.UpdateHeartbeatRequest(
                node_id=node.id, sequence=2, delta=True, removed_pool_ids=[b.id]
            )
        )
        assert await stream.recv_message() is not None
        assert await rows() == {"acc-a": healthy, "acc-b": ("UNMOUNTED", NOT_REPORTED)}
        await stream.end()
