"""End to end: draining and decommissioning a host with a real node daemon running.

A real controller (real etcd, grpclib on loopback) and a real ``python -m node`` process
with a local-directory pool. DrainNode leaves the host's pool mounted and HEALTHY through
its heartbeats while a second pool cannot be assigned to it; EnableNode ends DRAINING.
A forced DecommissionNode unassigns the pool and removes the host: its stream ends
NOT_FOUND, the daemon registers again (docs/operations.md: stop it first) as a new node
with a new id and no pools, and detaches the pool it had.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpclib.client
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from tests.e2e.test_e2e_local_pools import spawn_node  # noqa: F401  (fixture)
from tests.qvdc.api.helpers import TIMEOUT, controller_settings, eventually

pytestmark = pytest.mark.e2e

Health = storage.PoolHostStatusHealth
NodePhase = compute.NodeStatusPhase
Spawn = Callable[[str], tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=controller_settings(etcd_settings, grace=3.0))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def _local_pool(name: str, nodes: list[str]) -> storage.CreatePoolRequest:
    return storage.CreatePoolRequest(
        name=name,
        spec=storage.StoragePoolSpec(
            backend=storage.StorageBackend(
                type=storage.StorageBackendBackendType.LOCAL_DIR,
                local_dir=storage.LocalDirConfig(),  # <pools_root>/<pool_id> on the host
            ),
            assigned_node_ids=nodes,
        ),
    )


async def test_drain_then_decommission_a_running_host(
    controller: Controller,
    spawn_node: Spawn,  # noqa: F811
) -> None:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    nodes = compute.NodeServiceStub(channel)
    pools = storage.StoragePoolServiceStub(channel)
    try:
        proc, home = spawn_node("host-d")

        async def host_ids() -> list[str]:
            listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
            return [n.id for n in listed.nodes if n.hostname == "host-d"]

        [node_id] = await eventually(host_ids, lambda ids: len(ids) == 1, timeout=30)
        pool = await pools.create_pool(_local_pool("kept", [node_id]), timeout=TIMEOUT)
        other = await pools.create_pool(_local_pool("other", []), timeout=TIMEOUT)

        def get() -> Awaitable[storage.StoragePool]:
            return pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)

        await eventually(
            get,
            lambda p: [r.health for r in p.status.host_statuses] == [Health.HEALTHY],
            timeout=30,
            what="the host's row HEALTHY",
        )
        mount = home / "pools" / pool.id

        # Drain: the pool stays mounted and HEALTHY while heartbeats flow; no new pool.
        drained = await nodes.drain_node(compute.DrainNodeRequest(id=node_id), timeout=TIMEOUT)
        assert drained.node.status.phase == NodePhase.DRAINING
        await asyncio.sleep(2.5)  # a few heartbeats (interval 1 s)
        got = await nodes.get_node(compute.GetNodeRequest(id=node_id), timeout=TIMEOUT)
        assert got.status.phase == NodePhase.DRAINING
        row = (await get()).status.host_statuses[0]
        assert row.health == Health.HEALTHY and not row.stale
        assert await asyncio.to_thread(mount.is_dir)
        with pytest.raises(GRPCError) as refused:
            await pools.assign_pool_to_node(
                storage.AssignPoolToNodeRequest(pool_id=other.id, node_id=node_id), timeout=TIMEOUT
            )
        assert refused.value.status == Status.FAILED_PRECONDITION
        enabled = await nodes.enable_node(compute.EnableNodeRequest(id=node_id), timeout=TIMEOUT)
        assert enabled.status.phase == NodePhase.READY

        # Decommission, forced: unassigned, removed; the running daemon comes back as new.
        with pytest.raises(GRPCError) as busy:
            await nodes.decommission_node(
                compute.DecommissionNodeRequest(id=node_id), timeout=TIMEOUT
            )
        assert busy.value.status == Status.FAILED_PRECONDITION and "kept" in (
            busy.value.message or ""
        )
        await nodes.decommission_node(
            compute.DecommissionNodeRequest(id=node_id, force=True), timeout=TIMEOUT
        )
        [new_id] = await eventually(
            host_ids, lambda ids: len(ids) == 1 and ids[0] != node_id, timeout=30
        )
        again = await nodes.get_node(compute.GetNodeRequest(id=new_id), timeout=TIMEOUT)
        assert again.status.assigned_pool_ids == []
        after = await eventually(
            get,
            lambda p: p.spec.assigned_node_ids == [] and p.status.host_statuses == [],
            timeout=20,
            what="the pool without the host and without its row",
        )
        assert after.spec.assigned_node_ids == []
        # The row went with the removal itself; the daemon detaches only once it has
        # registered again and heard it has no pools, which may come a moment later.
        await eventually(
            lambda: asyncio.to_thread((home / "node.log").read_text, errors="replace"),
            lambda log: f"detached pool {pool.id}" in log,
            timeout=20,
            what="the daemon detaching the pool",
        )
        assert proc.poll() is None  # the daemon kept running throughout
    finally:
        channel.close()
