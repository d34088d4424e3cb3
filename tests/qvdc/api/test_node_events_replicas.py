"""Two replicas on one etcd: a node's transition is stored once, by the replica that judged
it, and streamed by the other; its metrics are on the replica its heartbeats reach, and the
other one says which."""

from __future__ import annotations

import asyncio

import grpclib.client
from grpclib.const import Status

from protos.limiquantix.compute import v1 as compute
from qvdc.app import Controller
from tests.qvdc.api.helpers import (
    TIMEOUT,
    expect_error,
    register_request,
)


async def test_one_event_per_transition_and_metrics_where_the_heartbeats_are(
    replicas: tuple[Controller, Controller],
) -> None:
    first, second = replicas
    ch1 = grpclib.client.Channel("127.0.0.1", first.port)
    ch2 = grpclib.client.Channel("127.0.0.1", second.port)
    try:
        nodes1, nodes2 = compute.NodeServiceStub(ch1), compute.NodeServiceStub(ch2)
        node = await nodes2.register_node(register_request("roamer"), timeout=TIMEOUT)
        keeper = await nodes2.register_node(register_request("keeper"), timeout=TIMEOUT)
        beat = compute.UpdateHeartbeatRequest(node_id=node.id, cpu_usage_percent=42.0)
        await nodes2.update_heartbeat(beat, timeout=TIMEOUT)
        assert (
            await nodes2.get_node_metrics(compute.GetNodeMetricsRequest(id=node.id))
        ).cpu_usage_percent == 42.0
        error = await expect_error(
            nodes1.get_node_metrics(compute.GetNodeMetricsRequest(id=node.id), timeout=TIMEOUT),
            Status.UNAVAILABLE,
            "r2",
        )
        assert "heartbeats to replica r2" in (error.message or "")

        stream = nodes1.stream_events(compute.StreamEventsRequest(node_id=node.id))
        marker = await asyncio.wait_for(stream.__anext__(), TIMEOUT)
        assert marker.metadata["replica"] == "r1"

        async def keep_alive() -> None:  # one node stays live: no mass-outage freeze
            while True:
                await nodes2.update_heartbeat(
                    compute.UpdateHeartbeatRequest(node_id=keeper.id), timeout=TIMEOUT
                )
                await asyncio.sleep(0.3)

        alive = asyncio.create_task(keep_alive())
        try:
            # r2 holds the node's heartbeats, so r2 judges it OFFLINE and stores the event;
            # r1's subscriber sees it through etcd's watch.
            while (event := await asyncio.wait_for(stream.__anext__(), 15)).metadata[
                "event"
            ] != "node.offline":
                pass
            assert event.metadata["replica"] == "r2"
            listed = await nodes1.list_node_events(
                compute.ListNodeEventsRequest(node_id=node.id), timeout=TIMEOUT
            )
            assert [e.reason for e in listed.events].count("node.offline") == 1
            assert event.id in {e.id for e in listed.events}
        finally:
            alive.cancel()
            await asyncio.gather(alive, return_exceptions=True)
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator
    finally:
        ch1.close()
        ch2.close()
