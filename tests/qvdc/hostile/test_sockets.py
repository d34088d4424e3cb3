"""Raw sockets against a controller with a 1 s idle-connection timeout.

Bytes that are not gRPC at all, connections that say nothing, a message that declares
4 GiB, and hundreds of idle connections: none may hold the controller's memory or its
sockets, and a well-behaved call keeps being answered meanwhile. The HTTP/2 side is
written with h2 directly, so the test controls every frame (and never reads what the
server sends unless it wants to).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import grpclib.client
import grpclib.const
import grpclib.exceptions
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from grpclib.const import Status

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from tests.qvdc.hostile.conftest import PROBE_TIMEOUT, Harness, Replica, report

IDLE_TIMEOUT = 1.0
"""The replica's ``GrpcSettings.idle_timeout`` in this module (conftest reads it)."""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
PROMPTLY = 0.5
"""Seconds within which a connection that sent garbage must be closed (half the idle
timeout, so it is the garbage that closed it, not the silence after it)."""

IDLE_SLACK = 2.5
"""Seconds past the idle timeout a loaded 2-core machine may need to close a connection."""

WINDOW = 4 * 1024 * 1024
"""grpclib's inbound flow-control window (per stream and per connection): what a client
may send before the server has read anything."""

RSS_GROWTH_MAX = 24 * 1024 * 1024
"""What the controller's RSS may grow by for a declared 4 GiB message: the window's
4 MiB buffered before the prefix is seen, and allocator slack; reading the body
instead grows it by 64 MiB and more."""

MAX_MESSAGE = 4 * 1024 * 1024
"""``GrpcSettings.max_message_bytes`` by default."""

