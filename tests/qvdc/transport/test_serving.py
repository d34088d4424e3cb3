"""The controller's grpclib server on loopback: bounded messages, strict bytes, idle
connections closed; with the contract tests for the grpclib internals it relies on.

A tiny service (one unary and one stream-stream method) behind
:class:`qvdc.transport.serving.Server`; raw sockets and h2 for what no client library
sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import grpclib.client
import grpclib.config
import grpclib.const
import grpclib.protocol
import grpclib.server
import grpclib.stream
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.transport import bounds, heartbeat_codec, serving

UNARY = "/test.Echo/Unary"
STREAM = "/test.Echo/Stream"
LIMIT = 64 * 1024
IDLE = 0.4
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
WINDOW = 4 * 1024 * 1024  # grpclib's default inbound window, per stream and connection


# ---------------------------------------------------------------- contracts


def test_grpclib_reads_messages_as_bounds_was_written_against() -> None:
    """bounds.recv_message re-implements grpclib.stream.recv_message: the 5-byte prefix,
    then ``recv_data(length)``, then ``codec.decode``. A change there must be reviewed."""
    source = inspect.getsource(grpclib.stream.recv_message)
    for line in (
        "meta = await stream.recv_data(5)",
        "message_len = struct.unpack('>I', meta[1:])[0]",
        "message_bin = await stream.recv_data(message_len)",
        "message = codec.decode(message_bin, message_type)",
    ):
        assert line in source, line
    assert bounds.ORIGINAL is grpclib.stream.recv_message


def test_the_server_stream_calls_the_module_level_reader() -> None:
    source = inspect.getsource(grpclib.server.Stream.recv_message)
    assert "await recv_message(self._stream, self._codec, self._recv_type)" in source
    assert "recv_message" in grpclib.server.Stream.recv_message.__code__.co_names


async def test_the_client_stream_calls_the_module_level_reader() -> None:
    """bounded_channel relies on grpclib.client.Stream reading answers through the name
    ``recv_message`` of its module, with the channel's codec."""
    source = " ".join(inspect.getsource(grpclib.client.Stream.recv_message).split())
    assert "await recv_message(self._stream, self._codec, self._recv_type)" in source
    assert "recv_message" in grpclib.client.Stream.recv_message.__code__.co_names
    channel = bounds.bounded_channel("127.0.0.1", 1, max_message_bytes=LIMIT)
    try:
        assert getattr(channel, "_codec").max_message_bytes == LIMIT  # noqa: B009
    finally:
        channel.close()


def test_install_replaces_the_reader_and_refuses_an_unknown_one() -> None:
    bounds.install()
    assert bounds.installed()
    bounds.uninstall()
    assert not bounds.installed()
    for module in (grpclib.server, grpclib.client):
        original = getattr(module, "recv_message")  # noqa: B009
        try:
            setattr(module, "recv_message", lambda *a: None)  # noqa: B010
            with pytest.raises(RuntimeError, match=module.__name__):
                bounds.install()
        finally:
            setattr(module, "recv_message", original)  # noqa: B010
    bounds.install()


def test_the_protocol_factory_is_still_the_one_serving_overrides() -> None:
    source = inspect.getsource(grpclib.server.Server._protocol_factory)
    body = [line.strip() for line in source.splitlines()[1:] if line.strip()]
    assert body == [
        "self.__gc_step__()",
        "handler = Handler(",
        "self._mapping, self._codec, self._status_details_codec,",
        "self.__dispatch__,",
        ")",
        "self._handlers.add(handler)",
        "return H2Protocol(handler, self._config, self._h2_config)",
    ]


def test_grpclib_internals_serving_uses() -> None:
    assert "self._tasks[stream] = self.loop.create_task(" in inspect.getsource(
        grpclib.server.Handler.accept
    )
    assert "self.processors = {" in inspect.getsource(grpclib.protocol.EventsProcessor.__init__)
    assert "proc = self.processors[event.__class__]" in inspect.getsource(
        grpclib.protocol.EventsProcessor.process
    )
    assert "self._connection = connection" in inspect.getsource(
        grpclib.protocol.Connection.__init__
    )
    assert "except ProtocolError:" in inspect.getsource(grpclib.protocol.H2Protocol.data_received)
    handled = set(inspect.getsource(grpclib.protocol.EventsProcessor.__init__).split())
    for event in serving.IGNORED_EVENTS:
        assert f"{event.__name__}:" not in handled, f"grpclib handles {event.__name__} now"


