"""Controller client and connection handling against real grpclib servers.

Error mapping, endpoint failover (a closed port first, a controller dying
mid-run), channel recreation after repeated failures, retrying until a
controller appears, re-registration when the controller answers NOT_FOUND for
the node id, and the status of a refused heartbeat stream. All on stock grpclib,
as the node daemon runs it.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import grpclib.const
import grpclib.protocol
import pytest
from grpclib.exceptions import GRPCError

from node import app, client, convert, hostfacts, settings

FACTS = hostfacts.HostFacts(hostname="host-a")
HEARTBEAT = convert.Heartbeat(node_id="n1", sequence=1, delta=False, pools=())
LOG = logging.getLogger("test")


def make_client(*endpoints: str, recreate_after: int = 5) -> client.ControllerClient:
    return client.ControllerClient(
        endpoints=[settings.parse_endpoint(e) for e in endpoints],
        rpc_timeout=1.0,
        recreate_after=recreate_after,
        logger=LOG,
    )


async def register(c: client.ControllerClient) -> str:
    return await c.register(hostname="host-a", management_ip="10.0.0.1", labels={}, facts=FACTS)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (grpclib.const.Status.NOT_FOUND, client.NodeUnknown),
        (grpclib.const.Status.INVALID_ARGUMENT, client.Rejected),
        (grpclib.const.Status.FAILED_PRECONDITION, client.Rejected),
        (grpclib.const.Status.UNAVAILABLE, client.ControllerUnavailable),
        (grpclib.const.Status.INTERNAL, client.ControllerUnavailable),
    ],
)
async def test_grpc_statuses_map_to_the_error_tree(controller, status, expected):
    controller.register_error = GRPCError(status, "scripted")
    c = make_client(controller.endpoint)
    try:
        with pytest.raises(expected) as info:
            await register(c)
    finally:
        c.close()
    assert info.value.endpoint == controller.endpoint
    assert "scripted" in str(info.value)
    if expected is client.Rejected:
        assert info.value.status is status
    # Only transport-level trouble counts as a failure of the endpoint.
    assert c.consecutive_failures == (1 if expected is client.ControllerUnavailable else 0)


async def test_register_returns_the_node_id_and_sends_host_facts(controller):
    c = make_client(controller.endpoint)
    try:
        facts = hostfacts.HostFacts(
            hostname="ignored", cpu_model="Zen", cpu_total_threads=8, memory_total_bytes=2**34
        )
        node_id = await c.register(
            hostname="host-a", management_ip="10.0.0.1", labels={"rack": "r1"}, facts=facts
        )
    finally:
        c.close()
    assert node_id == "node-host-a-1"
    sent = controller.register_requests[0]
    assert (sent.hostname, sent.management_ip, dict(sent.labels)) == (
        "host-a",
        "10.0.0.1",
        {"rack": "r1"},
    )
    assert (sent.cpu_info.model, sent.cpu_info.total_threads) == ("Zen", 8)
    assert sent.memory_info.total_bytes == 2**34


async def test_closed_port_fails_over_to_the_next_endpoint(controller, closed_endpoint):
    c = make_client(closed_endpoint, controller.endpoint)
    try:
        assert c.endpoint == closed_endpoint
        with pytest.raises(client.ControllerUnavailable) as info:
            await register(c)
        assert info.value.endpoint == closed_endpoint
        assert c.endpoint == controller.endpoint
        assert await register(c) == "node-host-a-1"
        assert c.consecutive_failures == 0
    finally:
        c.close()


async def test_single_endpoint_channel_is_recreated_after_repeated_failures(closed_endpoint):
    c = make_client(closed_endpoint, recreate_after=2)
    try:
        for _ in range(4):
            with pytest.raises(client.ControllerUnavailable):
                await register(c)
    finally:
        c.close()
    # Calls 1-2 use channel 1 (dropped after the 2nd failure), calls 3-4 channel 2.
    assert c.channels_created == 2
    assert c.consecutive_failures == 4


async def test_node_fails_over_from_a_closed_port(
    controller, closed_endpoint, node_settings, run_app, eventually
):
    node = app.NodeApp(settings=node_settings(closed_endpoint, controller.endpoint))
    await run_app(node)
    await eventually(lambda: node.status().endpoint == controller.endpoint, what="connected")
    assert node.status().node_id == "node-host-a-1"
    await controller.wait_requests(2)


async def test_node_fails_over_when_its_controller_dies(
    spawn_controller, node_settings, run_app, eventually
):
    first = await spawn_controller()
    second = await spawn_controller()
    node = app.NodeApp(settings=node_settings(first.endpoint, second.endpoint))
    await run_app(node)
    await first.wait_requests(1)
    await first.stop()
    # The second replica does not know the node: it is registered there anew.
    await eventually(lambda: node.status().endpoint == second.endpoint, what="failed over")
    await second.wait_requests(1)
    assert len(second.register_requests) == 1
    assert second.requests[0].node_id == node.status().node_id
    assert not second.requests[0].delta


async def test_node_keeps_retrying_until_a_controller_appears(
    closed_endpoint, spawn_controller, node_settings, run_app, eventually
):
    node = app.NodeApp(settings=node_settings(closed_endpoint))
    await run_app(node)
    await eventually(lambda: node.client.consecutive_failures >= 3, what="failed attempts")
    assert node.status().node_id is None
    late = await spawn_controller(port=int(closed_endpoint.rsplit(":", 1)[1]))
    await late.wait_requests(1)
    await eventually(lambda: node.status().endpoint == late.endpoint, what="connected")


async def test_reregisters_when_the_controller_forgets_the_node(
    controller, node_settings, run_app, eventually, tmp_path
):
    node = app.NodeApp(settings=node_settings(controller.endpoint))
    await run_app(node)
    await eventually(lambda: node.heartbeat.stats.acknowledged >= 1, what="first ack")
    assert node.status().node_id == "node-host-a-1"

    controller.forget()
    await eventually(lambda: len(controller.register_requests) == 2, what="registered again")
    await eventually(lambda: node.status().node_id == "node-host-a-2", what="new id adopted")
    n = len(controller.requests)
    await controller.wait_requests(n + 1)
    assert controller.requests[n].node_id == "node-host-a-2"
    # The new id is persisted for the next start.
    await eventually(
        lambda: (tmp_path / "state" / "node-id").read_text().strip() == "node-host-a-2",
        what="node-id file updated",
    )


async def test_stream_ended_by_the_controller_reconnects_or_reregisters(
    controller, node_settings, run_app, eventually
):
    node = app.NodeApp(settings=node_settings(controller.endpoint))
    await run_app(node)
    await controller.wait_requests(2)

    # A clean end of the stream (status OK) is a disconnect: reconnect, same node id.
    n = len(controller.requests)
    controller.end_streams = True
    await eventually(
        lambda: any(r.sequence == 1 for r in controller.requests[n:]), what="a new stream"
    )
    first_on_new = next(r for r in controller.requests[n:] if r.sequence == 1)
    assert not first_on_new.delta
    assert controller.streams_opened == 2
    assert len(controller.register_requests) == 1

    # An end with NOT_FOUND means the node is unknown: register again.
    controller.end_error = GRPCError(grpclib.const.Status.NOT_FOUND, "node gone")
    controller.end_streams = True
    await eventually(lambda: len(controller.register_requests) == 2, what="registered again")
    await eventually(lambda: node.status().node_id == "node-host-a-2", what="new id adopted")


async def test_the_node_tests_run_on_stock_grpclib(controller):
    """The node daemon never installs qvdc.transport.lean_grpclib, so its tests do not
    either (tests/node/conftest.py), although the controller-side tests do."""
    protocol = vars(grpclib.protocol)
    assert protocol["Event"] is asyncio.Event
    assert protocol["Queue"] is asyncio.Queue
    assert protocol["deque"] is collections.deque


async def test_a_refused_stream_raises_the_controller_s_status(controller):
    """A stream the controller refuses (NOT_FOUND) ends in NodeUnknown, an upstream
    controller without StreamHeartbeat (UNIMPLEMENTED) in Rejected, never in a bare
    disconnect; and leaving the stream never waits for trailers."""
    c = make_client(controller.endpoint)
    try:
        async with asyncio.timeout(5), c.heartbeat_stream() as stream:
            await stream.send(HEARTBEAT)
            with pytest.raises(client.NodeUnknown):
                await stream.recv()
        controller.stream_unimplemented = True
        async with asyncio.timeout(5), c.heartbeat_stream() as stream:
            with pytest.raises(client.Rejected) as info:
                await stream.send(HEARTBEAT)
                await stream.recv()
        assert info.value.unimplemented
        controller.stream_unimplemented = False
        controller.known.add("n1")
        async with asyncio.timeout(5), c.heartbeat_stream() as stream:
            await stream.send(HEARTBEAT)
            reply = await stream.recv()
            assert reply is not None
        assert controller.requests[-1].node_id == "n1"
    finally:
        c.close()
