"""StoragePoolService over a real grpclib server on loopback, backed by a real etcd."""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpclib.client
import pytest
from grpclib.const import Status

from protos.google import protobuf as pb
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.engines.view import ClusterView
from qvdc.settings import EtcdSettings
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore
from qvdc.store.records import Compare, Op, TxnResult
from tests.fixtures.etcd import FaultyStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    controller_settings,
    create_request,
    eventually,
    expect_error,
    local_backend,
    nfs_backend,
    register_request,
    report,
)

Phase = storage.StoragePoolStatusPhase


async def test_create_returns_the_full_definition_and_stores_readable_json(
    pools: storage.StoragePoolServiceStub, store: EtcdStore
) -> None:
    created = await pools.create_pool(
        create_request("fast-nfs", backend=nfs_backend("10.0.0.7", "/exports/vm")),
        timeout=TIMEOUT,
    )
    assert created.id and created.name == "fast-nfs"
    # Upstream dropped the backend config on the way out; we return it in full.
    assert created.spec.backend.nfs.server == "10.0.0.7"
    assert created.spec.backend.nfs.export_path == "/exports/vm"
    assert created.status.phase == Phase.PENDING  # nobody assigned yet
    fetched = await pools.get_pool(storage.GetPoolRequest(id=created.id), timeout=TIMEOUT)
    assert fetched.spec.backend.nfs == created.spec.backend.nfs
    stored = await store.get(keys.pool(created.id))
    assert stored is not None
    doc = json.loads(stored.value)  # what `etcdctl get` shows: protobuf JSON
    assert doc["spec"]["backend"] == {
        "type": "NFS",
        "nfs": {"server": "10.0.0.7", "exportPath": "/exports/vm", "version": "4.1"},
    }
    name_index = await store.get(keys.pool_name("fast-nfs"))
    assert name_index is not None and name_index.value.decode() == created.id


@pytest.mark.parametrize(
    ("request_", "status", "names"),
    [
        pytest.param(create_request(""), Status.INVALID_ARGUMENT, ["name"], id="missing-name"),
        pytest.param(create_request("Bad_Name!"), Status.INVALID_ARGUMENT, ["name"], id="bad-name"),
        pytest.param(
            storage.CreatePoolRequest(name="nospec"),
            Status.INVALID_ARGUMENT,
            ["spec.backend"],
            id="no-backend",
        ),
        pytest.param(
            create_request("nfs-no-server", backend=nfs_backend(server="")),
            Status.INVALID_ARGUMENT,
            ["server"],
            id="nfs-without-server",
        ),
        pytest.param(
            create_request("nfs-relative", backend=nfs_backend(export="exports/a")),
            Status.INVALID_ARGUMENT,
            ["export"],
            id="nfs-relative-export",
        ),
        pytest.param(
            create_request("local-relative", backend=local_backend("relative/path")),
            Status.INVALID_ARGUMENT,
            ["path"],
            id="local-relative-path",
        ),
        pytest.param(
            create_request(
                "mismatch",
                backend=storage.StorageBackend(
                    type=storage.StorageBackendBackendType.NFS,
                    local_dir=storage.LocalDirConfig(path="/srv/a"),
                ),
            ),
            Status.INVALID_ARGUMENT,
            ["spec.backend"],
            id="config-does-not-match-type",
        ),
        pytest.param(
            create_request(
                "lvm",
                backend=storage.StorageBackend(
                    type=storage.StorageBackendBackendType.LOCAL_LVM,
                    local_lvm=storage.LocalLvmConfig(volume_group="vg0"),
                ),
            ),
            Status.FAILED_PRECONDITION,
            ["LOCAL_LVM"],
            id="unsupported-backend",
        ),
        pytest.param(
            create_request("ghost-node", nodes=["no-such-node"]),
            Status.NOT_FOUND,
            ["spec.assigned_node_ids[0]", "no-such-node"],
            id="unknown-node",
        ),
    ],
)
async def test_create_rejects_bad_input_naming_the_field(
    pools: storage.StoragePoolServiceStub,
    request_: storage.CreatePoolRequest,
    status: Status,
    names: list[str],
) -> None:
    await expect_error(pools.create_pool(request_, timeout=TIMEOUT), status, *names)
    listed = await pools.list_pools(storage.ListPoolsRequest(), timeout=TIMEOUT)
    assert listed.total_count == 0  # nothing half-created


async def test_duplicate_name_is_already_exists_and_name_is_free_after_delete(
    pools: storage.StoragePoolServiceStub,
) -> None:
    first = await pools.create_pool(create_request("dup"), timeout=TIMEOUT)
    await expect_error(
        pools.create_pool(create_request("dup"), timeout=TIMEOUT), Status.ALREADY_EXISTS, "name"
    )
    await pools.delete_pool(storage.DeletePoolRequest(id=first.id), timeout=TIMEOUT)
    await expect_error(
        pools.get_pool(storage.GetPoolRequest(id=first.id), timeout=TIMEOUT),
        Status.NOT_FOUND,
        first.id,
    )
    again = await pools.create_pool(create_request("dup"), timeout=TIMEOUT)
    assert again.id != first.id