# ---------------------------------------------------------------- the server under test


class Echo:
    """Unary: GetPoolRequest -> StoragePool(id=request.id). Stream: heartbeats echoed."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.release = asyncio.Event()

    async def unary(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        request = await stream.recv_message()
        assert request is not None
        self.received.append(request)
        if request.id == "hold":
            await self.release.wait()
        await stream.send_message(storage.StoragePool(id=request.id))

    async def stream(self, stream: grpclib.server.Stream[Any, Any]) -> None:
        async for request in stream:
            self.received.append(request)
            await stream.send_message(compute.UpdateHeartbeatResponse(sequence=request.sequence))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        Card = grpclib.const.Cardinality
        return {
            UNARY: grpclib.const.Handler(
                self.unary, Card.UNARY_UNARY, storage.GetPoolRequest, storage.StoragePool
            ),
            STREAM: grpclib.const.Handler(
                self.stream,
                Card.STREAM_STREAM,
                compute.UpdateHeartbeatRequest,
                compute.UpdateHeartbeatResponse,
            ),
        }


class Served:
    def __init__(self, server: serving.Server, echo: Echo, port: int) -> None:
        self.server, self.echo, self.port = server, echo, port
        self.loop_errors: list[dict[str, Any]] = []

    def channel(self) -> grpclib.client.Channel:
        return grpclib.client.Channel("127.0.0.1", self.port)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    echo = Echo()
    server = serving.Server(
        [echo],
        codec=heartbeat_codec.server_codec(max_message_bytes=LIMIT),
        config=grpclib.config.Configuration(),
        idle_timeout=IDLE,
    )
    await server.start("127.0.0.1", 0)
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    result = Served(server, echo, port)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: result.loop_errors.append(context))
    try:
        yield result
    finally:
        loop.set_exception_handler(previous)
        echo.release.set()
        server.close()
        await server.wait_closed()
    assert not result.loop_errors, result.loop_errors


class RawCodec(CodecBase):
    """Bytes in, bytes out: a request sent exactly as built."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


