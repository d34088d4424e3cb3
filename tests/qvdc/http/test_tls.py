"""The HTTP port's TLS: the gRPC port's certificate, ALPN h2 and http/1.1, and a reload
of the gRPC context taken up by the next HTTPS handshake."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from qvdc.http import tls as http_tls
from qvdc.transport import tls
from tests.fixtures.pki import Pki


async def handshake(port: int, ca: Path, alpn: list[str]) -> tuple[str | None, bytes]:
    """(the ALPN protocol chosen, the server certificate's DER) of one TLS handshake."""
    client = ssl.create_default_context(cafile=ca)
    client.set_alpn_protocols(alpn)
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client, server_hostname="localhost"
    )
    try:
        sslobj = writer.get_extra_info("ssl_object")
        return sslobj.selected_alpn_protocol(), sslobj.getpeercert(binary_form=True)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_https_follows_the_grpc_certificate_and_its_reloads(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    first = pki.server()
    grpc = tls.ReloadableServerContext(
        cert=first.cert, key=first.key, ca=pki.ca, require_client_cert=False
    )
    following = http_tls.FollowingContext(grpc)

    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=following.context)
    port = server.sockets[0].getsockname()[1]
    try:
        protocol, before = await handshake(port, pki.ca, ["http/1.1"])
        assert protocol == "http/1.1"
        assert (await handshake(port, pki.ca, ["h2", "http/1.1"]))[0] == "h2"
        assert before == ssl.PEM_cert_to_DER_cert(first.cert.read_text())

        pki.server()  # a new certificate and key in the same files
        assert (await handshake(port, pki.ca, ["h2"]))[1] == before  # not reloaded yet
        grpc.reload()  # what SIGHUP or the file watch does for the gRPC port
        _, after = await handshake(port, pki.ca, ["http/1.1"])
        assert after != before
        assert after == ssl.PEM_cert_to_DER_cert(first.cert.read_text())
    finally:
        server.close()
        await server.wait_closed()


async def test_a_presented_client_certificate_is_kept_while_its_connection_is_open(
    tmp_path: Path,
) -> None:
    pki = Pki(tmp_path)
    server_files, node = pki.server(), pki.node("host-a")
    grpc = tls.ReloadableServerContext(
        cert=server_files.cert, key=server_files.key, ca=pki.ca, require_client_cert=False
    )
    following = http_tls.FollowingContext(grpc)
    table = http_tls.PeerCertificates()
    seen: list[tuple[str, str]] = []

    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        table.opened(writer.transport)
        host, port = writer.get_extra_info("peername")[:2]
        seen.append((str(host), str(port)))
        writer.write(b"x")
        await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=following.context)
    port = server.sockets[0].getsockname()[1]

    async def connect(with_cert: bool) -> asyncio.StreamWriter:
        context = ssl.create_default_context(cafile=pki.ca)
        if with_cert:
            context.load_cert_chain(node.cert, node.key)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        assert await reader.read(1) == b"x"
        return writer

    try:
        first = await connect(with_cert=True)
        cert = table.of(*seen[0])
        assert cert is not None and ("DNS", "host-a") in cert["subjectAltName"]
        anonymous = await connect(with_cert=False)  # optional: no certificate, no entry
        assert table.of(*seen[1]) is None and len(table) == 1
        first.close()
        await first.wait_closed()
        async with asyncio.timeout(5):
            while table.of(*seen[0]) is not None:  # noqa: ASYNC110 - the server notices the close
                await asyncio.sleep(0.01)
        third = await connect(with_cert=True)
        assert len(table) == 1 and table.of(*seen[2]) is not None  # the closed one pruned
        for writer in (anonymous, third):
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
