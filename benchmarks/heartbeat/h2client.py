"""A lean gRPC-over-HTTP/2 client for the load generator (asyncio protocol, no h2 state machine).

Why not grpclib's client: profiled against the bare ceiling server, a
grpclib client stream cost about 110 us of CPU per heartbeat round trip (h2's
state machine, events, queues), as much as the server it drives; on a
2-core machine the generator would then cap the very ceiling it measures.
This client frames gRPC messages itself and parses only the frames a gRPC
server sends, for about a fifth of that. The server sees ordinary HTTP/2 and
gRPC (headers through ``hpack``, flow control honoured both ways).

What it implements, and nothing more:

* connection preface, SETTINGS (and ACK), PING ACK, GOAWAY, RST_STREAM;
* flow control: outbound DATA never exceeds the connection or stream window
  the server granted (waits for WINDOW_UPDATE); inbound windows are opened to
  2^31-1 and replenished once half is used;
* streams: HEADERS (+ CONTINUATION) in, HEADERS out, DATA with gRPC
  length-prefixed messages, trailers with ``grpc-status``;
* at most the server's MAX_CONCURRENT_STREAMS open streams per connection
  (a new stream waits for a free slot).

Errors surface as :class:`CallError` (gRPC status != 0, reset stream) or
:class:`ConnectionError` (connection lost).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import struct
from typing import cast

import hpack

_DATA, _HEADERS, _RST, _SETTINGS, _PING, _GOAWAY, _WINDOW, _CONT = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_WINDOW = 2**31 - 1
_STREAM_ID = struct.Struct(">I")


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return (
        bytes((n >> 16, (n >> 8) & 0xFF, n & 0xFF, kind, flags))
        + _STREAM_ID.pack(stream_id)
        + payload
    )


class CallError(Exception):
    """The server ended a call with a non-zero gRPC status or reset the stream."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"grpc-status {status}: {message}")
        self.status = status