async def _unary(port: int, body: bytes) -> Any:
    """Send ``body`` as the request message, exactly as given."""
    raw = grpclib.client.Channel("127.0.0.1", port, codec=RawCodec())
    try:
        method = grpclib.client.UnaryUnaryMethod(raw, UNARY, bytes, bytes)
        return await method(body, timeout=5.0)
    finally:
        raw.close()


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed the connection, and what it sent."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        return None, received
    except ConnectionError:
        pass
    return loop.time() - started, received


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _goaway(received: bytes) -> int | None:
    """The error code of the GOAWAY among the server's frames, or None."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    try:
        events = client.receive_data(received)
    except h2.exceptions.ProtocolError:
        return None
    for event in events:
        if isinstance(event, h2.events.ConnectionTerminated):
            return int(event.error_code or 0)
    return None


# ---------------------------------------------------------------- message size


async def test_a_message_up_to_the_limit_is_read_and_one_byte_more_is_refused(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stub_id = "x" * (LIMIT - 4)  # field tag 1 byte, length 3 bytes
    body = bytes(storage.GetPoolRequest(id=stub_id))
    assert len(body) == LIMIT
    assert await _unary(served.port, body)
    with pytest.raises(GRPCError) as info:
        await _unary(served.port, body + b"\x00")
    assert info.value.status == Status.RESOURCE_EXHAUSTED
    assert info.value.message == f"message of {LIMIT + 1} bytes is over the limit of {LIMIT} bytes"
    assert len(served.echo.received) == 1
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


class _GiantSender:
    """A raw h2 stream declaring a 4 GiB message and sending as much as flow control lets
    it; ``sent`` is what the server let in, ``ended`` how the stream ended."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.sent = 0
        self.status = ""
        self.ended = ""
        self.window = asyncio.Event()

    async def _read(self) -> None:
        while not self.ended:
            data = await self.reader.read(65536)
            if not data:
                self.ended = "closed"
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    headers = dict(event.headers)
                    if b"grpc-status" in headers:
                        self.status = headers[b"grpc-status"].decode()
                        self.ended = "status"
                elif isinstance(event, h2.events.StreamReset):
                    self.ended = self.ended or "reset"
            self.writer.write(self.conn.data_to_send())
            self.window.set()

    async def run(self, path: str, *, limit: int) -> None:
        self.conn.initiate_connection()
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc+proto"),
                ("te", "trailers"),
            ],
        )
        self.conn.send_data(sid, b"\x00" + (2**32 - 1).to_bytes(4, "big"))
        self.writer.write(self.conn.data_to_send())
        reading = asyncio.create_task(self._read())
        chunk = b"\x00" * 16384
        try:
            async with asyncio.timeout(3.0):
                while not self.ended and self.sent < limit:
                    try:
                        room = min(
                            self.conn.local_flow_control_window(sid),
                            self.conn.max_outbound_frame_size,
                        )
                    except h2.exceptions.H2Error:
                        break
                    if room <= 0:
                        self.window.clear()
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.2):
                                await self.window.wait()
                        continue
                    self.conn.send_data(sid, chunk[:room])
                    self.sent += room
                    self.writer.write(self.conn.data_to_send())
                    await self.writer.drain()
        except TimeoutError:
            pass
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


@pytest.mark.parametrize("path", [UNARY, STREAM])
async def test_a_declared_4_GiB_message_is_refused_without_reading_its_body(
    served: Served, path: str
) -> None:
    """grpclib alone acknowledges the body as it reads it, so the sender could go on
    for 4 GiB; refused at the prefix, the server lets in at most its window."""
    async with connection(served.port) as (reader, writer):
        sender = _GiantSender(reader, writer)
        await sender.run(path, limit=4 * WINDOW)
    assert sender.status == str(Status.RESOURCE_EXHAUSTED.value), sender.ended
    assert sender.sent <= WINDOW, f"the server let in {sender.sent} bytes"
    assert served.echo.received == []


