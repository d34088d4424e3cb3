"""Node administration (qvdc.api.node_admin) over a real grpclib server and a real etcd:
UpdateNode, UpdateLabels, AddTaint/RemoveTaint, DrainNode, DecommissionNode, and the
ListNodes role filters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import grpclib.client
import grpclib.const
import pytest
from grpclib.const import Status

from protos.google import protobuf as pb
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.api import auth
from qvdc.app import Controller
from qvdc.engines.catalog import Catalog
from qvdc.security import identity
from qvdc.store import codec, keys
from qvdc.store.etcd import Compare, EtcdStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    create_request,
    eventually,
    expect_error,
    register_request,
    report,
)

NodePhase = compute.NodeStatusPhase
Effect = compute.TaintEffect


def taint(key: str, value: str = "", effect: Effect = Effect.NO_SCHEDULE) -> compute.Taint:
    return compute.Taint(key=key, value=value, effect=effect)


async def _stored(store: EtcdStore, node_id: str) -> dict[str, Any]:
    kv = await store.get(keys.node(node_id), timeout=TIMEOUT)
    assert kv is not None
    return codec.loads(kv.value)


# --- UpdateNode ---------------------------------------------------------------------------


async def test_update_node_honours_the_mask_and_persists(
    nodes: compute.NodeServiceStub, store: EtcdStore
) -> None:
    node = await nodes.register_node(register_request("upd-1"), timeout=TIMEOUT)
    assert node.spec.scheduling.schedulable
    # Only the role: the scheduling in the request is ignored.
    got = await nodes.update_node(
        compute.UpdateNodeRequest(
            id=node.id,
            role=compute.NodeRole(storage=True),
            scheduling=compute.SchedulingConfig(schedulable=False, taints=[taint("x")]),
            update_mask=pb.FieldMask(paths=["role"]),
        ),
        timeout=TIMEOUT,
    )
    assert got.spec.role == compute.NodeRole(storage=True)
    assert got.spec.scheduling.schedulable and got.spec.scheduling.taints == []
    # Only schedulable: the taints given are ignored, the role stays.
    got = await nodes.update_node(
        compute.UpdateNodeRequest(
            id=node.id,
            scheduling=compute.SchedulingConfig(schedulable=False, taints=[taint("x")]),
            update_mask=pb.FieldMask(paths=["scheduling.schedulable"]),
        ),
        timeout=TIMEOUT,
    )
    assert not got.spec.scheduling.schedulable and got.spec.scheduling.taints == []
    assert got.spec.role == compute.NodeRole(storage=True)
    # Only the taints.
    got = await nodes.update_node(
        compute.UpdateNodeRequest(
            id=node.id,
            scheduling=compute.SchedulingConfig(
                schedulable=True, taints=[taint("gpu", "a100", Effect.NO_EXECUTE)]
            ),
            update_mask=pb.FieldMask(paths=["scheduling.taints"]),
        ),
        timeout=TIMEOUT,
    )
    assert not got.spec.scheduling.schedulable
    assert got.spec.scheduling.taints == [taint("gpu", "a100", Effect.NO_EXECUTE)]
    # Persisted in etcd, and GetNode / ListNodes show it.
    doc = await _stored(store, node.id)
    assert doc["spec"]["role"] == {"storage": True}
    assert doc["spec"]["scheduling"]["taints"][0]["key"] == "gpu"
    again = await nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
    assert again.spec == got.spec
    listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
    assert [n.spec for n in listed.nodes] == [got.spec]


async def test_update_node_with_an_empty_mask_updates_what_is_given(
    nodes: compute.NodeServiceStub,
) -> None:
    node = await nodes.register_node(register_request("upd-2"), timeout=TIMEOUT)
    got = await nodes.update_node(
        compute.UpdateNodeRequest(id=node.id, scheduling=compute.SchedulingConfig()),
        timeout=TIMEOUT,
    )
    assert not got.spec.scheduling.schedulable
    assert got.spec.role == node.spec.role  # not given: kept


@pytest.mark.parametrize(
    ("request_", "status", "names"),
    [
        pytest.param(
            compute.UpdateNodeRequest(
                role=compute.NodeRole(), update_mask=pb.FieldMask(paths=["role"])
            ),
            Status.INVALID_ARGUMENT,
            ("id",),
            id="no-id",
        ),
        pytest.param(
            compute.UpdateNodeRequest(
                id="ID", role=compute.NodeRole(), update_mask=pb.FieldMask(paths=["hostname"])
            ),
            Status.INVALID_ARGUMENT,
            ("update_mask.paths[0]", "hostname"),
            id="unknown-path",
        ),
        pytest.param(
            compute.UpdateNodeRequest(id="ID"),
            Status.INVALID_ARGUMENT,
            ("update_mask",),
            id="nothing-to-update",
        ),
        pytest.param(
            compute.UpdateNodeRequest(
                id="ID",
                scheduling=compute.SchedulingConfig(taints=[taint("a"), taint("a", "b")]),
            ),
            Status.INVALID_ARGUMENT,
            ("scheduling.taints[1].key",),
            id="duplicate-taint",
        ),
        pytest.param(
            compute.UpdateNodeRequest(
                id="ID", scheduling=compute.SchedulingConfig(taints=[taint("bad key")])
            ),
            Status.INVALID_ARGUMENT,
            ("scheduling.taints[0].key",),
            id="bad-taint-key",
        ),
        pytest.param(
            compute.UpdateNodeRequest(id="ghost", role=compute.NodeRole()),
            Status.NOT_FOUND,
            ("ghost",),
            id="unknown-node",
        ),
    ],
)
async def test_update_node_refusals(
    nodes: compute.NodeServiceStub,
    store: EtcdStore,
    request_: compute.UpdateNodeRequest,
    status: Status,
    names: tuple[str, ...],
) -> None:
    node = await nodes.register_node(register_request("upd-3"), timeout=TIMEOUT)
    if request_.id == "ID":
        request_.id = node.id
    before = await _stored(store, node.id)
    await expect_error(nodes.update_node(request_, timeout=TIMEOUT), status, *names)
    assert await _stored(store, node.id) == before


async def test_operator_fields_survive_re_registration(nodes: compute.NodeServiceStub) -> None:
    node = await nodes.register_node(register_request("upd-4"), timeout=TIMEOUT)
    await nodes.update_node(
        compute.UpdateNodeRequest(
            id=node.id,
            role=compute.NodeRole(storage=True),
            scheduling=compute.SchedulingConfig(schedulable=False, taints=[taint("t")]),
        ),
        timeout=TIMEOUT,
    )
    await nodes.update_labels(
        compute.UpdateLabelsRequest(node_id=node.id, add_labels={"tier": "gold"}), timeout=TIMEOUT
    )
    again = await nodes.register_node(register_request("upd-4"), timeout=TIMEOUT)  # rack=r1
    assert again.id == node.id
    assert again.labels == {"rack": "r1", "tier": "gold"}  # the operator's, not re-sent ones
    assert again.spec.role == compute.NodeRole(storage=True)
    assert not again.spec.scheduling.schedulable
    assert again.spec.scheduling.taints == [taint("t")]


async def test_register_keeps_taints_and_agent_endpoint_and_hardware(
    nodes: compute.NodeServiceStub,
) -> None:
    request = register_request("reg-1")
    request.taints = [taint("dedicated", "storage", Effect.PREFER_NO_SCHEDULE)]
    request.agent_endpoint = "http://10.1.0.5:8443"
    request.cpu_info = compute.CpuInfo(
        sockets=2, numa_nodes=[compute.NumaNodeInfo(node_id=1, cpus=[0, 1], memory_bytes=1 << 30)]
    )
    request.memory_info = compute.MemoryInfo(
        total_bytes=8 << 30, huge_pages=compute.HugePagesInfo(pages_2mb_total=512)
    )
    request.network_devices = [
        compute.NetworkDevice(name="eth0", sriov_capable=True, sriov_vfs_total=8, numa_node=1)
    ]
    got = await nodes.register_node(request, timeout=TIMEOUT)
    shown = await nodes.get_node(compute.GetNodeRequest(id=got.id), timeout=TIMEOUT)
    assert shown.spec.scheduling.taints == request.taints
    assert shown.annotations == {"qvdc.io/agent-endpoint": "http://10.1.0.5:8443"}
    assert shown.spec.cpu.numa_nodes[0].cpus == [0, 1]
    assert shown.spec.memory.huge_pages.pages_2mb_total == 512
    assert shown.spec.network[0].sriov_vfs_total == 8
    bad = register_request("reg-2")
    bad.taints = [taint("a"), taint("a")]
    await expect_error(
        nodes.register_node(bad, timeout=TIMEOUT), Status.INVALID_ARGUMENT, "taints[1].key"
    )
    bad = register_request("reg-3")
    bad.agent_endpoint = "http://x y"
    await expect_error(
        nodes.register_node(bad, timeout=TIMEOUT), Status.INVALID_ARGUMENT, "agent_endpoint"
    )


# --- labels and taints --------------------------------------------------------------------


async def test_update_labels_adds_removes_and_filters(nodes: compute.NodeServiceStub) -> None:
    a = await nodes.register_node(register_request("lab-a"), timeout=TIMEOUT)
    b = await nodes.register_node(register_request("lab-b"), timeout=TIMEOUT)
    got = await nodes.update_labels(
        compute.UpdateLabelsRequest(
            node_id=a.id, add_labels={"rack": "r9", "ssd": "yes"}, remove_labels=["zone", "none"]
        ),
        timeout=TIMEOUT,
    )
    assert got.labels == {"rack": "r9", "ssd": "yes"}
    listed = await nodes.list_nodes(
        compute.ListNodesRequest(labels={"rack": "r9"}), timeout=TIMEOUT
    )
    assert [n.id for n in listed.nodes] == [a.id]
    got = await nodes.update_labels(
        compute.UpdateLabelsRequest(node_id=a.id, remove_labels=["ssd"]), timeout=TIMEOUT
    )
    assert got.labels == {"rack": "r9"}
    await expect_error(
        nodes.update_labels(
            compute.UpdateLabelsRequest(node_id=b.id, add_labels={"k": "v"}, remove_labels=["k"]),
            timeout=TIMEOUT,
        ),
        Status.INVALID_ARGUMENT,
        "remove_labels[0]",
    )
    await expect_error(
        nodes.update_labels(
            compute.UpdateLabelsRequest(node_id=b.id, add_labels={"bad key": "v"}),
            timeout=TIMEOUT,
        ),
        Status.INVALID_ARGUMENT,
        "add_labels",
    )
    await expect_error(
        nodes.update_labels(
            compute.UpdateLabelsRequest(node_id=b.id, add_labels={f"k{i}": "v" for i in range(64)}),
            timeout=TIMEOUT,
        ),
        Status.INVALID_ARGUMENT,
        "add_labels",
    )
    assert (await nodes.get_node(compute.GetNodeRequest(id=b.id), timeout=TIMEOUT)).labels == (
        b.labels
    )


async def test_add_taint_replaces_by_key_and_remove_taint(nodes: compute.NodeServiceStub) -> None:
    node = await nodes.register_node(register_request("taint-1"), timeout=TIMEOUT)
    await nodes.add_taint(
        compute.AddTaintRequest(node_id=node.id, taint=taint("a", "1")), timeout=TIMEOUT
    )
    await nodes.add_taint(
        compute.AddTaintRequest(node_id=node.id, taint=taint("b", "2")), timeout=TIMEOUT
    )
    got = await nodes.add_taint(
        compute.AddTaintRequest(node_id=node.id, taint=taint("a", "3", Effect.NO_EXECUTE)),
        timeout=TIMEOUT,
    )
    assert got.spec.scheduling.taints == [taint("a", "3", Effect.NO_EXECUTE), taint("b", "2")]
    got = await nodes.remove_taint(
        compute.RemoveTaintRequest(node_id=node.id, taint_key="a"), timeout=TIMEOUT
    )
    assert got.spec.scheduling.taints == [taint("b", "2")]
    err = await expect_error(
        nodes.remove_taint(
            compute.RemoveTaintRequest(node_id=node.id, taint_key="a"), timeout=TIMEOUT
        ),
        Status.NOT_FOUND,
        "taint_key",
    )
    assert "'a'" in (err.message or "")
    await expect_error(
        nodes.add_taint(compute.AddTaintRequest(node_id=node.id), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "taint",
    )
    await expect_error(
        nodes.add_taint(compute.AddTaintRequest(node_id=node.id, taint=taint("")), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "taint.key",
    )


# --- ListNodes role filters -----------------------------------------------------------------


async def test_list_nodes_role_filters_combine_with_labels_and_phases(
    nodes: compute.NodeServiceStub,
) -> None:
    compute_node = await nodes.register_node(register_request("role-c"), timeout=TIMEOUT)
    storage_req = register_request("role-s")
    storage_req.role = compute.NodeRole(storage=True, compute=True)
    storage_node = await nodes.register_node(storage_req, timeout=TIMEOUT)
    cp = await nodes.register_node(register_request("role-p"), timeout=TIMEOUT)
    await nodes.update_node(
        compute.UpdateNodeRequest(id=cp.id, role=compute.NodeRole(control_plane=True)),
        timeout=TIMEOUT,
    )

    async def ids(**kw: Any) -> list[str]:
        got = await nodes.list_nodes(compute.ListNodesRequest(**kw), timeout=TIMEOUT)
        return [n.id for n in got.nodes]

    assert await ids(compute_only=True) == [compute_node.id, storage_node.id]
    assert await ids(storage_only=True) == [storage_node.id]
    assert await ids(control_plane_only=True) == [cp.id]
    assert await ids(compute_only=True, storage_only=True) == [storage_node.id]
    assert await ids(compute_only=True, control_plane_only=True) == []
    assert await ids(compute_only=True, labels={"rack": "nope"}) == []
    await nodes.drain_node(compute.DrainNodeRequest(id=compute_node.id), timeout=TIMEOUT)
    assert await ids(compute_only=True, phases=[NodePhase.DRAINING]) == [compute_node.id]
    paged = await nodes.list_nodes(
        compute.ListNodesRequest(compute_only=True, page_size=1), timeout=TIMEOUT
    )
    assert paged.total_count == 2 and len(paged.nodes) == 1 and paged.next_page_token


# --- DrainNode ------------------------------------------------------------------------------


async def test_drain_blocks_new_assignments_and_detaches_nothing(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub, store: EtcdStore
) -> None:
    node = await nodes.register_node(register_request("drain-1"), timeout=TIMEOUT)
    kept = await pools.create_pool(create_request("kept", nodes=[node.id]), timeout=TIMEOUT)
    other = await pools.create_pool(create_request("other"), timeout=TIMEOUT)
    drained = await nodes.drain_node(
        compute.DrainNodeRequest(id=node.id, grace_period_sec=30), timeout=TIMEOUT
    )
    assert drained.node.status.phase == NodePhase.DRAINING
    assert drained.migrated_vm_ids == [] and drained.stopped_vm_ids == []
    assert drained.node.status.assigned_pool_ids == [kept.id]  # nothing detached
    before = await store.get(keys.pool(other.id), timeout=TIMEOUT)
    err = await expect_error(
        pools.assign_pool_to_node(
            storage.AssignPoolToNodeRequest(pool_id=other.id, node_id=node.id), timeout=TIMEOUT
        ),
        Status.FAILED_PRECONDITION,
        "node_id",
    )
    assert "DRAINING" in (err.message or "") and "drain-1" in (err.message or "")
    assert await store.get(keys.pool(other.id), timeout=TIMEOUT) == before
    # CreatePool and UpdatePool naming it are refused the same way.
    await expect_error(
        pools.create_pool(create_request("new", nodes=[node.id]), timeout=TIMEOUT),
        Status.FAILED_PRECONDITION,
        "spec.assigned_node_ids[0]",
    )
    # A heartbeat does not end DRAINING; EnableNode does.
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(kept.id)]),
        timeout=TIMEOUT,
    )
    got = await nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
    assert got.status.phase == NodePhase.DRAINING
    assert any(c.type == "Draining" for c in got.status.conditions)
    enabled = await nodes.enable_node(compute.EnableNodeRequest(id=node.id), timeout=TIMEOUT)
    assert enabled.status.phase == NodePhase.READY
    await pools.assign_pool_to_node(
        storage.AssignPoolToNodeRequest(pool_id=other.id, node_id=node.id), timeout=TIMEOUT
    )


async def test_maintenance_blocks_new_assignments_too(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    node = await nodes.register_node(register_request("maint-1"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("m-pool"), timeout=TIMEOUT)
    await nodes.disable_node(compute.DisableNodeRequest(id=node.id, reason="swap"), timeout=TIMEOUT)
    err = await expect_error(
        pools.assign_pool_to_node(
            storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id=node.id), timeout=TIMEOUT
        ),
        Status.FAILED_PRECONDITION,
        "node_id",
    )
    assert "MAINTENANCE" in (err.message or "")
    # Draining a node in maintenance moves it to DRAINING; drain again is a no-op.
    await nodes.drain_node(compute.DrainNodeRequest(id=node.id), timeout=TIMEOUT)
    again = await nodes.drain_node(compute.DrainNodeRequest(id=node.id), timeout=TIMEOUT)
    assert again.node.status.phase == NodePhase.DRAINING
    await expect_error(
        nodes.drain_node(
            compute.DrainNodeRequest(id=node.id, grace_period_sec=-1), timeout=TIMEOUT
        ),
        Status.INVALID_ARGUMENT,
        "grace_period_sec",
    )


# --- DecommissionNode -----------------------------------------------------------------------


async def test_decommission_is_refused_while_pools_are_assigned(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub, store: EtcdStore
) -> None:
    node = await nodes.register_node(register_request("dec-1"), timeout=TIMEOUT)
    await pools.create_pool(create_request("dec-pool-a", nodes=[node.id]), timeout=TIMEOUT)
    await pools.create_pool(create_request("dec-pool-b", nodes=[node.id]), timeout=TIMEOUT)
    before = await store.get(keys.node(node.id), timeout=TIMEOUT)
    err = await expect_error(
        nodes.decommission_node(compute.DecommissionNodeRequest(id=node.id), timeout=TIMEOUT),
        Status.FAILED_PRECONDITION,
        "force",
    )
    assert "dec-pool-a" in (err.message or "") and "dec-pool-b" in (err.message or "")
    assert await store.get(keys.node(node.id), timeout=TIMEOUT) == before
    await expect_error(
        nodes.decommission_node(compute.DecommissionNodeRequest(id="ghost"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "id",
    )


async def test_forced_decommission_unassigns_removes_and_ends_the_stream(
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
    store: EtcdStore,
    channel: grpclib.client.Channel,
    controller: Controller,
) -> None:
    node = await nodes.register_node(register_request("dec-2"), timeout=TIMEOUT)
    keep = await nodes.register_node(register_request("dec-keep"), timeout=TIMEOUT)
    pool = await pools.create_pool(
        create_request("dec-shared", nodes=[node.id, keep.id]), timeout=TIMEOUT
    )
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=keep.id, storage_pools=[report(pool.id)]),
        timeout=TIMEOUT,
    )
    with pytest.raises(grpclib.exceptions.GRPCError) as ended:
        async with channel.request(
            "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
            grpclib.const.Cardinality.STREAM_STREAM,
            compute.UpdateHeartbeatRequest,
            compute.UpdateHeartbeatResponse,
            timeout=30,
        ) as stream:
            await stream.send_message(
                compute.UpdateHeartbeatRequest(
                    node_id=node.id, sequence=1, storage_pools=[report(pool.id)]
                )
            )
            assert (await stream.recv_message()) is not None
            await eventually(
                lambda: pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
                lambda p: len(p.status.host_statuses) == 2,
                what="both hosts' rows",
            )
            await nodes.decommission_node(
                compute.DecommissionNodeRequest(id=node.id, force=True), timeout=TIMEOUT
            )
            async with asyncio.timeout(TIMEOUT):
                while await stream.recv_message() is not None:
                    pass
    assert ended.value.status == Status.NOT_FOUND
    assert "decommissioned" in (ended.value.message or "")
    await expect_error(
        nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT), Status.NOT_FOUND, "id"
    )
    listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
    assert [n.id for n in listed.nodes] == [keep.id]
    got = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
    assert got.spec.assigned_node_ids == [keep.id]
    # No key of the node is left.
    for prefix in (
        keys.NODES,
        keys.NODE_NAMES,
        keys.NODE_STATUS,
        keys.ASSIGNMENTS,
        keys.HOST_STATUS,
    ):
        items, _ = await store.get_prefix(prefix, timeout=TIMEOUT)
        left = [kv.key for kv in items]
        assert not [k for k in left if node.id in k or k.endswith("/dec-2")], left
    # The pool's aggregate recomputes without the node's row.
    await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
        lambda p: [h.node_id for h in p.status.host_statuses] == [keep.id],
        what="the aggregate without the decommissioned host",
    )
    # Heartbeats of the node are refused; registering the hostname makes a new node.
    await expect_error(
        nodes.update_heartbeat(compute.UpdateHeartbeatRequest(node_id=node.id), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "node_id",
    )
    again = await nodes.register_node(register_request("dec-2"), timeout=TIMEOUT)
    assert again.id != node.id
    assert not controller.monitor.is_live(node.id)


# --- who may call them ----------------------------------------------------------------------

ADMIN_RPCS = [
    "UpdateNode",
    "UpdateLabels",
    "AddTaint",
    "RemoveTaint",
    "DrainNode",
    "DecommissionNode",
]


@pytest.mark.parametrize("rpc", ADMIN_RPCS)
def test_operator_admins_only(rpc: str) -> None:
    path = "/limiquantix.compute.v1.NodeService/" + rpc
    assert auth.access(path) is auth.Access.WRITE
    p = auth.Policy(
        enabled=True, hostname_of={"id-a": "host-a"}.get, node_of={"host-a": "id-a"}.get
    )
    p.authorize(identity.operator("ada", "admin"), path)
    for who, said in (
        (identity.node("host-a"), "needs an operator"),  # even about itself
        (identity.operator("vic", "viewer"), "needs role admin"),
    ):
        with pytest.raises(auth.Denied) as caught:
            p.authorize(who, path, compute.DrainNodeRequest(id="id-a"))
        assert caught.value.status is Status.PERMISSION_DENIED
        assert said in (caught.value.message or "")


async def test_each_change_writes_an_audit_line(
    nodes: compute.NodeServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    node = await nodes.register_node(register_request("audit-1"), timeout=TIMEOUT)
    caplog.set_level("INFO")
    await nodes.update_labels(
        compute.UpdateLabelsRequest(node_id=node.id, add_labels={"a": "b"}), timeout=TIMEOUT
    )
    await nodes.add_taint(
        compute.AddTaintRequest(node_id=node.id, taint=taint("t")), timeout=TIMEOUT
    )
    await nodes.remove_taint(
        compute.RemoveTaintRequest(node_id=node.id, taint_key="t"), timeout=TIMEOUT
    )
    await nodes.update_node(
        compute.UpdateNodeRequest(id=node.id, role=compute.NodeRole(storage=True)), timeout=TIMEOUT
    )
    await nodes.drain_node(compute.DrainNodeRequest(id=node.id), timeout=TIMEOUT)
    await nodes.decommission_node(compute.DecommissionNodeRequest(id=node.id), timeout=TIMEOUT)
    audited = [r.getMessage() for r in caplog.records if r.getMessage().startswith("audit: ")]
    for rpc in ADMIN_RPCS:
        assert [m for m in audited if f": {rpc} node {node.id}" in m], (rpc, audited)


async def test_a_drain_landing_between_the_check_and_the_write_wins(
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
    store: EtcdStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: the drain is made to land right after AssignPoolToNode checked the
    node's phase (READY) and before its transaction; the transaction's compare on the
    node's status fails, the retry sees DRAINING and refuses."""
    node = await nodes.register_node(register_request("race-1"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("race-pool"), timeout=TIMEOUT)
    checked = Catalog._require_nodes
    calls: list[str] = []

    async def check_then_drain(
        self: Catalog, node_ids: Sequence[str], *, field: str
    ) -> list[Compare]:
        compares = await checked(self, node_ids, field=field)
        calls.append(field)
        # AssignPoolToNode checks the node (node_id), then update_pool checks the nodes it
        # adds (spec.assigned_node_ids) right before its transaction: drain there.
        if calls == ["node_id", "spec.assigned_node_ids"]:
            await self.set_operator_phase(node.id, maintenance=False, reason="", draining=True)
        return compares

    monkeypatch.setattr(Catalog, "_require_nodes", check_then_drain)
    before = await store.get(keys.pool(pool.id), timeout=TIMEOUT)
    await expect_error(
        pools.assign_pool_to_node(
            storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id=node.id), timeout=TIMEOUT
        ),
        Status.FAILED_PRECONDITION,
        "DRAINING",
    )
    assert calls == ["node_id", "spec.assigned_node_ids"]  # the third check refused
    assert await store.get(keys.pool(pool.id), timeout=TIMEOUT) == before