class ClientStream:
    """One HTTP/2 stream carrying one gRPC call (unary or bidi)."""

    __slots__ = (
        "_buffer",
        "_conn",
        "_messages",
        "_waiter",
        "closed",
        "error",
        "id",
        "recv_used",
        "send_window",
        "trailers",
    )

    def __init__(self, conn: H2ClientConnection, stream_id: int) -> None:
        self._conn = conn
        self.id = stream_id
        self.send_window = conn.peer_initial_window
        self.recv_used = 0
        self._buffer = bytearray()
        self._messages: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.error: BaseException | None = None
        self.trailers: dict[str, str] = {}

    # -- fed by the connection
    def _feed(self, payload: bytes) -> None:
        buf = self._buffer
        buf += payload
        while len(buf) >= 5:
            size = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + size:
                break
            self._messages.append(bytes(buf[5 : 5 + size]))
            del buf[: 5 + size]
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        self.closed = True
        if error is not None and self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by callers
    async def send(self, message: bytes, *, end: bool = False) -> None:
        """Send one gRPC message (optionally ending our side of the stream)."""
        await self._conn._send_data(self, len(message).to_bytes(5, "big") + message, end=end)

    async def recv(self) -> bytes | None:
        """The next message; None when the call ended OK; CallError when it failed."""
        while not self._messages:
            if self.closed:
                if self.error is not None:
                    raise self.error
                return None
            self._waiter = self._conn.loop.create_future()
            await self._waiter
            self._waiter = None
        return self._messages.popleft()

    async def end(self) -> None:
        """Half-close our side (empty DATA frame with END_STREAM)."""
        if not self.closed and not self._conn.closed:
            self._conn._write(_frame(_DATA, _END_STREAM, self.id))


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 connection to a gRPC server; open streams with :meth:`open_stream`."""

    def __init__(self, authority: str) -> None:
        self.loop = asyncio.get_running_loop()
        self._authority = authority
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 65536
        self._streams: dict[int, ClientStream] = {}
        self._next_id = 1
        self._pending_headers: tuple[int, int, bytearray] | None = None
        self.peer_initial_window = 65535
        self._peer_max_streams = 100
        self._max_frame = 16384
        self._send_window = 65535
        self._recv_used = 0
        self._window_waiters: list[asyncio.Future[None]] = []
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.closed = False
        self._close_error: BaseException | None = None

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float = 10.0) -> H2ClientConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, conn = await loop.create_connection(lambda: cls(f"{host}:{port}"), host, port)
            await conn.ready
        return conn

    # ---------------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, _MAX_WINDOW)
        self._transport.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW, 0, 0, struct.pack(">I", _MAX_WINDOW - 65535))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown(ConnectionError(f"connection lost: {exc}"))

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._write(_frame(_GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
            self._transport.close()
        self._shutdown(ConnectionError("connection closed"))

    def _shutdown(self, error: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self._close_error = error
        for stream in list(self._streams.values()):
            stream._finish(error)
        self._streams.clear()
        for waiter in [*self._window_waiters, *self._slot_waiters]:
            if not waiter.done():
                waiter.set_exception(error)
        if not self.ready.done():
            self.ready.set_exception(error)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if end - pos < 9 + length:
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            if kind == _DATA:
                self._on_data(sid, flags, payload)
            elif kind in (_HEADERS, _CONT):
                self._on_headers(kind, sid, flags, payload)
            elif kind == _WINDOW:
                self._on_window(sid, int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)
            elif kind == _SETTINGS:
                if not flags & _ACK:
                    self._on_settings(payload)
            elif kind == _PING:
                if not flags & _ACK:
                    self._write(_frame(_PING, _ACK, 0, payload))
            elif kind == _RST:
                stream = self._streams.pop(sid, None)
                if stream is not None:
                    code = int.from_bytes(payload[:4], "big")
                    stream._finish(CallError(-1, f"stream reset by server (code {code})"))
                    self._release_slot()
            elif kind == _GOAWAY:
                self._shutdown(ConnectionError("server sent GOAWAY"))
        del buf[:pos]

    # ---------------------------------------------------------------- frames in

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        size = len(payload)
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        self._recv_used += size
        if self._recv_used > _MAX_WINDOW // 2:
            self._write(_frame(_WINDOW, 0, 0, struct.pack(">I", self._recv_used)))
            self._recv_used = 0
        stream = self._streams.get(sid)
        if stream is None:
            return
        stream.recv_used += size
        if stream.recv_used > _MAX_WINDOW // 2:
            self._write(_frame(_WINDOW, 0, sid, struct.pack(">I", stream.recv_used)))
            stream.recv_used = 0
        if payload:
            stream._feed(payload)
        if flags & _END_STREAM:
            self._end_stream(sid, None)

    def _on_headers(self, kind: int, sid: int, flags: int, payload: bytes) -> None:
        if kind == _HEADERS:
            if flags & _PADDED:
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            if flags & _PRIORITY:
                payload = payload[5:]
            self._pending_headers = (sid, flags, bytearray(payload))
        else:
            assert self._pending_headers is not None, "CONTINUATION without HEADERS"
            self._pending_headers[2].extend(payload)
            flags = self._pending_headers[1] | (flags & _END_HEADERS)
            self._pending_headers = (self._pending_headers[0], flags, self._pending_headers[2])
        if not flags & _END_HEADERS:
            return
        sid, flags, block = self._pending_headers
        self._pending_headers = None
        headers = {str(k): str(v) for k, v in self._decoder.decode(bytes(block))}
        stream = self._streams.get(sid)
        if stream is None:
            return
        status = headers.get(":status")
        if status is not None and status != "200":
            self._streams.pop(sid, None)
            stream._finish(CallError(-1, f"HTTP status {status}"))
            self._release_slot()
            return
        if "grpc-status" in headers:
            stream.trailers = headers
        if flags & _END_STREAM:
            self._end_stream(sid, headers)

    def _end_stream(self, sid: int, headers: dict[str, str] | None) -> None:
        stream = self._streams.pop(sid, None)
        if stream is None:
            return
        trailers = headers if headers is not None else stream.trailers
        code = int(trailers.get("grpc-status", "0") or 0)
        error = CallError(code, trailers.get("grpc-message", "")) if code else None
        stream._finish(error)
        self._release_slot()

    def _on_window(self, sid: int, increment: int) -> None:
        if sid == 0:
            self._send_window += increment
        else:
            stream = self._streams.get(sid)
            if stream is None:
                return
            stream.send_window += increment
        waiters, self._window_waiters = self._window_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _on_settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            ident, value = struct.unpack(">HI", payload[i : i + 6])
            if ident == 0x3:
                self._peer_max_streams = value
            elif ident == 0x4:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
            elif ident == 0x5:
                self._max_frame = value
        self._write(_frame(_SETTINGS, _ACK, 0))
        if not self.ready.done():
            self.ready.set_result(None)

    # ---------------------------------------------------------------- frames out

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def open_stream(self, path: str) -> ClientStream:
        """Start a gRPC call (request headers sent); waits for a free stream slot."""
        while len(self._streams) >= self._peer_max_streams and not self.closed:
            waiter = self.loop.create_future()
            self._slot_waiters.append(waiter)
            await waiter
        if self.closed:
            raise self._close_error or ConnectionError("connection closed")
        sid = self._next_id
        self._next_id += 2
        stream = ClientStream(self, sid)
        self._streams[sid] = stream
        block = self._encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", self._authority),
                ("te", "trailers"),
                ("content-type", "application/grpc"),
                ("user-agent", "quantix-heartbeat-bench"),
            ]
        )
        self._write(_frame(_HEADERS, _END_HEADERS, sid, block))
        return stream

    async def _send_data(self, stream: ClientStream, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        while True:
            if self.closed:
                raise self._close_error or ConnectionError("connection closed")
            if stream.closed:
                raise stream.error or CallError(-1, "stream already closed")
            allowed = min(self._send_window, stream.send_window, self._max_frame)
            if allowed >= len(view):
                self._send_window -= len(view)
                stream.send_window -= len(view)
                self._write(_frame(_DATA, _END_STREAM if end else 0, stream.id, bytes(view)))
                return
            if allowed > 0:
                self._send_window -= allowed
                stream.send_window -= allowed
                self._write(_frame(_DATA, 0, stream.id, bytes(view[:allowed])))
                view = view[allowed:]
                continue
            waiter = self.loop.create_future()
            self._window_waiters.append(waiter)
            await waiter

    async def unary(self, path: str, message: bytes) -> bytes:
        """One unary call: the response message (CallError on a non-zero status)."""
        stream = await self.open_stream(path)
        await stream.send(message, end=True)
        reply = await stream.recv()
        while await stream.recv() is not None:
            pass
        if reply is None:
            raise CallError(-1, "no response message")
        return reply
