"""TLS of the HTTP port: the gRPC port's certificate, following its reloads.

The HTTP server presents the same certificate and key as the gRPC server
(``tls.cert``, ``tls.key``) and offers ALPN ``h2`` and ``http/1.1``, so HTTPS and HTTP/2
clients both connect. It asks for no client certificate: Connect callers identify with a
bearer token (:mod:`qvdc.http.gate`). When the gRPC port's context is reloaded (SIGHUP,
or the files changed: :class:`qvdc.transport.tls.ReloadableServerContext`), the next
handshake on the HTTP port builds its context again from the same files, in the same
``sni_callback`` hook the gRPC context uses, so one reload covers both ports and no
second watcher runs.
"""

from __future__ import annotations

import logging
import ssl

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
        ctx = tls.server_context(cert=grpc.cert, key=grpc.key, ca=None, require_client_cert=False)
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
