"""The Connect face's transport: h2c (HTTP/2 with prior knowledge), server-streaming RPCs
in the Connect streaming envelope, and a client that goes away mid-stream."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpclib.const
import h2.config
import h2.connection
import h2.events
import pytest
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from qvdc.api.errors import unary
from qvdc.http import connect, health, server
from tests.qvdc.http.conftest import Http

NODES = "limiquantix.compute.v1.NodeService"


async def h2c_post(
    port: int, path: str, body: bytes, content_type: str
) -> tuple[dict[str, str], bytes]:
    """One POST over cleartext HTTP/2 with prior knowledge (no Upgrade), with h2 itself."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", f"127.0.0.1:{port}"),
            (":path", path),
            ("content-type", content_type),
            ("content-length", str(len(body))),
        ],
    )
    conn.send_data(stream_id, body, end_stream=True)
    writer.write(conn.data_to_send())
    headers: dict[str, str] = {}
    data = bytearray()
    try:
        async with asyncio.timeout(10):
            while True:
                chunk = await reader.read(65536)
                assert chunk, "the server closed the connection"
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived):
                        headers = {k.decode(): v.decode() for k, v in event.headers}
                    elif isinstance(event, h2.events.DataReceived):
                        data += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        return headers, bytes(data)
                writer.write(conn.data_to_send())
    finally:
        writer.close()
        await writer.wait_closed()


async def test_h2c_prior_knowledge(client: Http) -> None:
    body = json.dumps({"hostname": "h2c-01", "managementIp": "10.0.0.7:9090"}).encode()
    headers, data = await h2c_post(client.port, f"/{NODES}/RegisterNode", body, "application/json")
    assert headers[":status"] == "200", data
    node_id = json.loads(data)["id"]
    headers, data = await h2c_post(
        client.port,
        f"/{NODES}/GetNode",
        bytes(compute.GetNodeRequest(id=node_id)),
        "application/proto",
    )
    assert headers[":status"] == "200"
    assert compute.Node().parse(data).hostname == "h2c-01"
    headers, data = await h2c_post(
        client.port, f"/{NODES}/GetNode", b'{"id": "missing"}', "application/json"
    )
    assert headers[":status"] == "404"
    assert json.loads(data)["code"] == "not_found"


def envelopes(data: bytes) -> list[tuple[int, Any]]:
    out = []
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        out.append((flags, json.loads(data[5 : 5 + size])))
        data = data[5 + size :]
    return out


class Countdown:
    """A servicer with a server-streaming RPC (the services' own have none yet)."""

    def __init__(self) -> None:
        self.ended = asyncio.Event()

    async def count(self, stream: Any) -> None:
        request = await stream.recv_message()
        try:
            if request.hostname == "forever":
                i = 0
                while True:
                    await stream.send_message(compute.Node(id=str(i)))
                    i += 1
            for i in range(int(request.hostname)):
                await stream.send_message(compute.Node(id=str(i)))
            if request.management_ip == "fail":
                raise GRPCError(Status.FAILED_PRECONDITION, "stopped after the count")
        finally:
            self.ended.set()

    async def get(self, request: compute.GetNodeRequest) -> compute.Node:
        return compute.Node(id=request.id)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            "/test.v1.Countdown/Count": grpclib.const.Handler(
                self.count, Cardinality.UNARY_STREAM, compute.RegisterNodeRequest, compute.Node
            ),
            "/test.v1.Countdown/Get": grpclib.const.Handler(
                unary("Get", self.get, send_timeout=5.0),
                Cardinality.UNARY_UNARY,
                compute.GetNodeRequest,
                compute.Node,
            ),
        }


class Served:
    """A Countdown behind the HTTP server, with a switch for "the view is listed"."""

    def __init__(self) -> None:
        self.service = Countdown()
        self.listed = True
        self.port = 0


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    served = Served()

    async def ok() -> None:
        return None

    router = server.Router(
        connect_app=connect.ConnectApp([served.service], max_message_bytes=1 << 20),
        readiness=health.Readiness(listed=lambda: served.listed, probe=ok, timeout=1.0),
        listed=lambda: served.listed,
    )
    http = server.HttpServer(router, keep_alive_timeout=5, close_timeout=1, read_timeout=0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await http.start(sock=sock)
    served.port = sock.getsockname()[1]
    try:
        yield served
    finally:
        await http.close()


@pytest.fixture
def countdown(served: Served) -> tuple[Countdown, int]:
    return served.service, served.port


async def test_before_the_listing_alive_not_ready_and_rpcs_unavailable(served: Served) -> None:
    client = Http(served.port)
    served.listed = False
    assert (await client.request("GET", "/healthz")).status == 200
    ready = await client.request("GET", "/readyz")
    assert (ready.status, ready.body) == (503, f"{health.NOT_LISTED}\n".encode())
    rpc = await client.call("test.v1.Countdown/Get", {"id": "a"})
    assert rpc.status == 503
    assert rpc.json() == {"code": "unavailable", "message": health.NOT_LISTED}

    served.listed = True
    assert (await client.request("GET", "/readyz")).status == 200
    rpc = await client.call("test.v1.Countdown/Get", {"id": "a"})
    assert (rpc.status, rpc.json()) == (200, {"id": "a"})


def stream_body(message: dict[str, Any]) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(payload)) + payload


async def test_server_streaming_rpc(countdown: tuple[Countdown, int]) -> None:
    _, port = countdown
    client = Http(port)
    headers = {"Content-Type": "application/connect+json"}
    answer = await client.request(
        "POST", "/test.v1.Countdown/Count", stream_body({"hostname": "3"}), headers=headers
    )
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/connect+json"
    frames = envelopes(answer.body)
    assert [f for f in frames[:-1]] == [(0, {"id": "0"}), (0, {"id": "1"}), (0, {"id": "2"})]
    assert frames[-1] == (2, {})

    failed = await client.request(
        "POST",
        "/test.v1.Countdown/Count",
        stream_body({"hostname": "2", "managementIp": "fail"}),
        headers=headers,
    )
    frames = envelopes(failed.body)
    assert [f[1] for f in frames[:-1]] == [{"id": "0"}, {"id": "1"}]
    assert frames[-1] == (
        2,
        {"error": {"code": "failed_precondition", "message": "stopped after the count"}},
    )


async def test_a_client_gone_mid_stream_ends_the_handler(countdown: tuple[Countdown, int]) -> None:
    service, port = countdown
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = stream_body({"hostname": "forever"})
    writer.write(
        b"POST /test.v1.Countdown/Count HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/connect+json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    async with asyncio.timeout(10):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.read(100)  # the stream is flowing
    writer.close()
    await writer.wait_closed()
    async with asyncio.timeout(10):
        await service.ended.wait()  # the handler was cancelled, not left sending


async def test_a_request_that_does_not_arrive_is_cut_off(served: Served) -> None:
    """Headers (or a body) trickling in must not hold a connection for ever."""
    for partial in (
        b"POST /test.v1.Countdown/Get HTTP/1.1\r\nHost: x\r\n",
        b"POST /test.v1.Countdown/Get HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: 100\r\n\r\n{",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(partial)
        await writer.drain()
        async with asyncio.timeout(10):
            rest = await reader.read()  # EOF: the server closed the connection
        assert b"200" not in rest
        writer.close()
        await writer.wait_closed()
    # A whole request on a connection is answered as before.
    answer = await Http(served.port).call("test.v1.Countdown/Get", {"id": "a"})
    assert (answer.status, answer.json()) == (200, {"id": "a"})
