"""The watch RPCs over Connect server streaming (HTTP/1.1, ``application/connect+json``)
against a real replica: the initial state, a change made over gRPC, refusals as the end
frame's error, a client that goes away frees its watch, and the replica stopping ends the
stream with ``unavailable`` so the client re-watches."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from tests.qvdc.api.helpers import create_request, eventually, register_request

POOLS = "limiquantix.storage.v1.StoragePoolService"
NODES = "limiquantix.compute.v1.NodeService"
STEP = 5.0


class ConnectStream:
    """One Connect server-streaming call over a raw HTTP/1.1 connection, read frame by
    frame as the server sends them (chunked transfer encoding)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.status = 0

    @classmethod
    async def open(cls, port: int, procedure: str, message: dict[str, Any]) -> ConnectStream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = json.dumps(message).encode()
        body = struct.pack(">BI", 0, len(payload)) + payload
        writer.write(
            f"POST /{procedure} HTTP/1.1\r\nHost: x\r\n".encode()
            + b"Content-Type: application/connect+json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        stream = cls(reader, writer)
        async with asyncio.timeout(STEP):
            head = await reader.readuntil(b"\r\n\r\n")
        stream.status = int(head.split(b" ", 2)[1])
        assert b"transfer-encoding: chunked" in head.lower(), head
        return stream

    async def _chunk(self) -> bytes:
        size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def frame(self) -> tuple[int, Any]:
        """The next envelope: (flags, JSON); flags 2 is the end of the stream."""
        async with asyncio.timeout(STEP):
            while len(self.buffer) < 5 or len(self.buffer) < 5 + self._size():
                chunk = await self._chunk()
                if not chunk:
                    raise AssertionError("the response ended without an end frame")
                self.buffer += chunk
        size = self._size()
        flags, raw = self.buffer[0], self.buffer[5 : 5 + size]
        self.buffer = self.buffer[5 + size :]
        return flags, json.loads(raw)

    def _size(self) -> int:
        return int(struct.unpack(">I", self.buffer[1:5])[0])

    async def message(self) -> Any:
        flags, body = await self.frame()
        assert flags == 0, body
        return body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_watch_pools_over_connect(
    controller: Controller, pools: storage.StoragePoolServiceStub
) -> None:
    a = await pools.create_pool(create_request("cw-a"))
    stream = await ConnectStream.open(controller.http_port, f"{POOLS}/WatchPools", {})
    try:
        assert stream.status == 200
        first = await stream.message()
        assert first.get("type", "ADDED") == "ADDED"  # proto3 JSON omits the default
        assert first["pool"]["id"] == a.id and first["pool"]["name"] == "cw-a"
        await pools.update_pool(storage.UpdatePoolRequest(id=a.id, description="over grpc"))
        while (update := await stream.message())["pool"].get("description") != "over grpc":
            assert update["type"] == "MODIFIED"  # the new pool's status arriving, say
        assert update["type"] == "MODIFIED"
        b = await pools.create_pool(create_request("cw-b"))
        while (update := await stream.message())["pool"]["id"] != b.id:
            assert update["type"] == "MODIFIED"
        assert update.get("type", "ADDED") == "ADDED"
    finally:
        await stream.close()
    # The client went away: its watch is gone too.
    await eventually(
        lambda: asyncio.sleep(0, controller.watches.open_streams), lambda n: n == 0, what="freed"
    )


@pytest.mark.parametrize(
    ("procedure", "message", "code", "field"),
    [
        (f"{NODES}/WatchNode", {}, "invalid_argument", "node_id"),
        (f"{NODES}/WatchNode", {"nodeId": "missing"}, "not_found", "node_id"),
        (f"{POOLS}/WatchPools", {"poolId": "x" * 5000}, "invalid_argument", "pool_id"),
    ],
)
async def test_refusals_end_the_stream_before_any_message(
    controller: Controller, procedure: str, message: dict[str, Any], code: str, field: str
) -> None:
    stream = await ConnectStream.open(controller.http_port, procedure, message)
    try:
        flags, body = await stream.frame()
    finally:
        await stream.close()
    assert flags == 2, body
    assert body["error"]["code"] == code and field in body["error"]["message"]


async def test_watch_node_over_connect_until_the_replica_stops(
    controller: Controller, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("cw-node"))
    stream = await ConnectStream.open(
        controller.http_port, f"{NODES}/WatchNode", {"nodeId": node.id}
    )
    try:
        assert (await stream.message())["hostname"] == "cw-node"
        await nodes.disable_node(compute.DisableNodeRequest(id=node.id, reason="swap"))
        assert (await stream.message())["status"]["phase"] == "MAINTENANCE"
        stopping = asyncio.create_task(controller.stop())
        flags, body = await stream.frame()
        await stopping
    finally:
        await stream.close()
    assert flags == 2 and body["error"]["code"] == "unavailable"
    assert "re-watch" in body["error"]["message"]
