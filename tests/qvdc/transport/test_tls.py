"""TLS on a real grpclib server on loopback: who is refused at the handshake, and
certificate reload under live streams (qvdc.transport.tls)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpclib.client
import grpclib.config
import grpclib.exceptions
import grpclib.server
import pytest
from grpclib.health.check import ServiceStatus
from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from qvdc.transport import tls
from tests.fixtures.pki import Files, Pki

SERVICE = "quantix.test"
TIMEOUT = 10.0

#: What a refused handshake surfaces as in a grpclib client: the TLS alert itself
#: (TLS 1.2, or the client's own check), or - in TLS 1.3, where the server checks the
#: client's certificate after the client's handshake is done - the connection
#: closed under the first call.
REFUSED = (ssl.SSLError, ConnectionError, grpclib.exceptions.StreamTerminatedError)


class _Named:
    """A servable only to name the service whose health is reported."""

    def __mapping__(self) -> dict[str, Any]:
        return {f"/{SERVICE}/Nothing": None}


class CountingHealth(Health):
    """grpclib's health service, counting the calls that reached a handler."""

    def __init__(self, status: ServiceStatus) -> None:
        super().__init__({_Named(): [status]})
        self.calls = 0

    async def Check(self, stream: Any) -> None:
        self.calls += 1
        await super().Check(stream)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@contextlib.asynccontextmanager
async def serving(
    context: ssl.SSLContext,
) -> AsyncIterator[tuple[int, CountingHealth, ServiceStatus]]:
    status = ServiceStatus()
    status.set(True)
    health = CountingHealth(status)
    server = grpclib.server.Server([health])
    await server.start("127.0.0.1", 0, ssl=context)
    try:
        port = server._server.sockets[0].getsockname()[1]
        yield port, health, status
    finally:
        server.close()
        await server.wait_closed()


def client(pki: Pki, files: Files | None, *, ca: Path | None = None) -> ssl.SSLContext:
    return tls.client_context(
        ca=ca or pki.ca,
        cert=files.cert if files else None,
        key=files.key if files else None,
    )


async def check(
    port: int, context: ssl.SSLContext, *, host: str = "127.0.0.1", name: str | None = None
) -> int:
    """One Check call (``name``: the server name checked, default ``host``); returns the
    serial number of the certificate the server showed."""
    config = grpclib.config.Configuration(ssl_target_name_override=name)
    channel = grpclib.client.Channel(host, port, ssl=context, config=config)
    try:
        async with asyncio.timeout(TIMEOUT):
            async with HealthStub(channel).Check.open() as stream:
                await stream.send_message(HealthCheckRequest(service=SERVICE), end=True)
                reply = await stream.recv_message()
                assert reply is not None and reply.status == HealthCheckResponse.SERVING
                assert stream.peer is not None
                cert = stream.peer.cert()
                assert cert is not None
                return int(cert["serialNumber"], 16)
    finally:
        channel.close()


def serial(files: Files) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number


def server_ctx(pki: Pki, *, require: bool = True) -> ssl.SSLContext:
    srv = pki.server()
    return tls.server_context(cert=srv.cert, key=srv.key, ca=pki.ca, require_client_cert=require)


async def test_mtls_call_succeeds_and_sees_the_servers_certificate(pki: Pki) -> None:
    srv = pki.server()
    ctx = tls.server_context(cert=srv.cert, key=srv.key, ca=pki.ca, require_client_cert=True)
    async with serving(ctx) as (port, health, _):
        assert await check(port, client(pki, pki.node("host-a"))) == serial(srv)
        assert await check(port, client(pki, pki.operator("alice")), host="localhost")
        assert health.calls == 2