GET_POOL = "/limiquantix.storage.v1.StoragePoolService/GetPool"
CREATE_POOL = "/limiquantix.storage.v1.StoragePoolService/CreatePool"
STREAM = "/limiquantix.compute.v1.NodeService/StreamHeartbeat"


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> float | None:
    """Seconds until the server closed the connection (EOF or reset), reading and
    dropping whatever it sends; None if still open after ``timeout``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return loop.time() - started


@contextlib.asynccontextmanager
async def connection(port: int):  # type: ignore[no-untyped-def]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def probe(h: Harness) -> None:
    """A well-behaved GetPool, on a connection of its own, answered within a second."""
    problem = await h.probe()
    assert not problem, f"a normal call: {problem}"


# ---------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(
            PREFACE + b"\x7f" + random.Random(12).randbytes(4095),
            id="random-bytes-after-the-preface",
        ),
        pytest.param(
            PREFACE + b"\xff\xff\xff\x04\x00\x00\x00\x00\x00" + b"\x00" * 64,
            id="a-settings-frame-of-16-MiB",
        ),
        pytest.param(
            PREFACE + EMPTY_SETTINGS + b"\x00\x00\x08\x01\x05\x00\x00\x00\x01" + b"\xff" * 8,
            id="headers-hpack-cannot-decode",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-1.1"),
        pytest.param(random.Random(13).randbytes(4096), id="random-bytes-instead-of-the-preface"),
    ],
)
async def test_garbage_closes_the_connection_promptly(hostile: Harness, garbage: bytes) -> None:
    offset = hostile.replica.log_size()
    async with connection(hostile.replica.port) as (reader, writer):
        writer.write(garbage)
        await writer.drain()
        elapsed = await closed_within(reader, 5.0)
        await probe(hostile)
    assert elapsed is not None, "the connection is still open 5 s after the garbage"
    assert elapsed < PROMPTLY, (
        f"closed only after {elapsed:.2f} s (the idle timeout, not the garbage)"
    )
    log = hostile.replica.log_since(offset)
    assert "Traceback" not in log, log[-2000:]


# ---------------------------------------------------------------- silence


@pytest.mark.parametrize(
    "hello",
    [
        pytest.param(b"", id="nothing-at-all"),
        pytest.param(PREFACE[:10], id="half-a-preface"),
        pytest.param(PREFACE + EMPTY_SETTINGS, id="preface-and-settings-then-nothing"),
    ],
)
async def test_a_silent_connection_is_closed_after_the_idle_timeout(
    hostile: Harness, hello: bytes
) -> None:
    async with connection(hostile.replica.port) as (reader, writer):
        writer.write(hello)
        await writer.drain()
        elapsed = await closed_within(reader, IDLE_TIMEOUT + IDLE_SLACK)
    assert elapsed is not None, f"still open {IDLE_TIMEOUT + IDLE_SLACK} s later: no idle timeout"


async def test_a_heartbeat_stream_in_progress_is_not_idle(hostile: Harness) -> None:
    """The idle timeout is about connections without calls: a node's stream that is
    quiet for longer than the timeout between two heartbeats keeps its connection."""
    channel = grpclib.client.Channel("127.0.0.1", hostile.replica.port)
    try:
        async with channel.request(
            STREAM,
            grpclib.const.Cardinality.STREAM_STREAM,
            compute.UpdateHeartbeatRequest,
            compute.UpdateHeartbeatResponse,
            timeout=30,
        ) as stream:
            beat = compute.UpdateHeartbeatRequest(
                node_id=hostile.seeds.node, storage_pools=[report(hostile.seeds.pool)]
            )
            await stream.send_message(dataclass_replace(beat, sequence=1))
            first = await stream.recv_message()
            await asyncio.sleep(IDLE_TIMEOUT * 2.5)
            await stream.send_message(dataclass_replace(beat, sequence=2))
            second = await stream.recv_message()
            await stream.cancel()
    finally:
        channel.close()
    assert first is not None and first.sequence == 1
    assert second is not None and second.sequence == 2


def dataclass_replace(
    message: compute.UpdateHeartbeatRequest, *, sequence: int
) -> compute.UpdateHeartbeatRequest:
    copy = compute.UpdateHeartbeatRequest.parse(bytes(message))
    copy.sequence = sequence
    return copy


# ---------------------------------------------------------------- giant messages


class _GiantSender:
    """One h2 stream that declares a 4 GiB gRPC message and sends as much of it as the
    server's flow control lets it, reading the server's frames as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.window = asyncio.Event()
        self.ended = ""
        self.status = ""
        self.sent = 0

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def read_frames(self) -> None:
        while not self.ended:
            data = await self.reader.read(65536)
            if not data:
                self.ended = self.ended or "connection closed"
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.StreamReset):
                    self.ended = f"stream reset (error code {event.error_code})"
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.ended = f"GOAWAY (error code {event.error_code})"
                elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    for name, value in event.headers:
                        if name in (b"grpc-status", "grpc-status"):
                            self.status = value.decode() if isinstance(value, bytes) else value
                            self.ended = f"grpc-status {self.status}"
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended = self.ended or "stream ended"
            self.window.set()
            self.flush()

    async def run(self, *, path: str, limit: int, timeout: float) -> None:
        self.conn.initiate_connection()
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc+proto"),
                ("te", "trailers"),
            ],
        )
        self.conn.send_data(stream_id, b"\x00" + (2**32 - 1).to_bytes(4, "big"))
        self.flush()
        reading = asyncio.create_task(self.read_frames())
        chunk = b"\x00" * 16384
        try:
            async with asyncio.timeout(timeout):
                while not self.ended and self.sent < limit:
                    try:
                        room = min(
                            self.conn.local_flow_control_window(stream_id),
                            self.conn.max_outbound_frame_size,
                        )
                    except h2.exceptions.H2Error:  # the server closed the stream meanwhile
                        room = 0
                    if room > 0:
                        self.conn.send_data(stream_id, chunk[:room])
                        self.sent += room
                        self.flush()
                        await self.writer.drain()
                        continue
                    self.window.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.2):
                            await self.window.wait()
        except TimeoutError:
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading


