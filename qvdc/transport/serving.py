"""The controller's grpclib server: bounded messages, and idle connections closed.

:class:`Server` is grpclib's ``Server`` with three changes, all per connection:

- **Idle timeout.** A connection with no call in progress for ``idle_timeout``
  seconds is closed: a GOAWAY (NO_ERROR) is sent, then the socket is closed (at
  once, if the client is not even reading). This covers a connection that never
  sends, or never finishes, its HTTP/2 preface: it has no call either, so it gets
  the same bound (no shorter handshake timeout: one setting, one rule). A call in
  progress (a node's heartbeat stream, however quiet) keeps its connection; calls
  are counted by their handler tasks, so a call reset before its task ever ran is
  still counted as ended. One timer per connection, re-armed lazily: a busy
  connection costs nothing per call but two counter updates and a task callback.
- **Unknown frames ignored.** h2 reports an unknown frame type as an event grpclib
  has no handler for, and grpclib then raises from ``data_received`` (a traceback
  in the log, for 9 bytes from anyone); RFC 9113 says to ignore them, so they are.
- **Bounded messages.** The server installs :mod:`qvdc.transport.bounds`, which
  checks each message's declared size against its codec's ``max_message_bytes``
  before reading the body, and answers malformed bytes with INVALID_ARGUMENT.

- **Unknown methods answered as gRPC.** grpclib answers a path no service serves with
  a headers-only response that lacks ``content-type``, which gRPC clients (grpclib's
  own included) read as UNKNOWN "Missing content-type header" instead of
  UNIMPLEMENTED: upstream's volume RPCs, or a typo, looked like a server fault. The
  server's method table (:class:`_Methods`) answers an unknown path with a handler
  that ends the call UNIMPLEMENTED "Method not found" (as the Connect face says), sent
  as a normal trailers-only gRPC response.

- **Oversized frames refused at their header.** h2 checks a frame's declared length
  against the maximum frame size only once the whole frame has arrived, so a frame
  header declaring 16 MiB makes it buffer up to 16 MiB per connection before it
  refuses. The server's frame buffer refuses it as soon as its 9-byte header is in
  (one comparison per frame), and grpclib closes the connection.

Other garbage after (or instead of) the preface needs nothing here: h2 raises a
protocol error on the first bad frame and grpclib closes the connection at once.

The private dependencies: ``Server._protocol_factory`` (overridden, from grpclib's
own), ``Server._mapping`` (the method table grpclib looks paths up in with ``.get``),
``Handler._tasks``, ``H2Protocol.processor.processors``, ``Connection._connection`` (the
h2 connection, for the GOAWAY), and h2's ``H2Connection.incoming_buffer`` and
``FrameBuffer._data``. tests/qvdc/transport/test_serving.py pins each of them but the
method table, which tests/qvdc/api/test_unknown_methods.py pins by its behaviour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

import grpclib.const
import grpclib.server
import h2.events
import h2.exceptions
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol
from h2.errors import ErrorCodes
from h2.frame_buffer import FrameBuffer

from protos.google import protobuf as pb
from qvdc.transport import bounds

log = logging.getLogger(__name__)

IGNORED_EVENTS: tuple[type[h2.events.Event], ...] = (
    h2.events.UnknownFrameReceived,
    h2.events.AlternativeServiceAvailable,
)
"""h2 events a server receives that grpclib has no handler for; ignored."""


def _ignore(event: h2.events.Event) -> None:
    log.debug("ignored %s", type(event).__name__)


class _EagerFrameBuffer(FrameBuffer):
    """h2's frame buffer, refusing a frame whose header declares more than the maximum
    frame size before its body is buffered."""

    def __next__(self) -> Any:
        data = self._data
        if len(data) >= 9 and (data[0] << 16 | data[1] << 8 | data[2]) > self.max_frame_size:
            length = data[0] << 16 | data[1] << 8 | data[2]
            raise h2.exceptions.FrameTooLargeError(
                f"frame of {length} bytes declared, max {self.max_frame_size}"
            )
        return FrameBuffer.__next__(self)


class _Handler(grpclib.server.Handler):
    """grpclib's per-connection handler, telling its connection when calls start and end."""

    connection: _Protocol | None = None

    def accept(self, stream: Any, headers: Any, release_stream: Callable[[], Any]) -> None:
        super().accept(stream, headers, release_stream)
        watcher = self.connection
        if watcher is not None:
            watcher.call_started()
            self._tasks[stream].add_done_callback(watcher.call_ended)