# ---------------------------------------------------------------- malformed bytes


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x0b", id="group"),
        pytest.param(b"\x08\x01", id="wrong-wire-type"),
        pytest.param(b"\x0a\xff\xff\xff\xff\x0f\x01", id="length-past-the-end"),
        pytest.param(b"\x0a\x01\xff", id="invalid-utf-8"),
        pytest.param(random.Random(7).randbytes(512), id="random-bytes"),
    ],
)
async def test_a_malformed_unary_request_is_invalid_argument_without_a_traceback(
    served: Served, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(GRPCError) as info:
        await _unary(served.port, body)
    assert info.value.status == Status.INVALID_ARGUMENT, info.value
    assert (info.value.message or "").startswith("malformed GetPoolRequest: ")
    assert len(info.value.message or "") < 200
    assert served.echo.received == []
    assert "Traceback" not in caplog.text
    lines = [r for r in caplog.records if r.name == "qvdc.transport.bounds"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and not lines[0].exc_info


async def _raw_stream(
    port: int, frames: list[bytes], *, tail: bytes = b""
) -> tuple[str, str, list[int]]:
    """Send each of ``frames`` as one gRPC message on a StreamHeartbeat-like stream, then
    ``tail`` as it is; return the grpc-status, grpc-message, and the sequences answered."""
    async with connection(port) as (reader, writer):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", STREAM),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc+proto"),
                ("te", "trailers"),
            ],
        )
        for frame in frames:
            conn.send_data(sid, b"\x00" + len(frame).to_bytes(4, "big") + frame)
        if tail:
            conn.send_data(sid, tail)
        writer.write(conn.data_to_send())
        status = message = ""
        data = b""
        async with asyncio.timeout(5.0):
            while not status:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.DataReceived):
                        data += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        headers = dict(event.headers)
                        status = headers.get(b"grpc-status", b"").decode()
                        message = headers.get(b"grpc-message", b"").decode()
                writer.write(conn.data_to_send())
        sequences = []
        while data:
            size = int.from_bytes(data[1:5], "big")
            sequences.append(compute.UpdateHeartbeatResponse.parse(data[5 : 5 + size]).sequence)
            data = data[5 + size :]
        return status, message, sequences


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            b"\x5a" + b"\xff\xff\xff\xff\x0f" + b"\x0a\x02p1" + b"\x00" * 6,
            id="report-length-2^32-1-with-10-bytes",
        ),
        pytest.param(b"\x98\x03" + b"\xff" * 10 + b"\x01", id="over-long-varint"),
        pytest.param(b"\x98\x03\xff", id="truncated-varint"),
        pytest.param(b"\x5a\x02\x13\x14", id="group-in-a-report"),
    ],
)
async def test_a_malformed_heartbeat_on_the_stream_is_invalid_argument(
    served: Served, frame: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    good = bytes(compute.UpdateHeartbeatRequest(node_id="n1", sequence=1))
    status, message, sequences = await _raw_stream(served.port, [good, frame])
    assert status == str(Status.INVALID_ARGUMENT.value), (status, message)
    assert message.startswith("malformed UpdateHeartbeatRequest")
    assert sequences == [1]  # the good one before it was answered
    assert len(served.echo.received) == 1
    assert "Traceback" not in caplog.text


async def test_a_stream_message_over_the_limit_is_resource_exhausted(served: Served) -> None:
    good = bytes(compute.UpdateHeartbeatRequest(node_id="n1", sequence=1))
    big = b"\x00" + (LIMIT + 1).to_bytes(4, "big") + b"\x0a" * 1024  # its first KiB
    status, message, sequences = await _raw_stream(served.port, [good], tail=big)
    assert status == str(Status.RESOURCE_EXHAUSTED.value), message
    assert str(LIMIT) in message
    assert sequences == [1]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"\x01\x00\x00\x00\x02\x0a\x00", "compressed", id="compressed-flag"),
        pytest.param(b"\x00\x00\x00\x00\x09\x0a\x01", "ended inside a message", id="cut-short"),
        pytest.param(b"\x00\x00\x00", "ended inside a message prefix", id="cut-in-the-prefix"),
    ],
)
async def test_broken_framing_is_invalid_argument(
    served: Served, raw: bytes, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with connection(served.port) as (reader, writer):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", UNARY),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc+proto"),
                ("te", "trailers"),
            ],
        )
        conn.send_data(sid, raw, end_stream=True)
        writer.write(conn.data_to_send())
        headers: dict[bytes, bytes] = {}
        async with asyncio.timeout(5.0):
            while b"grpc-status" not in headers:
                chunk = await reader.read(65536)
                assert chunk, "closed without a status"
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        headers.update(dict(event.headers))
    assert headers[b"grpc-status"] == str(Status.INVALID_ARGUMENT.value).encode()
    assert expected in headers.get(b"grpc-message", b"").decode()
    assert "Traceback" not in caplog.text


# ---------------------------------------------------------------- connections


@pytest.mark.parametrize(
    "hello",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(PREFACE[:10], id="half-a-preface"),
        pytest.param(PREFACE + EMPTY_SETTINGS, id="preface-then-silence"),
    ],
)
async def test_a_silent_connection_is_closed_after_the_idle_timeout(
    served: Served, hello: bytes
) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(hello)
        elapsed, received = await closed_within(reader, IDLE + 2.0)
    assert elapsed is not None, "still open"
    assert elapsed >= IDLE * 0.9, f"closed after {elapsed:.2f} s, before the idle timeout"
    if hello.startswith(PREFACE):
        assert _goaway(received) == 0  # GOAWAY NO_ERROR first