async def test_a_concurrent_write_to_the_node_is_re_read_not_lost(
    nodes: compute.NodeServiceStub, store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: another writer changes the node record between UpdateLabels'
    read and its write; the compare fails, the change is re-applied on the new record."""
    node = await nodes.register_node(register_request("cas-1"), timeout=TIMEOUT)
    real_txn = Catalog._txn
    rivals: list[bytes] = []

    async def rival_first(self: Catalog, *, compares: list[Compare], success: list[Any]) -> Any:
        if not rivals:
            kv = await store.get(keys.node(node.id), timeout=TIMEOUT)
            assert kv is not None
            rival = dict(codec.loads(kv.value), annotations={"rival": "was here"})
            rivals.append(codec.dumps(rival))
            await store.put(keys.node(node.id), rivals[0], timeout=TIMEOUT)
        return await real_txn(self, compares=compares, success=success)

    monkeypatch.setattr(Catalog, "_txn", rival_first)
    got = await nodes.update_labels(
        compute.UpdateLabelsRequest(node_id=node.id, add_labels={"mine": "1"}), timeout=TIMEOUT
    )
    assert rivals
    assert got.labels == {"rack": "r1", "mine": "1"}
    assert got.annotations == {"rival": "was here"}  # the rival's write was kept


async def test_two_decommissions_at_once_one_wins(
    nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    node = await nodes.register_node(register_request("twice-1"), timeout=TIMEOUT)
    many = [
        await pools.create_pool(create_request(f"many-{i:02d}", nodes=[node.id]), timeout=TIMEOUT)
        for i in range(12)
    ]
    err = await expect_error(
        nodes.decommission_node(compute.DecommissionNodeRequest(id=node.id), timeout=TIMEOUT),
        Status.FAILED_PRECONDITION,
        "'twice-1'",
        "12 pool(s)",
        "'many-00'",
        "and 2 more",
    )
    assert "many-11" not in (err.message or "")  # bounded: ten names at most
    results = await asyncio.gather(
        nodes.decommission_node(
            compute.DecommissionNodeRequest(id=node.id, force=True), timeout=TIMEOUT
        ),
        nodes.decommission_node(
            compute.DecommissionNodeRequest(id=node.id, force=True), timeout=TIMEOUT
        ),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) <= 1, failures
    for failure in failures:
        assert isinstance(failure, grpclib.exceptions.GRPCError)
        assert failure.status in (Status.NOT_FOUND, Status.ABORTED), failure
    for pool in many:
        got = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
        assert got.spec.assigned_node_ids == []
    await expect_error(
        nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT), Status.NOT_FOUND
    )


async def test_watchers_see_each_change_and_the_decommission(
    nodes: compute.NodeServiceStub,
) -> None:
    node = await nodes.register_node(register_request("watched-1"), timeout=TIMEOUT)
    updates: asyncio.Queue[compute.NodeUpdate] = asyncio.Queue()

    async def read() -> None:
        async for update in nodes.watch_nodes(compute.WatchNodesRequest(), timeout=60):
            await updates.put(update)

    reader = asyncio.create_task(read())

    async def until(check: Any) -> compute.NodeUpdate:
        async with asyncio.timeout(TIMEOUT):
            while True:
                update = await updates.get()
                if check(update):
                    return update

    Kind = compute.NodeUpdateUpdateType
    try:
        await until(lambda u: u.type == Kind.ADDED and u.node.id == node.id)
        await nodes.update_labels(
            compute.UpdateLabelsRequest(node_id=node.id, add_labels={"w": "1"}), timeout=TIMEOUT
        )
        await until(lambda u: u.type == Kind.MODIFIED and u.node.labels.get("w") == "1")
        await nodes.add_taint(
            compute.AddTaintRequest(node_id=node.id, taint=taint("wt")), timeout=TIMEOUT
        )
        await until(
            lambda u: (
                u.type == Kind.MODIFIED and [t.key for t in u.node.spec.scheduling.taints] == ["wt"]
            )
        )
        await nodes.drain_node(compute.DrainNodeRequest(id=node.id), timeout=TIMEOUT)
        await until(lambda u: u.type == Kind.MODIFIED and u.node.status.phase == NodePhase.DRAINING)
        await nodes.decommission_node(compute.DecommissionNodeRequest(id=node.id), timeout=TIMEOUT)
        await until(lambda u: u.type == Kind.DELETED and u.node.id == node.id)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def test_a_host_row_landing_just_after_the_removal_is_swept(
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
    store: EtcdStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injection: a report of the node still in a group commit lands right after
    the removal's transaction; the decommission sweeps it before answering."""
    node = await nodes.register_node(register_request("late-1"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("late-pool"), timeout=TIMEOUT)
    real_txn = Catalog._txn
    row = keys.host_status(pool.id, node.id)
    landed: list[str] = []

    async def then_a_late_row(self: Catalog, *, compares: list[Compare], success: list[Any]) -> Any:
        result = await real_txn(self, compares=compares, success=success)
        removes = any(op.kind == "delete" and op.key == keys.node(node.id) for op in success)
        if result.succeeded and removes and not landed:
            landed.append(row)
            await store.put(row, b'{"health": "HEALTHY"}', timeout=TIMEOUT)
        return result

    monkeypatch.setattr(Catalog, "_txn", then_a_late_row)
    await nodes.decommission_node(compute.DecommissionNodeRequest(id=node.id), timeout=TIMEOUT)
    assert landed
    assert await store.get(row, timeout=TIMEOUT) is None
