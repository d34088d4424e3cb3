"""The node daemon's bootstrap flow against a real controller over real TLS (issue 13 item 2).

A host with no certificate yet has ``bootstrap_token_file``: the node registers with
``authorization: Bearer <token>``, waits (no heartbeat is sent) until its certificate is
put at ``tls_cert``/``tls_key``, then reconnects presenting it and heartbeats with the
same node id. A wrong, expired or reused token is refused through the node's own client
(UNAUTHENTICATED / PERMISSION_DENIED, as qvdc.api.auth answers) and etcd is unchanged.
The controller is a real ``qvdc.app.Controller`` on loopback in ``tls.mode = "tls"``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpclib.const
import pytest

from node import app as app_mod
from node import client as client_mod
from node import hostfacts
from node import settings as settings_mod
from qvdc.app import Controller
from qvdc.security import certs
from qvdc.settings import AuthSettings, EtcdSettings, TlsSettings
from qvdc.store.etcd import EtcdStore
from tests.fixtures.pki import Pki
from tests.qvdc.api.helpers import controller_settings

ROOT = Path(__file__).resolve().parents[2]
GOOD = "bootstrap-good-0123456789abcdef"
EXPIRED = "bootstrap-expired-0123456789abc"
WRONG = "bootstrap-wrong-0123456789abcdef"

Eventually = Callable[..., Awaitable[None]]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "pki")
    pki.server()
    now = datetime.datetime.now(datetime.UTC)
    (tmp_path / "tokens.toml").write_text(
        f"""
[[bootstrap]]
id = "rack-7"
token = "{GOOD}"
expires = {(now + datetime.timedelta(hours=2)).isoformat()}

[[bootstrap]]
id = "old"
token = "{EXPIRED}"
expires = {(now - datetime.timedelta(minutes=1)).isoformat()}
"""
    )
    return pki


@pytest.fixture
async def controller(
    store: EtcdStore, etcd_settings: EtcdSettings, pki: Pki, tmp_path: Path
) -> AsyncIterator[Controller]:
    server = certs.paths(pki.directory, certs.CONTROLLER_NAME)
    settings = controller_settings(etcd_settings, grace=60.0).replace(
        tls=TlsSettings(mode="tls", cert=server[0], key=server[1], client_ca=pki.ca),
        auth=AuthSettings(tokens_file=tmp_path / "tokens.toml"),
    )
    assert settings.auth_enabled
    c = Controller(store=store, settings=settings)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "bootstrap.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def cert_paths(pki: Pki, hostname: str) -> tuple[Path, Path]:
    return certs.paths(pki.directory, certs.node_name(hostname))


async def snapshot(store: EtcdStore) -> dict[str, tuple[int, bytes]]:
    kvs, _ = await store.get_prefix("", timeout=5.0)
    return {kv.key: (kv.mod_revision, kv.value) for kv in kvs}


async def settled(store: EtcdStore, *, still: float = 0.5) -> dict[str, tuple[int, bytes]]:
    """etcd once the replica's own start-up writes are done (unchanged for ``still`` s)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(15):
        last = await snapshot(store)
        since = loop.time()
        while "election/aggregator" not in last or loop.time() - since < still:
            await asyncio.sleep(0.05)
            now = await snapshot(store)
            if now != last:
                last, since = now, loop.time()
    return last


def node_client(
    controller: Controller, pki: Pki, hostname: str, token: Path
) -> client_mod.ControllerClient:
    """The node daemon's own client, built as NodeApp builds it for a bootstrap host."""
    cert, key = cert_paths(pki, hostname)
    bootstrap = client_mod.Bootstrap(token_file=token, cert=cert, key=key)
    return client_mod.ControllerClient(
        endpoints=[("127.0.0.1", controller.port)],
        rpc_timeout=5.0,
        recreate_after=3,
        logger=logging.getLogger("test.node.client"),
        channel_factory=client_mod.tls_channel_factory(
            ca=pki.ca, cert=cert, key=key, cert_optional=True
        ),
        bootstrap=bootstrap,
    )


async def register(client: client_mod.ControllerClient, hostname: str) -> str:
    return await client.register(
        hostname=hostname,
        management_ip="10.1.0.5:9090",
        labels={},
        facts=hostfacts.HostFacts(hostname=hostname),
    )