async def test_a_call_in_progress_keeps_its_connection_then_idleness_counts(
    served: Served,
) -> None:
    channel = served.channel()
    try:
        method = grpclib.client.UnaryUnaryMethod(
            channel, UNARY, storage.GetPoolRequest, storage.StoragePool
        )
        held = asyncio.create_task(method(storage.GetPoolRequest(id="hold"), timeout=10.0))
        await asyncio.sleep(IDLE * 3)
        assert not held.done()
        served.echo.release.set()
        assert (await held).id == "hold"
        protocol = channel._protocol
        assert protocol is not None and not protocol.connection.is_closing()
        await asyncio.sleep(IDLE * 3)
        assert channel._protocol is None or protocol.connection.is_closing()
    finally:
        channel.close()


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(PREFACE + b"\x7f" + random.Random(12).randbytes(4095), id="random-frames"),
        pytest.param(PREFACE + b"\xff\xff\xff\x04\x00\x00\x00\x00\x00", id="16-MiB-settings"),
        pytest.param(
            PREFACE + EMPTY_SETTINGS + b"\x00\x00\x08\x01\x05\x00\x00\x00\x01" + b"\xff" * 8,
            id="bad-hpack",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http-1.1"),
    ],
)
async def test_garbage_closes_the_connection_at_once(
    served: Served, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(garbage)
        elapsed, _ = await closed_within(reader, 2.0)
    assert elapsed is not None and elapsed < IDLE / 2, elapsed
    assert "Traceback" not in caplog.text


async def test_an_unknown_frame_type_is_ignored(served: Served) -> None:
    """grpclib alone raises NotImplementedError from data_received (a logged traceback)."""
    unknown = b"\x00\x00\x03\xfa\x00\x00\x00\x00\x00abc"  # type 0xfa, 3 bytes, stream 0
    async with connection(served.port) as (reader, writer):
        writer.write(PREFACE + EMPTY_SETTINGS + unknown)
        elapsed, _ = await closed_within(reader, IDLE / 2)
        assert elapsed is None, "closed on an unknown frame"
    channel = served.channel()
    try:
        method = grpclib.client.UnaryUnaryMethod(
            channel, UNARY, storage.GetPoolRequest, storage.StoragePool
        )
        assert (await method(storage.GetPoolRequest(id="a"), timeout=5.0)).id == "a"
    finally:
        channel.close()


async def test_500_idle_connections_do_not_slow_a_call_and_are_all_closed(
    served: Served,
) -> None:
    opened = []
    try:
        for _ in range(500):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(PREFACE + EMPTY_SETTINGS)
            opened.append((reader, writer))
        channel = served.channel()
        try:
            method = grpclib.client.UnaryUnaryMethod(
                channel, UNARY, storage.GetPoolRequest, storage.StoragePool
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert (await method(storage.GetPoolRequest(id="a"), timeout=5.0)).id == "a"
            assert loop.time() - started < 1.0
        finally:
            channel.close()
        waited = await asyncio.gather(*(closed_within(r, IDLE + 5.0) for r, _ in opened))
    finally:
        for _, writer in opened:
            writer.close()
    assert sum(1 for elapsed, _ in waited if elapsed is None) == 0


def test_h2_buffers_a_whole_frame_before_checking_its_length() -> None:
    """Why serving swaps h2's frame buffer, and what of it the swap relies on."""
    from h2.frame_buffer import FrameBuffer

    source = inspect.getsource(FrameBuffer.__next__)
    assert source.index("if len(self._data) < length + 9:") < source.index(
        "self._validate_frame_length(length)"
    )
    buffer = FrameBuffer(server=True)
    assert isinstance(buffer._data, bytearray) and hasattr(buffer, "max_frame_size")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    assert isinstance(conn.incoming_buffer, FrameBuffer)


async def test_a_frame_header_declaring_16_MiB_closes_the_connection_at_once(
    served: Served,
) -> None:
    async with connection(served.port) as (reader, writer):
        writer.write(PREFACE + EMPTY_SETTINGS + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01")
        elapsed, _ = await closed_within(reader, 2.0)
    assert elapsed is not None and elapsed < IDLE / 2, elapsed