async def test_a_declared_4_GiB_message_is_refused_without_being_read(hostile: Harness) -> None:
    replica: Replica = hostile.replica
    rss_before = replica.rss_bytes()
    offset = replica.log_size()
    started = time.monotonic()
    async with connection(replica.port) as (reader, writer):
        sender = _GiantSender(reader, writer)
        await sender.run(path=GET_POOL, limit=64 * 1024 * 1024, timeout=5.0)
        elapsed = time.monotonic() - started
        await probe(hostile)
    await asyncio.sleep(0.3)
    grown = replica.rss_bytes() - rss_before
    assert sender.ended, f"nothing stopped it: {sender.sent} bytes sent in {elapsed:.1f} s"
    assert sender.status in ("", str(Status.RESOURCE_EXHAUSTED.value)), sender.ended
    assert sender.sent <= WINDOW + 1024 * 1024, (
        f"the server read {sender.sent} bytes of it (more than its window of {WINDOW}) "
        f"before: {sender.ended}"
    )
    assert grown < RSS_GROWTH_MAX, f"the controller's RSS grew by {grown >> 20} MiB"
    log = replica.log_since(offset)
    assert "Traceback" not in log, log[-2000:]


async def test_a_message_over_the_size_limit_is_resource_exhausted(hostile: Harness) -> None:
    body = bytes(
        storage.CreatePoolRequest(name=hostile.unique(), description="x" * (MAX_MESSAGE + 1))
    )
    outcome = await hostile.attempt(CREATE_POOL, body, what="a 4 MiB + 1 CreatePool")
    outcome.check(statuses=frozenset({Status.RESOURCE_EXHAUSTED}))


async def test_a_stream_message_over_the_size_limit_is_resource_exhausted(
    hostile: Harness,
) -> None:
    beat = compute.UpdateHeartbeatRequest(
        node_id=hostile.seeds.node,
        sequence=1,
        storage_pools=[report(f"p{i}", error="e" * 4096) for i in range(1100)],
    )
    body = bytes(beat)
    assert len(body) > MAX_MESSAGE
    outcome = await hostile.attempt(
        STREAM,
        body,
        cardinality=grpclib.const.Cardinality.STREAM_STREAM,
        what="a 4.5 MB heartbeat on the stream",
    )
    outcome.check(statuses=frozenset({Status.RESOURCE_EXHAUSTED}))


# ---------------------------------------------------------------- many idle connections


async def test_500_idle_connections_neither_block_a_call_nor_stay_open(hostile: Harness) -> None:
    port = hostile.replica.port
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(500):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(PREFACE + EMPTY_SETTINGS)
            opened.append((reader, writer))
        await asyncio.gather(*(w.drain() for _, w in opened))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await probe(hostile)  # a normal call on its own connection
        await probe(hostile)
        assert loop.time() - started < 2 * PROBE_TIMEOUT
        waited = await asyncio.gather(
            *(closed_within(r, IDLE_TIMEOUT + IDLE_SLACK + 2.0) for r, _ in opened)
        )
    finally:
        for _, writer in opened:
            writer.close()
    still_open = sum(1 for w in waited if w is None)
    assert still_open == 0, f"{still_open} of 500 idle connections still open after the timeout"
    await probe(hostile)


async def test_a_refused_call_gets_its_status_even_on_a_fresh_connection(
    hostile: Harness,
) -> None:
    """The idle timeout never cuts a call that is being answered: a client that connects
    and at once sends a hostile call gets its refusal, not a closed connection."""
    channel = grpclib.client.Channel("127.0.0.1", hostile.replica.port)
    try:
        with pytest.raises(grpclib.exceptions.GRPCError) as info:
            await storage.StoragePoolServiceStub(channel).get_pool(
                storage.GetPoolRequest(id="x" * 100_000), timeout=5.0
            )
    finally:
        channel.close()
    assert info.value.status == Status.INVALID_ARGUMENT, info.value
    assert len(info.value.message or "") < 1024
