"""The controller's HTTP server: Connect RPCs, ``/healthz`` and ``/readyz``, on uvicorn.

One port (``HttpSettings.port``, 8080 by default as upstream's control plane) speaks
HTTP/1.1 and cleartext HTTP/2 with prior knowledge (h2c), through uvicorn's ``zttp``
protocol, which tells the two apart by the connection's first bytes.

* ``GET /healthz``: 200 while the process serves (liveness; nothing else is checked).
* ``GET /readyz``: 200 when the replica is ready, else 503 with the reason
  (:mod:`qvdc.http.health`).
* ``POST /<service>/<method>``: the Connect face (:mod:`qvdc.http.connect`); before the
  replica has listed the cluster state, UNAVAILABLE saying so.
* the plain pages of :class:`Router`'s ``pages``, by path prefix: ``/status``, the live
  status page (:mod:`qvdc.http.status_page`), and ``/metrics``.

The server binds when the replica starts, before the initial listing, so probes see
"alive, not ready" during a long start instead of a refused connection. uvicorn runs
inside the replica's event loop without its ``serve()`` (which would take over
SIGINT/SIGTERM from :func:`qvdc.app.main` and poll a flag every 0.1 s):
:meth:`HttpServer.start` is its ``startup`` on a socket bound by the caller and
:meth:`HttpServer.close` its ``shutdown``, bounded by ``close_timeout``. Access logs
are off (a line per heartbeat); refusals are logged as on the gRPC face.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from connectrpc.code import Code
from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol
from uvicorn.protocols.http.zttp_impl import ZttpProtocol

from qvdc.http import connect
from qvdc.http import tls as http_tls
from qvdc.http.health import NOT_LISTED, Readiness

log = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
#: An ASGI ``http`` handler for one path prefix (see :class:`Router`'s ``pages``).
Page = Callable[[Mapping[str, Any], Receive, Send], Awaitable[None]]


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Router:
    """The ASGI application: the health paths, then the Connect face."""

    def __init__(
        self,
        *,
        connect_app: connect.ConnectApp,
        readiness: Readiness,
        listed: Callable[[], bool],
        pages: Mapping[str, Page] | None = None,
    ) -> None:
        self._connect = connect_app
        self._readiness = readiness
        self._listed = listed
        #: Path prefix -> handler, for the plain HTTP pages (``/metrics``, the status
        #: page); a path is served by the longest prefix it starts with.
        self._pages = sorted((pages or {}).items(), key=lambda item: -len(item[0]))

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        path = scope["path"]
        method = scope["method"]
        if path in ("/healthz", "/readyz"):
            if method not in ("GET", "HEAD"):
                await _plain(send, 405, "GET only\n")
            elif path == "/healthz":
                await _plain(send, 200, "ok\n")
            else:
                ready, reason = await self._readiness.check()
                await _plain(send, 200 if ready else 503, f"{reason}\n")
            return
        for prefix, page in self._pages:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                await page(scope, receive, send)
                return
        if not self._connect.serves(path):
            await _plain(send, 404, "not found\n")
            return
        if not self._listed():
            await connect.send_error(send, Code.UNAVAILABLE, NOT_LISTED)
            return
        await self._connect(scope, receive, send)


class _BoundedHttp1(ZttpProtocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request does not arrive.

    uvicorn bounds an idle connection (``timeout_keep_alive``) but not a request being
    received: the first byte of one cancels that timer and nothing else is armed, so a
    client sending its headers (or its body) a byte a minute holds the connection for
    ever. Here the first byte of a request arms ``read_timeout``, and the request's last
    byte (its body complete) disarms it; past it the connection is closed.
    """

    read_timeout = 30.0
    _read_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        cycle = self.cycle
        reading = cycle is None or cycle.response_complete or cycle.more_body
        if reading and self._read_timer is None and not self.transport.is_closing():
            self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)
        elif not reading and self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            return  # the request arrived; its handler is answering
        log.info("closing a connection whose request took over %g s to arrive", self.read_timeout)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        super().connection_lost(exc)


def _protocol(
    read_timeout: float, certificates: http_tls.PeerCertificates | None = None
) -> type[AutoZttpProtocol]:
    """uvicorn's HTTP/1.1-or-h2c dispatcher, with :class:`_BoundedHttp1` for HTTP/1.1;
    each TLS connection's client certificate is recorded in ``certificates``."""

    class Http1(_BoundedHttp1):
        pass

    Http1.read_timeout = read_timeout

    class Dispatch(AutoZttpProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if certificates is not None:
                certificates.opened(transport)  # before any request is read
            super().connection_made(transport)

        def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
            protocol_class: type[asyncio.Protocol] = ZttpH2Protocol if http2 else Http1
            protocol = protocol_class(  # type: ignore[call-arg]
                config=self.config,
                server_state=self.server_state,
                app_state=self.app_state,
                _loop=self.loop,
            )
            self.transport.set_protocol(protocol)
            protocol.connection_made(self.transport)
            if initial_data:
                protocol.data_received(initial_data)

    return Dispatch


class HttpServer:
    """uvicorn serving :class:`Router` on a bound socket (module docstring); HTTPS when
    started with an ``ssl_context`` (:mod:`qvdc.http.tls`)."""

    def __init__(
        self,
        app: Router,
        *,
        keep_alive_timeout: float,
        close_timeout: float,
        max_connections: int | None = None,
        read_timeout: float = 30.0,
        certificates: http_tls.PeerCertificates | None = None,
    ) -> None:
        self._app = app
        self._certificates = certificates
        self._read_timeout = read_timeout
        self._keep_alive_timeout = keep_alive_timeout
        self._close_timeout = close_timeout
        self._max_connections = max_connections
        self._uvicorn: uvicorn.Server | None = None
        self._sock: socket.socket | None = None

    def _config(self, ssl_context: ssl.SSLContext | None) -> uvicorn.Config:
        def given(_config: uvicorn.Config, _default: object) -> ssl.SSLContext:
            assert ssl_context is not None
            return ssl_context

        config = uvicorn.Config(
            self._app,
            http=_protocol(self._read_timeout, self._certificates),  # HTTP/1.1 and h2c
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,  # the peer address is the TCP peer's (qvdc.http.gate)
            date_header=False,
            timeout_keep_alive=max(1, round(self._keep_alive_timeout)),
            timeout_graceful_shutdown=max(1, round(self._close_timeout)),
            limit_concurrency=self._max_connections,
            ssl_context_factory=given if ssl_context is not None else None,
        )
        config.load()
        return config

    async def start(
        self, *, sock: socket.socket, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Serve on ``sock`` (bound, not yet listening; closed by :meth:`close`), over TLS
        with ``ssl_context``."""
        config = self._config(ssl_context)
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._uvicorn, self._sock = server, sock

    async def close(self) -> None:
        """Stop accepting, let calls in progress finish (bounded), close the socket."""
        sock, self._sock = self._sock, None
        server = self._uvicorn
        if sock is None or server is None:
            return
        server.should_exit = True
        try:
            async with asyncio.timeout(self._close_timeout + 1):
                await server.shutdown(sockets=[sock])
        except TimeoutError:
            log.warning("HTTP connections still open %g s after close", self._close_timeout)