@pytest.mark.parametrize("who", ["no certificate", "another CA", "expired"])
async def test_bad_client_certificates_are_refused_at_the_handshake(pki: Pki, who: str) -> None:
    files = {
        "no certificate": None,
        "another CA": pki.foreign_node("host-a"),
        "expired": pki.expired_node("host-a"),
    }[who]
    async with serving(server_ctx(pki)) as (port, health, _):
        with pytest.raises(REFUSED):
            await check(port, client(pki, files))
        assert health.calls == 0
        await check(port, client(pki, pki.node("host-a")))  # the server still serves
        assert health.calls == 1


@pytest.mark.parametrize("who", ["another CA", "expired"])
async def test_optional_client_certificates_must_still_verify(pki: Pki, who: str) -> None:
    files = pki.foreign_node("h") if who == "another CA" else pki.expired_node("h")
    async with serving(server_ctx(pki, require=False)) as (port, health, _):
        await check(port, client(pki, None))  # none at all is allowed (bootstrap tokens)
        with pytest.raises(REFUSED):
            await check(port, client(pki, files))
        assert health.calls == 1


async def test_a_client_refuses_a_server_from_another_ca(pki: Pki, tmp_path: Path) -> None:
    other = Pki(tmp_path / "other")
    async with serving(server_ctx(pki)) as (port, health, _):
        with pytest.raises(ssl.SSLCertVerificationError):
            await check(port, client(pki, pki.node("h"), ca=other.ca))
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await check(port, client(pki, pki.node("h")), name="qvdc.example")
        assert health.calls == 0


def _allow_tls_1_1(ctx: ssl.SSLContext) -> ssl.SSLContext:
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.1 only at level 0
    return ctx


