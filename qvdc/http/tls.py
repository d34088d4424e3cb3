"""TLS of the HTTP port: the gRPC port's certificate, following its reloads.

The HTTP server presents the same certificate and key as the gRPC server
(``tls.cert``, ``tls.key``) and offers ALPN ``h2`` and ``http/1.1``, so HTTPS and HTTP/2
clients both connect. It asks for a client certificate from ``tls.client_ca`` but does not
require one (browsers and bearer-token callers have none): a certificate that is presented
must verify, or the handshake fails. :class:`PeerCertificates` keeps each open
connection's verified certificate by peer address, so the gate (:mod:`qvdc.http.gate`)
identifies a Connect or status-page caller by its certificate exactly as the gRPC port
does, else by its bearer token. When the gRPC port's context is reloaded (SIGHUP,
or the files changed: :class:`qvdc.transport.tls.ReloadableServerContext`), the next
handshake on the HTTP port builds its context again from the same files, in the same
``sni_callback`` hook the gRPC context uses, so one reload covers both ports and no
second watcher runs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from qvdc.transport import tls

log = logging.getLogger(__name__)

ALPN = ("h2", "http/1.1")


class FollowingContext:
    """An HTTP server context that follows ``grpc`` (module docstring)."""

    def __init__(self, grpc: tls.ReloadableServerContext) -> None:
        self._grpc = grpc
        self._seen = grpc.current
        self.context = self._build()
        """The context to give the server; it hands each handshake the current one."""
        self._current = self.context
        self.context.sni_callback = self._on_hello

    def _build(self) -> ssl.SSLContext:
        grpc = self._grpc
        ctx = tls.server_context(
            cert=grpc.cert, key=grpc.key, ca=grpc.ca, require_client_cert=False
        )
        ctx.set_alpn_protocols(list(ALPN))
        return ctx

    def _on_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        current = self._grpc.current
        if current is not self._seen:
            self._seen = current
            try:
                self._current = self._build()
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.error("HTTP TLS reload failed, still serving the previous certificate: %s", exc)
        if self._current is not self.context:
            connection.context = self._current


class PeerCertificates:
    """The verified client certificate of each open TLS connection, by peer address.

    The HTTP server records a connection when it is made (after the handshake); the gate
    looks its caller up by the peer address the request names (``scope["client"]``, the
    TCP peer's: proxy headers are off). An entry lives as long as its transport: one
    whose transport is closing is never returned, and such entries are dropped whenever
    a connection is recorded, so the table holds at most the open connections.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], tuple[asyncio.BaseTransport, Mapping[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, transport: asyncio.BaseTransport) -> None:
        """Record ``transport``'s peer certificate, if it presented one."""
        for key, (other, _cert) in list(self._open.items()):
            if other.is_closing():
                del self._open[key]
        cert = transport.get_extra_info("peercert")
        peer = transport.get_extra_info("peername")
        if cert and isinstance(peer, tuple) and len(peer) >= 2:
            self._open[(str(peer[0]), str(peer[1]))] = (transport, cert)

    def of(self, host: str, port: str) -> Mapping[str, Any] | None:
        """The certificate of the open connection from ``host``:``port``, if any."""
        entry = self._open.get((host, port))
        if entry is None or entry[0].is_closing():
            return None
        return entry[1]
