"""TLS contexts for the controller's server and its clients (node daemon, qvdcctl).

Both sides speak TLS 1.2 or newer only and offer ALPN ``h2``. The server asks every
client for a certificate signed by the client CA: with ``require_client_cert`` the
handshake fails without one (``CERT_REQUIRED``); without it a client may come
certificate-less (``CERT_OPTIONAL``, for bootstrap tokens) but a certificate it
does present must still verify. An expired certificate, or one from another CA,
fails the handshake either way: no HTTP/2 frame of that connection reaches grpclib.

**Reload without a restart.** grpclib binds one ``SSLContext`` when the server
starts. :class:`ReloadableServerContext` gives it a context whose ``sni_callback``
(called for every ClientHello, SNI or not) switches the handshake to the newest
context built from the files, so a new connection gets the new certificate, key
and client CA (the CA is replaced, not added to), while established connections
and their streams are untouched. A reload first builds the whole new context, so
a bad or half-written set of files leaves the old one serving. Verification mode
and protocol bounds come from the first context (OpenSSL copies them when the
connection is made); they never change between reloads.

A client context is cheap, and the node daemon builds one for every channel it
opens, so a rotated node certificate is used from the next reconnection on.
grpclib checks the server's certificate against the host it dials (or
``Configuration.ssl_target_name_override``).

:func:`close_at_once` is for a one-shot client (qvdcctl): closing a TLS connection is
a close_notify exchange the event loop must still run, so a process that ends its loop
right after ``Channel.close()`` leaves the socket open (a ResourceWarning). It reads
grpclib's private ``Channel._protocol.connection._transport``, pinned by
tests/qvdc/transport/test_tls.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from pathlib import Path

import grpclib.client

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
ALPN = ("h2",)


def _base(purpose: ssl._SSLMethod) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.set_alpn_protocols(list(ALPN))
    return ctx


def server_context(
    *, cert: Path, key: Path, ca: Path | None, require_client_cert: bool
) -> ssl.SSLContext:
    """The controller's context: its certificate chain and key, and client certificates
    verified against ``ca`` (required or optional, see the module docstring). ``ca``
    None: no client certificates at all (then ``require_client_cert`` must be false)."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile=cert, keyfile=key)
    if ca is None:
        if require_client_cert:
            raise ValueError("client certificates are required but no client CA is given")
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(
    *, ca: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client's context: the server must present a certificate from ``ca`` naming the
    host dialled; ``cert``/``key``, when given, are this client's own certificate."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx


def close_at_once(channel: grpclib.client.Channel) -> None:
    """Close ``channel`` and its socket without the TLS close_notify exchange (the
    socket is closed on the loop's next iteration). For clients about to exit."""
    protocol = getattr(channel, "_protocol", None)
    transport = getattr(getattr(protocol, "connection", None), "_transport", None)
    channel.close()
    if transport is not None:
        transport.abort()


def _fingerprint(path: Path | None) -> tuple[int, int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns


class ReloadableServerContext:
    """A server context whose certificate, key and client CA can be reloaded from their
    files while the server runs (module docstring). Not thread-safe: reload from the
    event loop's thread."""

    def __init__(
        self, *, cert: Path, key: Path, ca: Path | None, require_client_cert: bool
    ) -> None:
        self.cert = cert
        self.key = key
        self.ca = ca
        self.require_client_cert = require_client_cert
        self._stamp = self._files_stamp()
        self.context = self._build()
        """The context to give the server; it hands each handshake the current one."""
        self._current = self.context
        self.context.sni_callback = self._on_hello
        #: Successful reloads so far.
        self.reloads = 0

    def _build(self) -> ssl.SSLContext:
        return server_context(
            cert=self.cert, key=self.key, ca=self.ca, require_client_cert=self.require_client_cert
        )

    def _files_stamp(self) -> tuple[object, ...]:
        return tuple(_fingerprint(p) for p in (self.cert, self.key, self.ca))

    def _on_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        current = self._current
        if current is not self.context:
            connection.context = current

    @property
    def current(self) -> ssl.SSLContext:
        """The context new handshakes use."""
        return self._current

    def changed(self) -> bool:
        """Whether any of the files changed (inode, size or mtime) since the last load."""
        return self._files_stamp() != self._stamp

    def reload(self) -> None:
        """Build a context from the files and use it for new connections. Raises what
        loading raised (``OSError``, ``ssl.SSLError``, ``ValueError``), and then the
        previous context stays in use."""
        stamp = self._files_stamp()
        fresh = self._build()
        self._current = fresh
        self._stamp = stamp
        self.reloads += 1

    def try_reload(self, *, reason: str) -> bool:
        """:meth:`reload`, logging the outcome as one line; False if it failed."""
        try:
            self.reload()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error(
                "TLS reload (%s) failed, still serving the previous certificate: %s", reason, exc
            )
            return False
        log.info("TLS certificate reloaded (%s) from %s", reason, self.cert)
        return True

    async def watch(self, *, interval: float) -> None:
        """Every ``interval`` seconds, reload if the files changed (until cancelled).
        A failed reload is retried only once the files change again."""
        while True:
            await asyncio.sleep(interval)
            if self.changed() and not self.try_reload(reason="files changed"):
                self._stamp = self._files_stamp()
