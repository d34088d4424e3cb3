"""The controller over mTLS, end to end: its node daemon client, qvdcctl, the process's
refusal to start without a TLS choice, and certificate reload (SIGHUP, in-process) under
a live heartbeat stream. Real grpclib servers on loopback, real TLS, real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from node import client as node_client
from node import convert as node_convert
from node import hostfacts
from qvdc import app, cli
from qvdc.settings import ControllerSettings, EtcdSettings, TlsSettings
from qvdc.store.etcd import EtcdStore
from qvdc.transport import tls
from tests.fixtures.pki import Files, Pki
from tests.qvdc.api.helpers import TIMEOUT, controller_settings, eventually
from tests.qvdc.test_app import qvdc_process, wait_exit, wait_logged

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def mtls(settings: ControllerSettings, pki: Pki) -> ControllerSettings:
    server = pki.server()
    return settings.replace(
        tls=TlsSettings(cert=server.cert, key=server.key, client_ca=pki.ca, reload_interval=0)
    )


@pytest.fixture
async def controller(
    store: EtcdStore, etcd_settings: EtcdSettings, pki: Pki
) -> AsyncIterator[app.Controller]:
    c = app.Controller(store=store, settings=mtls(controller_settings(etcd_settings), pki))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def serial(files: Files) -> int:
    return x509.load_pem_x509_certificate(files.cert.read_bytes()).serial_number


async def served_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection to ``port`` is shown."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context), TIMEOUT
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def node_for(port: int, pki: Pki, files: Files | None) -> node_client.ControllerClient:
    return node_client.ControllerClient(
        endpoints=[("127.0.0.1", port)],
        rpc_timeout=TIMEOUT,
        recreate_after=1,
        logger=logging.getLogger("test.node.client"),
        channel_factory=node_client.tls_channel_factory(
            ca=pki.ca, cert=files.cert if files else None, key=files.key if files else None
        ),
    )


async def register(client: node_client.ControllerClient, hostname: str) -> str:
    return await client.register(
        hostname=hostname,
        management_ip="127.0.0.1",
        labels={},
        facts=hostfacts.HostFacts(hostname=hostname),
    )


async def test_reload_under_a_live_heartbeat_stream(controller: app.Controller, pki: Pki) -> None:
    """A node's stream opened before the reload keeps being acknowledged; new
    connections are shown the new certificate."""
    assert controller.tls is not None
    cert_path = controller.tls.cert
    old = serial(Files(cert=cert_path, key=controller.tls.key))
    probe_files = pki.node("probe")
    probe = tls.client_context(ca=pki.ca, cert=probe_files.cert, key=probe_files.key)
    assert await served_serial(controller.port, probe) == old
    client = node_for(controller.port, pki, pki.node("host-a"))
    try:
        node_id = await register(client, "host-a")
        async with client.heartbeat_stream() as stream:
            await stream.send(
                node_convert.Heartbeat(node_id=node_id, sequence=1, delta=False, pools=())
            )
            assert (await stream.recv()).sequence == 1

            rotated = pki.server()  # a new certificate at the same paths
            assert controller.reload_tls(reason="test")
            assert await served_serial(controller.port, probe) == serial(rotated) != old

            for sequence in (2, 3):  # the stream from before the reload still runs
                await stream.send(
                    node_convert.Heartbeat(node_id=node_id, sequence=sequence, delta=True, pools=())
                )
                assert (await stream.recv()).sequence == sequence
        assert client.channels_created == 1
    finally:
        client.close()
    again = node_for(controller.port, pki, pki.node("host-a"))
    try:
        assert await register(again, "host-a") == node_id  # a new connection, new cert
    finally:
        again.close()


@pytest.mark.parametrize("who", ["no certificate", "another CA", "expired"])
async def test_a_node_without_a_good_certificate_is_refused_and_nothing_written(
    controller: app.Controller, pki: Pki, who: str
) -> None:
    files = {
        "no certificate": None,
        "another CA": pki.foreign_node("host-b"),
        "expired": pki.expired_node("host-b"),
    }[who]
    client = node_for(controller.port, pki, files)
    try:
        with pytest.raises(node_client.ControllerUnavailable):
            await register(client, "host-b")
    finally:
        client.close()
    assert controller.view.node_id_by_hostname("host-b") is None
    assert controller.view.nodes() == []


# ---------------------------------------------------------------- qvdcctl


def qvdcctl(*argv: str, env: dict[str, str] | None = None) -> Result:
    base = {"QVDC_CONTEXT": "/nonexistent/context.json"}
    return CliRunner().invoke(cli.cli, list(argv), env={**base, **(env or {})})


def tls_flags(pki: Pki, files: Files) -> list[str]:
    return ["--tls-ca", str(pki.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)]


async def test_qvdcctl_over_mtls(controller: app.Controller, pki: Pki, tmp_path: Path) -> None:
    where = f"127.0.0.1:{controller.port}"
    alice = pki.operator("alice", "admin")

    ok = await asyncio.to_thread(
        qvdcctl, "--controller", where, *tls_flags(pki, alice), "nodes", "list"
    )
    assert ok.exit_code == 0, ok.output

    # The same through the environment, and through a context file with relative paths.
    env = {"QVDCCTL_TLS_CA": str(pki.ca), "QVDCCTL_TLS_CERT": str(alice.cert)}
    env["QVDCCTL_TLS_KEY"] = str(alice.key)
    by_env = await asyncio.to_thread(qvdcctl, "--controller", where, "pools", "list", env=env)
    assert by_env.exit_code == 0, by_env.output
    context = pki.directory / "context.json"
    context.write_text(
        json.dumps(
            {
                "controller": where,
                "tls_ca": pki.ca.name,
                "tls_cert": alice.cert.name,
                "tls_key": alice.key.name,
            }
        )
    )
    by_file = await asyncio.to_thread(qvdcctl, "pools", "list", env={"QVDC_CONTEXT": str(context)})
    assert by_file.exit_code == 0, by_file.output

    none = await asyncio.to_thread(qvdcctl, "--controller", where, "nodes", "list")
    assert none.exit_code == cli.EXIT_USAGE and "no TLS configured" in none.output

    plain = await asyncio.to_thread(qvdcctl, "--controller", where, "--insecure", "nodes", "list")
    assert plain.exit_code == cli.EXIT_UNREACHABLE, plain.output

    stranger = Pki(tmp_path / "stranger").operator("mallory", "admin")
    refused = await asyncio.to_thread(
        qvdcctl, "--controller", where, *tls_flags(pki, stranger), "nodes", "list"
    )
    assert refused.exit_code == cli.EXIT_UNREACHABLE, refused.output
    assert "may have refused this client's certificate" in refused.output


# ---------------------------------------------------------------- the processes


async def test_main_refuses_to_start_without_a_tls_choice(
    etcd_settings: EtcdSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = controller_settings(etcd_settings).replace(tls=TlsSettings())
    assert await app.main(settings) == app.EXIT_INVALID
    assert "no TLS configured" in caplog.text
    missing = tmp_path / "missing.crt"
    broken = settings.replace(tls=TlsSettings(cert=missing, key=missing, client_ca=missing))
    assert await app.main(broken) == app.EXIT_INVALID
    assert f"cannot load the TLS certificate {missing}" in caplog.text


@pytest.mark.e2e
async def test_the_process_serves_mtls_and_reloads_on_sighup(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path, pki: Pki
) -> None:
    server = pki.server()
    (endpoint,) = etcd_settings.endpoints
    args = (
        "--etcd", endpoint, "--etcd-prefix", etcd_settings.prefix,
        "--tls-cert", str(server.cert), "--tls-key", str(server.key),
        "--tls-client-ca", str(pki.ca), "--tls-reload-interval", "0",
    )  # fmt: skip
    async with qvdc_process(tmp_path, *args) as (proc, log_path):
        await wait_logged(proc, log_path, "(TLS, client certificates required)")
        text = log_path.read_text()
        port = int(text.split("serving on 127.0.0.1:")[1].split()[0])
        probe = pki.node("probe")
        context = tls.client_context(ca=pki.ca, cert=probe.cert, key=probe.key)
        old = await served_serial(port, context)
        assert old == serial(server)
        rotated = pki.server()
        proc.send_signal(signal.SIGHUP)
        await wait_logged(proc, log_path, "TLS certificate reloaded (SIGHUP)")
        assert await served_serial(port, context) == serial(rotated) != old
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, timeout=15.0) == app.EXIT_STOPPED
    assert "PLAIN TEXT" not in log_path.read_text()


@pytest.mark.e2e
async def test_the_process_warns_once_in_plain_text(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    (endpoint,) = etcd_settings.endpoints
    args = ("--etcd", endpoint, "--etcd-prefix", etcd_settings.prefix, "--tls-mode", "off")
    async with qvdc_process(tmp_path, *args) as (proc, log_path):
        await wait_logged(proc, log_path, "serving on")
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, timeout=15.0) == app.EXIT_STOPPED
    warnings = [line for line in log_path.read_text().splitlines() if "WARNING" in line]
    assert [line for line in warnings if "PLAIN TEXT" in line] == [
        next(line for line in warnings if "gRPC is PLAIN TEXT" in line)
    ]


NODE_ARGV = (
    sys.executable, "-m", "node", "--hostname", "host-a", "--heartbeat-interval", "1",
    "--libvirt-uri", "test:///default",
)  # fmt: skip


def spawn_node(tmp_path: Path, port: int, *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
    home = tmp_path / "node-home"
    home.mkdir(exist_ok=True)
    log_path = home / "node.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                *NODE_ARGV,
                "--controller",
                f"127.0.0.1:{port}",
                "--state-dir",
                str(home / "state"),
                *flags,
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    return proc, log_path


@pytest.mark.e2e
async def test_the_node_daemon_registers_over_mtls(
    controller: app.Controller, pki: Pki, tmp_path: Path
) -> None:
    files = pki.node("host-a")
    proc, log_path = spawn_node(
        tmp_path,
        controller.port,
        *("--tls-ca", str(pki.ca), "--tls-cert", str(files.cert), "--tls-key", str(files.key)),
    )
    try:
        await eventually(
            lambda: asyncio.sleep(0, controller.view.node_id_by_hostname("host-a")),
            lambda node_id: node_id is not None,
            timeout=30.0,
            what=f"host-a registered over mTLS; log:\n{log_path.read_text()}",
        )
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)
    assert "PLAIN TEXT" not in log_path.read_text()


@pytest.mark.e2e
async def test_the_node_daemon_needs_a_tls_choice(tmp_path: Path) -> None:
    proc, log_path = spawn_node(tmp_path, 1)
    assert await asyncio.to_thread(proc.wait, 30) == 2
    assert "no TLS configured" in log_path.read_text()
    proc, log_path = spawn_node(tmp_path, 1, "--tls-ca", str(tmp_path / "missing.crt"))
    assert await asyncio.to_thread(proc.wait, 30) == 2
    assert "cannot load the TLS files" in log_path.read_text()


@pytest.mark.e2e
async def test_the_node_daemon_refuses_a_certificate_for_another_host(
    tmp_path: Path, pki: Pki
) -> None:
    other = pki.node("host-b")  # the daemon runs as host-a
    flags = ("--tls-ca", str(pki.ca), "--tls-cert", str(other.cert), "--tls-key", str(other.key))
    proc, log_path = spawn_node(tmp_path, 1, *flags)
    assert await asyncio.to_thread(proc.wait, 30) == 2
    assert "names ['host-b'], not this node's hostname 'host-a'" in log_path.read_text()