async def test_token_registers_then_the_node_heartbeats_with_its_certificate(
    controller: Controller,
    pki: Pki,
    tmp_path: Path,
    node_settings: Callable[..., settings_mod.NodeSettings],
    run_app: Callable[[app_mod.NodeApp], Awaitable[Callable[[], Awaitable[None]]]],
    eventually: Eventually,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="node.heartbeat")
    cert, key = cert_paths(pki, "host-new")
    settings = node_settings(
        f"127.0.0.1:{controller.port}",
        hostname="host-new",
        tls_ca=pki.ca,
        tls_cert=cert,
        tls_key=key,
        bootstrap_token_file=token_file(tmp_path, GOOD),
    )
    daemon = app_mod.NodeApp(settings=settings)
    stop = await run_app(daemon)
    try:
        await eventually(
            lambda: controller.view.node_id_by_hostname("host-new") is not None,
            what="host-new registered with its bootstrap token",
        )
        node_id = controller.view.node_id_by_hostname("host-new")
        # The view can see the registration before the daemon has read its answer.
        await eventually(lambda: daemon.heartbeat.node_id == node_id, what="the daemon took its id")
        assert "by bootstrap token rack-7" in caplog.text
        # No certificate yet: the node waits, sends no heartbeat, says what to do once.
        await eventually(
            lambda: "waiting for this node's certificate" in caplog.text,
            what="the waiting line",
        )
        await asyncio.sleep(0.5)
        assert daemon.heartbeat.stats.sent == 0
        waiting = [r for r in caplog.records if "waiting for this node's certificate" in r.message]
        assert [r.levelno for r in waiting][:1] == [logging.WARNING]
        assert all(r.levelno == logging.DEBUG for r in waiting[1:])
        assert "qvdcctl certs issue-node" in waiting[0].message
        assert str(cert) in waiting[0].message
        assert GOOD not in caplog.text  # the token itself is never logged

        pki.node("host-new")  # the operator issues the certificate and puts it in place
        await eventually(
            lambda: daemon.heartbeat.stats.acknowledged >= 2,
            what="heartbeats acknowledged over the certificate",
        )
        assert daemon.heartbeat.node_id == node_id  # same node, no re-registration
        assert daemon.heartbeat.stats.registrations == 1
        assert "reconnecting to present it" in caplog.text
    finally:
        await stop()


@pytest.mark.parametrize(
    ("token", "status", "words"),
    [
        (WRONG, grpclib.const.Status.UNAUTHENTICATED, ["unknown bearer token"]),
        (EXPIRED, grpclib.const.Status.UNAUTHENTICATED, ["bootstrap token old expired"]),
    ],
    ids=["wrong", "expired"],
)
async def test_wrong_or_expired_token_is_refused_and_nothing_is_written(
    controller: Controller,
    store: EtcdStore,
    pki: Pki,
    tmp_path: Path,
    token: str,
    status: grpclib.const.Status,
    words: list[str],
) -> None:
    before = await settled(store)
    client = node_client(controller, pki, "host-x", token_file(tmp_path, token))
    try:
        with pytest.raises(client_mod.Rejected) as info:
            await register(client, "host-x")
    finally:
        client.close()
    assert info.value.status is status, info.value
    for word in words:
        assert word in str(info.value)
    assert token not in str(info.value)
    assert await snapshot(store) == before
    assert controller.view.node_id_by_hostname("host-x") is None


async def test_reused_token_is_refused_for_a_registered_hostname(
    controller: Controller, store: EtcdStore, pki: Pki, tmp_path: Path
) -> None:
    token = token_file(tmp_path, GOOD)
    first = node_client(controller, pki, "host-r", token)
    try:
        node_id = await register(first, "host-r")
        # Without its certificate the node makes no heartbeat call at all.
        with pytest.raises(client_mod.CertificatePending, match="qvdcctl certs issue-node"):
            async with first.heartbeat_stream():
                pass
    finally:
        first.close()
    before = await settled(store)
    again = node_client(controller, pki, "host-r", token)  # e.g. the daemon restarted
    try:
        with pytest.raises(client_mod.Rejected) as info:
            await register(again, "host-r")
    finally:
        again.close()
    assert info.value.status is grpclib.const.Status.PERMISSION_DENIED
    assert "already registered" in str(info.value)
    assert await snapshot(store) == before
    assert controller.view.node_id_by_hostname("host-r") == node_id


async def test_certificate_in_place_means_the_token_is_not_sent(
    controller: Controller, store: EtcdStore, pki: Pki, tmp_path: Path
) -> None:
    """With its certificate the node registers as itself, even with a token file that is
    gone (it is read only while there is no certificate)."""
    pki.node("host-c")
    client = node_client(controller, pki, "host-c", tmp_path / "deleted.token")
    try:
        assert await register(client, "host-c")
        assert await register(client, "host-c")  # re-registration: the certificate's right
    finally:
        client.close()