async def test_get_and_delete_bad_ids(pools: storage.StoragePoolServiceStub) -> None:
    await expect_error(
        pools.get_pool(storage.GetPoolRequest(), timeout=TIMEOUT), Status.INVALID_ARGUMENT, "id"
    )
    await expect_error(
        pools.get_pool(storage.GetPoolRequest(id="nope"), timeout=TIMEOUT), Status.NOT_FOUND, "nope"
    )
    await expect_error(
        pools.delete_pool(storage.DeletePoolRequest(id="nope"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "nope",
    )
    await expect_error(
        pools.get_pool_metrics(storage.GetPoolMetricsRequest(id="nope"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "nope",
    )


async def test_list_paginates_in_name_order_with_opaque_tokens(
    pools: storage.StoragePoolServiceStub,
) -> None:
    names = [f"pool-{i}" for i in (4, 0, 3, 1, 2)]
    for name in names:
        await pools.create_pool(create_request(name), timeout=TIMEOUT)
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await pools.list_pools(
            storage.ListPoolsRequest(page_size=2, page_token=token), timeout=TIMEOUT
        )
        pages += 1
        assert page.total_count == 5
        seen += [p.name for p in page.pools]
        assert all(p.spec.backend.local_dir.path for p in page.pools)  # full definitions
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == sorted(names)
    await expect_error(
        pools.list_pools(storage.ListPoolsRequest(page_token="%%%"), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "page_token",
    )
    await expect_error(
        pools.list_pools(storage.ListPoolsRequest(page_token="Zm9vYmFy"), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "page_token",
    )
    await expect_error(
        pools.list_pools(storage.ListPoolsRequest(page_size=-1), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "page_size",
    )


async def test_list_filters_by_backend_including_the_zero_value(
    pools: storage.StoragePoolServiceStub,
) -> None:
    ceph = storage.StorageBackend(
        type=storage.StorageBackendBackendType.CEPH_RBD,
        ceph=storage.CephConfig(pool_name="rbd", monitors=["10.0.0.1:6789"], user="admin"),
    )
    await pools.create_pool(create_request("rbd-pool", backend=ceph), timeout=TIMEOUT)
    await pools.create_pool(create_request("dir-pool"), timeout=TIMEOUT)
    only_ceph = await pools.list_pools(
        storage.ListPoolsRequest(
            backend_type=storage.StorageBackendBackendType.CEPH_RBD, filter_backend_type=True
        ),
        timeout=TIMEOUT,
    )
    assert [p.name for p in only_ceph.pools] == ["rbd-pool"]
    # Upstream semantics kept: the zero value alone means "no filter".
    unfiltered = await pools.list_pools(storage.ListPoolsRequest(), timeout=TIMEOUT)
    assert unfiltered.total_count == 2
    only_dir = await pools.list_pools(
        storage.ListPoolsRequest(backend_type=storage.StorageBackendBackendType.LOCAL_DIR),
        timeout=TIMEOUT,
    )
    assert [p.name for p in only_dir.pools] == ["dir-pool"]


async def test_update_applies_the_mask_and_validates(
    pools: storage.StoragePoolServiceStub,
) -> None:
    pool = await pools.create_pool(create_request("upd"), timeout=TIMEOUT)
    updated = await pools.update_pool(
        storage.UpdatePoolRequest(
            id=pool.id, description="gold tier", update_mask=pb.FieldMask(paths=["description"])
        ),
        timeout=TIMEOUT,
    )
    assert updated.description == "gold tier"
    assert updated.spec.backend.local_dir.path == "/srv/pools/upd"  # untouched
    quota = await pools.update_pool(
        storage.UpdatePoolRequest(
            id=pool.id,
            spec=storage.StoragePoolSpec(backend=local_backend("/srv/pools/upd", capacity_gib=20)),
            update_mask=pb.FieldMask(paths=["spec.backend"]),
        ),
        timeout=TIMEOUT,
    )
    assert quota.spec.backend.local_dir.capacity_gib == 20
    assert quota.description == "gold tier"
    await expect_error(
        pools.update_pool(
            storage.UpdatePoolRequest(
                id=pool.id,
                spec=storage.StoragePoolSpec(backend=nfs_backend()),
                update_mask=pb.FieldMask(paths=["spec.backend"]),
            ),
            timeout=TIMEOUT,
        ),
        Status.FAILED_PRECONDITION,
        "spec.backend.type",
    )
    await expect_error(
        pools.update_pool(
            storage.UpdatePoolRequest(id=pool.id, update_mask=pb.FieldMask(paths=["bogus"])),
            timeout=TIMEOUT,
        ),
        Status.INVALID_ARGUMENT,
        "update_mask",
    )
    await expect_error(
        pools.update_pool(
            storage.UpdatePoolRequest(
                id=pool.id,
                spec=storage.StoragePoolSpec(backend=local_backend("not/absolute")),
                update_mask=pb.FieldMask(paths=["spec.backend"]),
            ),
            timeout=TIMEOUT,
        ),
        Status.INVALID_ARGUMENT,
        "path",
    )
    await expect_error(
        pools.update_pool(storage.UpdatePoolRequest(id="missing"), timeout=TIMEOUT),
        Status.NOT_FOUND,
        "missing",
    )
    final = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
    assert final.spec.backend.local_dir.capacity_gib == 20  # failed updates changed nothing


async def test_assign_and_unassign_keep_the_index_in_step(
    pools: storage.StoragePoolServiceStub, nodes: compute.NodeServiceStub, store: EtcdStore
) -> None:
    node = await nodes.register_node(register_request("host-a"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("shared", backend=nfs_backend()), timeout=TIMEOUT)
    assigned = await pools.assign_pool_to_node(
        storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id=node.id), timeout=TIMEOUT
    )
    assert assigned.spec.assigned_node_ids == [node.id]
    again = await pools.assign_pool_to_node(  # idempotent
        storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id=node.id), timeout=TIMEOUT
    )
    assert again.spec.assigned_node_ids == [node.id]
    assert await store.get(keys.assignment(node.id, pool.id)) is not None
    got = await nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
    assert got.status.assigned_pool_ids == [pool.id]

    unassigned = await pools.unassign_pool_from_node(
        storage.UnassignPoolFromNodeRequest(pool_id=pool.id, node_id=node.id), timeout=TIMEOUT
    )
    assert unassigned.spec.assigned_node_ids == []
    assert await store.get(keys.assignment(node.id, pool.id)) is None

    for call, status, name in [
        (
            pools.assign_pool_to_node(
                storage.AssignPoolToNodeRequest(node_id=node.id), timeout=TIMEOUT
            ),
            Status.INVALID_ARGUMENT,
            "pool_id",
        ),
        (
            pools.assign_pool_to_node(
                storage.AssignPoolToNodeRequest(pool_id=pool.id), timeout=TIMEOUT
            ),
            Status.INVALID_ARGUMENT,
            "node_id",
        ),
        (
            pools.assign_pool_to_node(
                storage.AssignPoolToNodeRequest(pool_id="ghost", node_id=node.id), timeout=TIMEOUT
            ),
            Status.NOT_FOUND,
            "ghost",
        ),
        (
            pools.assign_pool_to_node(
                storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id="ghost-node"),
                timeout=TIMEOUT,
            ),
            Status.NOT_FOUND,
            "ghost-node",
        ),
        (
            pools.unassign_pool_from_node(
                storage.UnassignPoolFromNodeRequest(pool_id="ghost", node_id=node.id),
                timeout=TIMEOUT,
            ),
            Status.NOT_FOUND,
            "ghost",
        ),
    ]:
        await expect_error(call, status, name)


async def test_delete_refuses_a_pool_with_volumes_unless_forced(
    pools: storage.StoragePoolServiceStub,
    nodes: compute.NodeServiceStub,
    store: EtcdStore,
    controller: Controller,
) -> None:
    node = await nodes.register_node(register_request("host-v"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("busy", nodes=[node.id]), timeout=TIMEOUT)
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(pool.id, volumes=3)]),
        timeout=TIMEOUT,
    )
    await controller.committer.flushed(timeout=TIMEOUT)
    await controller.view.wait_for_revision(await store.revision(), timeout=TIMEOUT)
    await expect_error(
        pools.delete_pool(storage.DeletePoolRequest(id=pool.id), timeout=TIMEOUT),
        Status.FAILED_PRECONDITION,
        "force",
        "3 volume",
    )
    await pools.delete_pool(storage.DeletePoolRequest(id=pool.id, force=True), timeout=TIMEOUT)
    # The host is live: the pool is DELETING, unassigned at once, until the host lets go.
    deleting = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
    assert deleting.status.phase == storage.StoragePoolStatusPhase.DELETING
    assert deleting.spec.assigned_node_ids == []
    assert await store.get(keys.assignment(node.id, pool.id)) is None
    await pools.delete_pool(storage.DeletePoolRequest(id=pool.id), timeout=TIMEOUT)  # no-op
    for call, field in (
        (pools.update_pool(storage.UpdatePoolRequest(id=pool.id, description="x")), "id"),
        (
            pools.assign_pool_to_node(
                storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id=node.id)
            ),
            "pool_id",
        ),
    ):
        await expect_error(call, Status.FAILED_PRECONDITION, field, "is being deleted")
    # The host's next full heartbeat no longer lists the pool: its row goes, then the pool.
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[]), timeout=TIMEOUT
    )

    async def remaining() -> list[str]:
        return [
            key
            for key in (
                keys.pool(pool.id),
                keys.pool_name("busy"),
                keys.pool_status(pool.id),
                keys.host_status(pool.id, node.id),
            )
            if await store.get(key) is not None
        ]

    await eventually(remaining, lambda left: left == [], timeout=10, what="the pool's keys gone")