async def test_tls_1_1_is_refused(pki: Pki) -> None:
    old = _allow_tls_1_1(client(pki, pki.node("h")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    # The control: this client does speak TLS 1.1 to a server that accepts it ...
    async with serving(_allow_tls_1_1(server_ctx(pki))) as (port, health, _):
        await check(port, old)
        assert health.calls == 1
    # ... and the controller's context refuses it at the handshake.
    async with serving(server_ctx(pki)) as (port, health, _):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            await check(port, old)
        tls12 = client(pki, pki.node("h"))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        await check(port, tls12)
        assert health.calls == 1


def test_contexts_are_tls_1_2_plus_with_h2(pki: Pki) -> None:
    ctx = server_ctx(pki)
    assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert server_ctx(pki, require=False).verify_mode is ssl.CERT_OPTIONAL
    c = client(pki, None)
    assert c.minimum_version is ssl.TLSVersion.TLSv1_2
    assert c.check_hostname and c.verify_mode is ssl.CERT_REQUIRED
    srv = pki.server()
    with pytest.raises(ValueError, match="no client CA"):
        tls.server_context(cert=srv.cert, key=srv.key, ca=None, require_client_cert=True)
    with pytest.raises(ValueError, match="needs its key"):
        tls.client_context(ca=pki.ca, cert=srv.cert)


async def watch_messages(port: int, context: ssl.SSLContext, out: asyncio.Queue[int]) -> None:
    channel = grpclib.client.Channel("127.0.0.1", port, ssl=context)
    try:
        async with HealthStub(channel).Watch.open() as stream:
            await stream.send_message(HealthCheckRequest(service=SERVICE), end=True)
            async for reply in stream:
                await out.put(reply.status)
    finally:
        channel.close()


async def test_reload_under_live_streams(pki: Pki, tmp_path: Path) -> None:
    """A reload swaps certificate, key and client CA for new connections only: a stream
    opened before keeps running; a node of the old CA, accepted before, is now refused."""
    srv = pki.server()
    reloadable = tls.ReloadableServerContext(
        cert=srv.cert, key=srv.key, ca=pki.ca, require_client_cert=True
    )
    old_node = client(pki, pki.node("host-a"))
    async with serving(reloadable.context) as (port, _health, status):
        updates: asyncio.Queue[int] = asyncio.Queue()
        watcher = asyncio.create_task(watch_messages(port, old_node, updates))
        try:
            async with asyncio.timeout(TIMEOUT):
                assert await updates.get() == HealthCheckResponse.SERVING
            old_serial = serial(srv)
            assert await check(port, old_node) == old_serial

            # Rotate everything: a new CA, the server's certificate from it, in place.
            new = Pki(tmp_path / "new")
            new_srv = new.server()
            srv.cert.write_bytes(new_srv.cert.read_bytes())
            srv.key.write_bytes(new_srv.key.read_bytes())
            pki.ca.write_bytes(new.ca.read_bytes())
            assert reloadable.changed()
            assert reloadable.try_reload(reason="test")
            assert not reloadable.changed()

            new_node = client(new, new.node("host-a"))
            assert await check(port, new_node) == serial(new_srv) != old_serial
            with pytest.raises(REFUSED):
                await check(port, old_node)  # the old CA is gone, not kept beside the new

            status.set(False)  # the stream opened before the reload still delivers
            async with asyncio.timeout(TIMEOUT):
                assert await updates.get() == HealthCheckResponse.NOT_SERVING
            assert not watcher.done()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def test_a_broken_reload_keeps_the_old_certificate(pki: Pki) -> None:
    srv = pki.server()
    reloadable = tls.ReloadableServerContext(
        cert=srv.cert, key=srv.key, ca=pki.ca, require_client_cert=True
    )
    node = client(pki, pki.node("h"))
    async with serving(reloadable.context) as (port, _, _):
        good = srv.cert.read_bytes()
        other = pki.server("other")  # a certificate whose key is not the one on disk
        srv.cert.write_bytes(other.cert.read_bytes())
        assert not reloadable.try_reload(reason="test")
        assert reloadable.reloads == 0
        srv.cert.write_bytes(good)
        assert await check(port, node) == serial(srv)


async def test_watch_reloads_when_the_files_change(pki: Pki) -> None:
    srv = pki.server()
    reloadable = tls.ReloadableServerContext(
        cert=srv.cert, key=srv.key, ca=pki.ca, require_client_cert=True
    )
    node = client(pki, pki.node("h"))
    watcher = asyncio.create_task(reloadable.watch(interval=0.01))
    try:
        async with serving(reloadable.context) as (port, _, _):
            first = serial(srv)
            assert await check(port, node) == first
            rotated = pki.server()  # the same paths, a new certificate
            async with asyncio.timeout(TIMEOUT):
                while reloadable.reloads == 0:  # noqa: ASYNC110 - a counter, no event
                    await asyncio.sleep(0.01)
            assert await check(port, node) == serial(rotated) != first
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def test_close_at_once_leaves_no_socket_open_when_the_loop_ends(pki: Pki) -> None:
    """A one-shot client (qvdcctl) closes its TLS channel and ends its loop at once: the
    socket is closed, not left to a ResourceWarning. Pins grpclib's private
    ``Channel._protocol.connection._transport``."""

    async def serve_and_call(closer: str) -> None:
        async with serving(server_ctx(pki)) as (port, _, _):
            done = asyncio.Event()

            def one_shot() -> None:
                async def call() -> None:
                    channel = grpclib.client.Channel(
                        "127.0.0.1", port, ssl=client(pki, pki.node("h"))
                    )
                    await HealthStub(channel).Check(HealthCheckRequest(service=SERVICE))
                    assert channel._protocol is not None
                    assert channel._protocol.connection._transport is not None
                    if closer == "at once":
                        tls.close_at_once(channel)
                    else:
                        channel.close()

                asyncio.run(call())
                done.set()

            await asyncio.to_thread(one_shot)
            assert done.is_set()

    def leaks(closer: str) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            asyncio.run(serve_and_call(closer))
            gc.collect()
        return [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]

    assert leaks("at once") == []
    # The control: grpclib's own close does leak, so the check above can see a leak. It
    # depends on timing on a loaded machine, so it gets three tries.
    assert any(leaks("close") for _ in range(3)), "plain close() never leaked: check is blind"