def test_settings_need_tls_and_certificate_paths(tmp_path: Path) -> None:
    token = token_file(tmp_path, GOOD)
    base = {"controllers": ["127.0.0.1:1"], "hostname": "h", "bootstrap_token_file": token}
    with pytest.raises(settings_mod.SettingsError, match="never sent in plain text"):
        settings_mod.NodeSettings(**base, insecure=True)  # type: ignore[arg-type]
    with pytest.raises(settings_mod.SettingsError, match="tls_cert and tls_key"):
        settings_mod.NodeSettings(**base, tls_ca=tmp_path / "ca.crt")  # type: ignore[arg-type]


def test_daemon_exits_2_without_a_readable_token(pki: Pki, tmp_path: Path) -> None:
    cert, key = cert_paths(pki, "host-z")
    done = subprocess.run(
        [
            sys.executable, "-m", "node", "--controller", "127.0.0.1:1",
            "--hostname", "host-z", "--state-dir", str(tmp_path / "state"),
            "--libvirt-uri", "test:///default", "--tls-ca", str(pki.ca),
            "--tls-cert", str(cert), "--tls-key", str(key),
            "--bootstrap-token-file", str(tmp_path / "missing.token"),
        ],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "cannot read the bootstrap token" in done.stderr
    assert "missing.token" in done.stderr


def spawn_bootstrap_node(
    controller: Controller, pki: Pki, tmp_path: Path, hostname: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """``python -m node`` with a bootstrap token (by environment) and no certificate yet."""
    cert, key = cert_paths(pki, hostname)
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "node", "--controller", f"127.0.0.1:{controller.port}",
                "--hostname", hostname, "--state-dir", str(tmp_path / "state"),
                "--libvirt-uri", "test:///default", "--heartbeat-interval", "0.5",
                "--reconnect-max", "0.5", "--tls-ca", str(pki.ca),
                "--tls-cert", str(cert), "--tls-key", str(key),
            ],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env={
                **os.environ, "PYTHONPATH": str(ROOT),
                "QVDC_NODE_BOOTSTRAP_TOKEN_FILE": str(token_file(tmp_path, GOOD)),
            },
        )  # fmt: skip
    return proc, log_path


@pytest.mark.e2e
async def test_the_daemon_process_bootstraps_then_heartbeats_with_its_certificate(
    controller: Controller, pki: Pki, tmp_path: Path, eventually: Eventually
) -> None:
    """``qvdc-node --bootstrap-token-file`` as a process: registered by the token, silent
    until its certificate is copied in, then heartbeating as itself."""
    proc, log_path = spawn_bootstrap_node(controller, pki, tmp_path, "host-p")
    try:
        await eventually(
            lambda: "waiting for this node's certificate" in log_path.read_text(),
            within=30.0,
            what="the daemon registered and waiting for its certificate",
        )
        node_id = controller.view.node_id_by_hostname("host-p")
        assert node_id is not None
        assert controller.monitor.last_heartbeat_wall(node_id) is None  # no heartbeat yet

        pki.node("host-p")
        await eventually(
            lambda: controller.monitor.last_heartbeat_wall(node_id) is not None,
            within=30.0,
            what="a heartbeat over the node's certificate",
        )
        assert controller.view.node_id_by_hostname("host-p") == node_id
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)
    text = log_path.read_text()
    assert "reconnecting to present it" in text and GOOD not in text


async def test_an_unreadable_token_is_a_refusal_not_a_call(pki: Pki, tmp_path: Path) -> None:
    """A token file emptied after the start: RegisterNode is not sent, and the daemon's
    retry loop gets a Rejected naming the file (it logs it and backs off)."""
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    cert, key = cert_paths(pki, "host-e")
    client = client_mod.ControllerClient(
        endpoints=[("127.0.0.1", 1)],
        rpc_timeout=1.0,
        recreate_after=3,
        logger=logging.getLogger("test.node.client"),
        channel_factory=client_mod.tls_channel_factory(
            ca=pki.ca, cert=cert, key=key, cert_optional=True
        ),
        bootstrap=client_mod.Bootstrap(token_file=empty, cert=cert, key=key),
    )
    try:
        assert client.awaiting_certificate
        with pytest.raises(client_mod.Rejected, match=r"empty\.token: holds no token") as info:
            await register(client, "host-e")
        assert info.value.status is grpclib.const.Status.FAILED_PRECONDITION
    finally:
        client.close()