class FinishedAtOnce(FaultyStore):
    """etcd as a replica sees it when the leader finishes a DELETING pool the moment it is
    marked (its live hosts never held it): right after the marking transaction the pool's
    keys go, and this replica's view has seen that before the call reads the pool again."""

    view: ClusterView | None = None

    async def txn(
        self,
        *,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        timeout: float | None = None,
    ) -> TxnResult:
        result = await super().txn(
            compares=compares, success=success, failure=failure, timeout=timeout
        )
        marked = [
            op.key
            for op in success
            if op.kind == "put"
            and op.key.startswith(keys.POOLS)
            and codec.DELETING_KEY.encode() in op.value
        ]
        if result.succeeded and marked and self.view is not None:
            name = json.loads(next(op.value for op in success if op.key == marked[0]))["name"]
            gone = await self.inner.txn(
                compares=[],
                success=[Op.delete(marked[0]), Op.delete(keys.pool_name(name))],
                timeout=timeout,
            )
            await self.view.wait_for_revision(gone.revision, timeout=TIMEOUT)
        return result


async def test_delete_succeeds_when_the_leader_finishes_it_before_the_call_returns(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    finished = FinishedAtOnce(store)
    controller = Controller(store=finished, settings=controller_settings(etcd_settings))
    finished.view = controller.view
    await controller.start()
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        nodes = compute.NodeServiceStub(channel, timeout=TIMEOUT)
        pools = storage.StoragePoolServiceStub(channel, timeout=TIMEOUT)
        node = await nodes.register_node(register_request("host-quick"))
        await nodes.update_heartbeat(compute.UpdateHeartbeatRequest(node_id=node.id))  # live
        pool = await pools.create_pool(create_request("quick", nodes=[node.id]))
        # DELETING (the host is live), then gone at once: the delete succeeded, it is no
        # NOT_FOUND for the pool it was asked to delete.
        await pools.delete_pool(storage.DeletePoolRequest(id=pool.id))
        await expect_error(
            pools.get_pool(storage.GetPoolRequest(id=pool.id)), Status.NOT_FOUND, "id"
        )
    finally:
        channel.close()
        await controller.stop()


async def test_metrics_follow_the_aggregate(
    pools: storage.StoragePoolServiceStub, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("host-m"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("metered", nodes=[node.id]), timeout=TIMEOUT)
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(
            node_id=node.id,
            storage_pools=[report(pool.id, total=50 << 30, used=5 << 30, volumes=2)],
        ),
        timeout=TIMEOUT,
    )
    metrics = await eventually(
        lambda: pools.get_pool_metrics(storage.GetPoolMetricsRequest(id=pool.id), timeout=TIMEOUT),
        lambda m: m.total_bytes == 50 << 30,
        what="metrics from the aggregate",
    )
    assert metrics.used_bytes == 5 << 30
    assert metrics.available_bytes == 45 << 30
    assert metrics.volume_count == 2


async def test_a_pool_document_over_its_bound_is_refused_before_etcd(
    pools: storage.StoragePoolServiceStub, store: EtcdStore
) -> None:
    """Every field within its own bound, the whole document over max_pool_document_bytes
    (64 KiB): INVALID_ARGUMENT naming the document and the limit, nothing stored."""
    host = ".".join(["a" * 60] * 4)  # a valid 243-character host name
    monitors = [f"{host}:{6789 + i}" for i in range(300)]  # about 75 KB of monitors
    ceph = storage.StorageBackend(
        type=storage.StorageBackendBackendType.CEPH_RBD,
        ceph=storage.CephConfig(pool_name="rbd", monitors=monitors, user="admin"),
    )
    before, _ = await store.get_prefix("", timeout=TIMEOUT)
    await expect_error(
        pools.create_pool(create_request("huge", backend=ceph), timeout=TIMEOUT),
        Status.INVALID_ARGUMENT,
        "pool",
        "65536 bytes",
        "max_pool_document_bytes",
    )
    after, _ = await store.get_prefix("", timeout=TIMEOUT)
    assert [(kv.key, kv.value) for kv in after if "election" not in kv.key] == [
        (kv.key, kv.value) for kv in before if "election" not in kv.key
    ]