class _Protocol(H2Protocol):
    """grpclib's HTTP/2 protocol, closing its connection when idle (module docstring)."""

    def __init__(
        self,
        handler: _Handler,
        config: Configuration,
        h2_config: Any,
        *,
        idle_timeout: float,
    ) -> None:
        super().__init__(handler, config, h2_config)
        handler.connection = self
        self._idle_timeout = idle_timeout
        self._calls = 0
        self._idle_since = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._transport: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self.connection._connection.incoming_buffer = _EagerFrameBuffer(server=True)
        processors = self.processor.processors
        for event in IGNORED_EVENTS:
            processors.setdefault(event, _ignore)
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._idle_since = self._loop.time()
        self._timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def call_started(self) -> None:
        self._calls += 1

    def call_ended(self, _task: object = None) -> None:
        self._calls -= 1
        if self._calls == 0 and self._loop is not None and self._transport is not None:
            self._idle_since = self._loop.time()
            if self._timer is None and not self._transport.is_closing():
                self._timer = self._loop.call_later(self._idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        self._timer = None
        loop = self._loop
        if self._calls or loop is None:
            return  # the last call to end re-arms the timer
        remaining = self._idle_since + self._idle_timeout - loop.time()
        if remaining > 0.001:
            self._timer = loop.call_later(remaining, self._check_idle)
            return
        self.close_idle()

    def close_idle(self) -> None:
        """Send GOAWAY and close the connection (it has no call in progress)."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        log.debug("closing a connection idle for %g s", self._idle_timeout)
        try:
            self.connection._connection.close_connection(error_code=ErrorCodes.NO_ERROR)
            self.connection.flush()
        except h2.exceptions.ProtocolError:
            pass  # h2 cannot send GOAWAY in this state: just close
        if transport.get_write_buffer_size():
            transport.abort()  # the client does not read: do not wait for it to
        self.processor.close(f"no call for {self._idle_timeout:g} s")


async def _method_not_found(stream: grpclib.server.Stream[Any, Any]) -> None:
    raise GRPCError(Status.UNIMPLEMENTED, "Method not found")


_NOT_FOUND = grpclib.const.Handler(
    _method_not_found, grpclib.const.Cardinality.UNARY_UNARY, pb.Empty, pb.Empty
)


class _Methods(dict[str, grpclib.const.Handler]):
    """The server's method table: an unknown path gets :func:`_method_not_found`."""

    def get(self, path: str, default: Any = None) -> grpclib.const.Handler:
        return super().get(path) or _NOT_FOUND


class Server(grpclib.server.Server):
    """grpclib's server with the per-connection bounds of the module docstring."""

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        codec: CodecBase,
        config: Configuration,
        idle_timeout: float,
    ) -> None:
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, got {idle_timeout!r}")
        bounds.install()
        super().__init__(handlers, codec=codec, config=config)
        self._mapping = _Methods(self._mapping)
        self.idle_timeout = idle_timeout

    def _protocol_factory(self) -> H2Protocol:
        # grpclib's own, with the subclasses above (the contract test pins the original).
        self.__gc_step__()
        handler = _Handler(
            self._mapping, self._codec, self._status_details_codec, self.__dispatch__
        )
        self._handlers.add(handler)
        return _Protocol(handler, self._config, self._h2_config, idle_timeout=self.idle_timeout)
