"""Opening a stream that is only ever reset, and reading a refusing server's status.

The contract with grpclib (0.4.9, pinned): ``Stream.__aexit__`` given an exception
resets the stream without waiting for trailers, and the private
``Stream._maybe_raise`` raises the ``GRPCError`` of a status the stream received.
Both are exercised here against a real grpclib server.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpclib.client
import grpclib.const
import grpclib.server
import pytest
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from qvdc.transport import streams

ROUTE = "/limiquantix.compute.v1.NodeService/StreamHeartbeat"


class _Service:
    """A heartbeat stream that never ends by itself, or refuses once told to."""

    def __init__(self) -> None:
        self.received = asyncio.Event()
        self.refuse = asyncio.Event()
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            ROUTE: grpclib.const.Handler(
                self.handle,
                grpclib.const.Cardinality.STREAM_STREAM,
                compute.UpdateHeartbeatRequest,
                compute.UpdateHeartbeatResponse,
            )
        }

    async def handle(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        try:
            await stream.recv_message()
            self.received.set()
            await self.refuse.wait()
            raise GRPCError(grpclib.const.Status.NOT_FOUND, "unknown node")
        except asyncio.CancelledError:
            self.ended.set_result("cancelled")  # grpclib cancels a handler whose stream is reset
            raise


@pytest.fixture
async def service() -> AsyncIterator[tuple[_Service, grpclib.client.Channel]]:
    svc = _Service()
    server = grpclib.server.Server([svc])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await server.start(sock=sock)
    channel = grpclib.client.Channel("127.0.0.1", port)
    try:
        yield svc, channel
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


def _open(channel: grpclib.client.Channel) -> Any:
    return streams.open_stream(
        channel,
        ROUTE,
        cardinality=grpclib.const.Cardinality.STREAM_STREAM,
        request_type=compute.UpdateHeartbeatRequest,
        reply_type=compute.UpdateHeartbeatResponse,
        timeout=None,
    )


async def test_leaving_the_block_resets_the_stream_without_waiting_for_trailers(
    service: tuple[_Service, grpclib.client.Channel],
) -> None:
    svc, channel = service
    async with asyncio.timeout(5):  # a normal grpclib exit would wait here for ever
        async with _open(channel) as call:
            await call.send_request()
            await call.send_message(compute.UpdateHeartbeatRequest(node_id="n1"))
            await svc.received.wait()
        assert await svc.ended == "cancelled"


async def test_an_error_in_the_block_propagates_and_still_resets_the_stream(
    service: tuple[_Service, grpclib.client.Channel],
) -> None:
    svc, channel = service
    with pytest.raises(LookupError, match="the caller's"):
        async with asyncio.timeout(5), _open(channel) as call:
            await call.send_request()
            await call.send_message(compute.UpdateHeartbeatRequest(node_id="n1"))
            await svc.received.wait()
            raise LookupError("the caller's")
    async with asyncio.timeout(5):
        assert await svc.ended == "cancelled"


async def test_a_block_that_never_sent_its_request_leaves_quietly(
    service: tuple[_Service, grpclib.client.Channel],
) -> None:
    svc, channel = service
    async with asyncio.timeout(5), _open(channel):
        pass  # e.g. the caller was cancelled before sending the request
    async with asyncio.timeout(5), _open(channel) as call:  # the channel still works
        await call.send_request()
        await call.send_message(compute.UpdateHeartbeatRequest(node_id="n1"))
        await svc.received.wait()


async def test_raise_status_raises_what_the_server_sent_and_nothing_before(
    service: tuple[_Service, grpclib.client.Channel],
) -> None:
    svc, channel = service
    async with asyncio.timeout(5), _open(channel) as call:
        await call.send_request()
        await call.send_message(compute.UpdateHeartbeatRequest(node_id="n1"))
        await svc.received.wait()
        streams.raise_status(call)  # no status yet: returns
        svc.refuse.set()
        with pytest.raises(GRPCError) as first:
            await call.recv_message()
        assert first.value.status is grpclib.const.Status.NOT_FOUND
        # The status stays readable after grpclib reported it (as after a reset).
        with pytest.raises(GRPCError) as again:
            streams.raise_status(call)
        assert (again.value.status, again.value.message) == (
            grpclib.const.Status.NOT_FOUND,
            "unknown node",
        )


def test_grpclib_still_has_the_private_members_streams_relies_on() -> None:
    """grpclib 0.4.9: ``Stream._maybe_raise()`` takes no argument, and ``__aexit__``
    takes the exception triple (``raise_status`` would silently return without it)."""
    maybe_raise = grpclib.client.Stream._maybe_raise
    assert list(inspect.signature(maybe_raise).parameters) == ["self"]
    assert list(inspect.signature(grpclib.client.Stream.__aexit__).parameters) == [
        "self",
        "exc_type",
        "exc_val",
        "exc_tb",
    ]
