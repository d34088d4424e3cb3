"""Two controller replicas on one etcd: one leads the aggregator; when it stops,
the other takes over leadership and the orphaned nodes' monitoring with a
fresh grace (never marking a healthy fleet down because a replica went away)."""

from __future__ import annotations

from collections.abc import Awaitable

import grpclib.client

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore, KeyValue
from tests.qvdc.api.helpers import (
    TIMEOUT,
    create_request,
    eventually,
    register_request,
    report,
)

PoolPhase = storage.StoragePoolStatusPhase


async def test_leader_failover_adopts_nodes_with_a_fresh_grace(
    replicas: tuple[Controller, Controller], store: EtcdStore
) -> None:
    first, second = replicas
    assert first.election.is_leader and not second.election.is_leader
    ch1 = grpclib.client.Channel("127.0.0.1", first.port)
    ch2 = grpclib.client.Channel("127.0.0.1", second.port)
    try:
        nodes1 = compute.NodeServiceStub(ch1)
        nodes2 = compute.NodeServiceStub(ch2)
        pools2 = storage.StoragePoolServiceStub(ch2)
        node = await nodes1.register_node(register_request("roamer"), timeout=TIMEOUT)
        # Both replicas serve the API: a pool created through r2 is aggregated by r1.
        pool = await pools2.create_pool(create_request("ha", nodes=[node.id]), timeout=TIMEOUT)
        await nodes1.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(pool.id)]),
            timeout=TIMEOUT,
        )
        await eventually(
            lambda: pools2.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
            lambda p: p.status.phase == PoolPhase.READY,
            what="READY aggregated by the leader",
        )
        state = await store.get(keys.node_status(node.id))
        assert state is not None
        assert codec.decode_node_state(node.id, state.value).owner_replica == "r1"

        await first.stop()  # revokes its lease: replicas/r1 and the election key go
        await eventually(
            lambda: store.get(keys.ELECTION_AGGREGATOR),
            lambda kv: kv is not None and kv.value == b"r2",
            what="r2 leading",
        )
        # The node moves its heartbeats to r2 before the fresh grace runs out.
        await nodes2.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(pool.id)]),
            timeout=TIMEOUT,
        )

        def owner_and_live() -> Awaitable[KeyValue | None]:
            return store.get(keys.node_status(node.id))

        moved = await eventually(
            owner_and_live,
            lambda kv: (
                kv is not None and codec.decode_node_state(node.id, kv.value).owner_replica == "r2"
            ),
            what="node owned by r2",
        )
        assert moved is not None and codec.decode_node_state(node.id, moved.value).live
        got = await nodes2.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
        assert got.status.phase == compute.NodeStatusPhase.READY
        # And r2 now aggregates: a material change shows up in the pool.
        await nodes2.update_heartbeat(
            compute.UpdateHeartbeatRequest(
                node_id=node.id, storage_pools=[report(pool.id, health=2)]
            ),
            timeout=TIMEOUT,
        )
        await eventually(
            lambda: pools2.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
            lambda p: p.status.phase == PoolPhase.ERROR,  # its only host is DEGRADED
            what="aggregated by the new leader",
        )
    finally:
        ch1.close()
        ch2.close()


async def test_orphaned_silent_node_goes_offline_after_the_fresh_grace(
    replicas: tuple[Controller, Controller], store: EtcdStore
) -> None:
    first, second = replicas
    ch1 = grpclib.client.Channel("127.0.0.1", first.port)
    ch2 = grpclib.client.Channel("127.0.0.1", second.port)
    try:
        node = await compute.NodeServiceStub(ch1).register_node(
            register_request("orphan"), timeout=TIMEOUT
        )
        await first.stop()
        await eventually(
            lambda: store.get(keys.ELECTION_AGGREGATOR),
            lambda kv: kv is not None and kv.value == b"r2",
            what="r2 leading",
        )
        nodes2 = compute.NodeServiceStub(ch2)
        # Adopted, not marked down at once ...
        assert (
            await nodes2.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT)
        ).status.phase == compute.NodeStatusPhase.READY
        # ... but silent past the fresh grace (3 s here): OFFLINE.
        await eventually(
            lambda: nodes2.get_node(compute.GetNodeRequest(id=node.id), timeout=TIMEOUT),
            lambda n: n.status.phase == compute.NodeStatusPhase.OFFLINE,
            timeout=15,
            what="OFFLINE after the fresh grace",
        )
    finally:
        ch1.close()
        ch2.close()
