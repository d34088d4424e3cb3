"""Node administration across two controller replicas on one etcd: a drain through one
replica stops an assignment asked of the other right after, and a decommission through
one ends the node's heartbeat stream held by the other (NOT_FOUND)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import grpclib.client
import grpclib.const
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    controller_settings,
    create_request,
    expect_error,
    register_request,
    report,
)


@pytest.fixture
async def two(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> AsyncIterator[tuple[grpclib.client.Channel, grpclib.client.Channel]]:
    base = controller_settings(etcd_settings)
    first = Controller(store=store, settings=dataclasses.replace(base, replica_id="r1"))
    second_store = await EtcdStore.connect(settings=etcd_settings)
    second = Controller(store=second_store, settings=dataclasses.replace(base, replica_id="r2"))
    await first.start()
    await second.start()
    ch1 = grpclib.client.Channel("127.0.0.1", first.port)
    ch2 = grpclib.client.Channel("127.0.0.1", second.port)
    try:
        yield ch1, ch2
    finally:
        ch1.close()
        ch2.close()
        await second.stop()
        await first.stop()
        await second_store.close()


async def test_drain_on_one_replica_refuses_assignment_on_the_other(
    two: tuple[grpclib.client.Channel, grpclib.client.Channel],
) -> None:
    ch1, ch2 = two
    nodes1, pools2 = compute.NodeServiceStub(ch1), storage.StoragePoolServiceStub(ch2)
    node = await nodes1.register_node(register_request("x-drain"), timeout=TIMEOUT)
    pool = await pools2.create_pool(create_request("x-pool"), timeout=TIMEOUT)
    await pools2.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
    await nodes1.drain_node(compute.DrainNodeRequest(id=node.id), timeout=TIMEOUT)
    # At once, without waiting for replica 2's view.
    await expect_error(
        pools2.assign_pool_to_node(
            storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id=node.id), timeout=TIMEOUT
        ),
        Status.FAILED_PRECONDITION,
        "DRAINING",
    )


async def test_decommission_on_one_replica_ends_the_stream_on_the_other(
    two: tuple[grpclib.client.Channel, grpclib.client.Channel],
) -> None:
    ch1, ch2 = two
    nodes1 = compute.NodeServiceStub(ch1)
    node = await nodes1.register_node(register_request("x-dec"), timeout=TIMEOUT)
    with pytest.raises(GRPCError) as ended:
        async with ch2.request(
            "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
            grpclib.const.Cardinality.STREAM_STREAM,
            compute.UpdateHeartbeatRequest,
            compute.UpdateHeartbeatResponse,
            timeout=30,
        ) as stream:
            await stream.send_message(
                compute.UpdateHeartbeatRequest(node_id=node.id, sequence=1, storage_pools=[])
            )
            assert (await stream.recv_message()) is not None
            await nodes1.decommission_node(
                compute.DecommissionNodeRequest(id=node.id), timeout=TIMEOUT
            )
            async with asyncio.timeout(TIMEOUT):
                while await stream.recv_message() is not None:
                    await stream.send_message(
                        compute.UpdateHeartbeatRequest(
                            node_id=node.id, sequence=2, delta=True, storage_pools=[report("p")]
                        )
                    )
    assert ended.value.status is Status.NOT_FOUND
    assert "decommissioned" in (ended.value.message or "")
