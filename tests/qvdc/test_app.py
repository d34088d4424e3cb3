"""The replica's root (``qvdc.app``): supervision, signals, the shutdown flush, keepalive.

Real etcd throughout. The process tests run the real entry point (``python -m
qvdc``); the fault that kills a root task there is real too: etcd's auth is
switched on under a running replica and etcd restarted, so the view's watch,
re-opened without credentials, is cancelled by etcd (a StoreError the view does
not retry). The in-process tests use :class:`FaultyStore` for a stalled etcd.

The time bounds are wall-clock (real processes, real etcd, real sockets): each is
set well below what the broken behaviour would take (a 5 s connect timeout, a
hung flush, a connection that is never closed) and well above what a loaded
2-core machine needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpclib.client
import grpclib.events
import h2.config
import h2.connection
import pytest

from node import client as node_client
from node import convert as node_convert
from node import hostfacts
from protos.limiquantix.storage import v1 as storage
from qvdc import app
from qvdc.settings import ControllerSettings, EtcdSettings, GrpcSettings, HeartbeatSettings
from qvdc.store import embedded, keys
from qvdc.store.etcd import EtcdStore, StoreError
from tests.fixtures.etcd import FaultyStore
from tests.qvdc.api.helpers import TIMEOUT, controller_settings

ROOT = Path(__file__).resolve().parents[2]
FACTS = hostfacts.HostFacts(hostname="pinged")


def settings_for(
    etcd_settings: EtcdSettings, *, commit_delay: float, shutdown_flush_timeout: float = 10.0
) -> ControllerSettings:
    base = controller_settings(etcd_settings)
    heartbeat = HeartbeatSettings(
        interval=base.heartbeat.interval,
        commit_delay=commit_delay,
        shutdown_flush_timeout=shutdown_flush_timeout,
    )
    return dataclasses.replace(base, heartbeat=heartbeat)


async def values(store: EtcdStore, prefix: str) -> dict[str, bytes]:
    kvs, _ = await store.get_prefix(prefix, timeout=TIMEOUT)
    return {kv.key: kv.value for kv in kvs}


async def until(
    predicate: Callable[[], bool], *, timeout: float = TIMEOUT, what: str = "condition"
) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - polling state the test does not own
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def submit_host_statuses(controller: app.Controller, count: int) -> list[str]:
    written = [keys.host_status(f"pool-{i % 8}", f"node-{i // 8:04d}") for i in range(count)]
    for key in written:
        controller.committer.submit(key, b'{"health": 1}')
    return written


# ---------------------------------------------------------------- shutdown flush


async def test_stopping_with_1000_pending_writes_writes_all_of_them(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    controller = app.Controller(store=store, settings=settings_for(etcd_settings, commit_delay=1.0))
    await controller.start()
    written = submit_host_statuses(controller, 1000)
    await asyncio.sleep(0.05)  # the committer waits out its 1 s delay: nothing written yet
    assert controller.committer.backlog == 1000
    assert await values(store, keys.HOST_STATUS) == {}
    await controller.stop()
    stored = await values(store, keys.HOST_STATUS)
    assert sorted(stored) == sorted(written)
    assert controller.committer.txns_committed == 8  # batches of at most 128


async def test_when_the_flush_bound_runs_out_the_log_says_how_many_were_lost(
    store: EtcdStore, etcd_settings: EtcdSettings, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = FaultyStore(store)
    settings = settings_for(etcd_settings, commit_delay=1.0, shutdown_flush_timeout=0.5)
    controller = app.Controller(store=faulty, settings=settings)
    await controller.start()
    submit_host_statuses(controller, 1000)
    faulty.hang("txn")  # etcd stalls: every commit hangs until its timeout
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING):
        await controller.stop()
    assert loop.time() - started < 0.5 + app.SERVER_CLOSE_TIMEOUT
    lost = [r for r in caplog.records if "host-status writes lost" in r.getMessage()]
    assert [r.levelno for r in lost] == [logging.WARNING]
    assert "1000 host-status writes lost (0 written)" in lost[0].getMessage()
    faulty.heal()
    await faulty.close()
    assert await values(store, keys.HOST_STATUS) == {}


# ---------------------------------------------------------------- supervision


async def test_a_root_task_that_crashes_stops_the_replica_and_is_raised(
    private_etcd: embedded.EmbeddedEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    etcd_settings = EtcdSettings(endpoints=(private_etcd.endpoint,), timeout=2.0)
    store = await EtcdStore.connect(settings=etcd_settings)
    try:
        controller = app.Controller(store=store, settings=controller_settings(etcd_settings))
        await controller.start()
        port = controller.port
        with caplog.at_level(logging.ERROR):
            await asyncio.to_thread(enable_etcd_auth, private_etcd.endpoint)
            await private_etcd.restart()  # the watch breaks; etcd refuses the new one
            await until(
                lambda: not controller.serving.is_set(), timeout=20.0, what="the replica to stop"
            )
            with pytest.raises(app.RootTaskEnded, match="root task view crashed"):
                await controller.stop()
    finally:
        await store.close()
    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert [(r.getMessage(), r.exc_info is not None) for r in crashes] == [
        ("task view crashed", True)
    ]
    with pytest.raises(OSError):  # the server is closed
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_a_root_task_cancelled_by_anything_but_the_shutdown_is_a_failure(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    controller = app.Controller(store=store, settings=controller_settings(etcd_settings))
    await controller.start()
    [monitor] = [t for t in asyncio.all_tasks() if t.get_name() == "liveness-monitor"]
    monitor.cancel()  # not the shutdown: nobody set stop
    await until(lambda: not controller.serving.is_set(), timeout=20.0, what="the replica to stop")
    with pytest.raises(
        app.RootTaskEnded, match="root task liveness-monitor was cancelled unrequested"
    ):
        await controller.stop()


async def test_a_root_task_that_crashes_during_the_start_up_is_raised_by_start(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    faulty = FaultyStore(store)
    faulty.fail("get_prefix", error=StoreError("etcd refused the listing: permission denied"))
    controller = app.Controller(store=faulty, settings=controller_settings(etcd_settings))
    with pytest.raises(app.RootTaskEnded, match="root task view crashed"):
        await controller.start()
    assert controller.port == 0 and not controller.serving.is_set()
    await controller.stop()  # nothing left to stop
    await faulty.close()


async def test_stop_during_the_initial_listing_stops_at_once(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    faulty = FaultyStore(store)
    faulty.hang("get_prefix")  # the listing never answers (retried after each timeout)
    controller = app.Controller(store=faulty, settings=controller_settings(etcd_settings))
    stop = asyncio.Event()
    runner = asyncio.create_task(controller.run(stop=stop))
    await until(lambda: "get_prefix" in faulty.calls, what="the listing")
    loop = asyncio.get_running_loop()
    started = loop.time()
    stop.set()
    await asyncio.wait_for(runner, timeout=4.0)
    assert loop.time() - started < 3.0  # not the 5 s the hung listing call would take
    assert controller.port == 0 and not controller.serving.is_set()
    await faulty.close()


async def test_a_second_signal_during_the_shutdown_forces_the_exit(
    store: EtcdStore, etcd_settings: EtcdSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """main() in this process, with real signals: the first starts the shutdown,
    whose flush hangs on a stalled etcd; the second gives it up (exit code 3)."""
    settings = settings_for(etcd_settings, commit_delay=1.0, shutdown_flush_timeout=60.0)
    built: list[tuple[app.Controller, FaultyStore]] = []

    def factory(*, store: EtcdStore, settings: ControllerSettings) -> app.Controller:
        faulty = FaultyStore(store)
        built.append((app.Controller(store=faulty, settings=settings), faulty))
        return built[-1][0]

    main = asyncio.create_task(app.main(settings, factory=factory))
    await until(lambda: bool(built) and built[0][0].serving.is_set(), what="serving")
    controller, faulty = built[0]
    submit_host_statuses(controller, 300)
    faulty.hang("txn")
    calls = len(faulty.calls)
    with caplog.at_level(logging.INFO):
        os.kill(os.getpid(), signal.SIGTERM)
        await until(lambda: "txn" in faulty.calls[calls:], what="the flush's first commit")
        loop = asyncio.get_running_loop()
        started = loop.time()
        os.kill(os.getpid(), signal.SIGTERM)
        code = await asyncio.wait_for(main, timeout=10.0)
    assert code == app.EXIT_FORCED
    assert loop.time() - started < 4.0  # the flush would hang for 60 s
    messages = [r.getMessage() for r in caplog.records]
    assert "received SIGTERM: stopping" in messages
    assert "received SIGTERM while stopping: forcing exit" in messages
    assert any("300 host-status writes lost" in m for m in messages)
    await faulty.close()


# ---------------------------------------------------------------- the process


def spawn_qvdc(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = tmp_path / "qvdc.log"
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qvdc",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                str(tmp_path / "state"),
                *(() if "--tls-cert" in args else ("--tls-mode", "off")),
                *args,
            ],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    return proc, log_path


@contextlib.asynccontextmanager
async def qvdc_process(
    tmp_path: Path, *args: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], Path]]:
    proc, log_path = spawn_qvdc(tmp_path, *args)
    try:
        yield proc, log_path
    finally:
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait, 10)


async def wait_logged(proc: subprocess.Popen[bytes], log_path: Path, text: str) -> None:
    def logged() -> bool:
        assert proc.poll() is None, f"qvdc exited with {proc.returncode}:\n{log_path.read_text()}"
        return text in log_path.read_text()

    await until(logged, timeout=30.0, what=f"{text!r} in the log")


async def wait_exit(proc: subprocess.Popen[bytes], *, timeout: float) -> int:
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"qvdc still running after {timeout} s") from None


def enable_etcd_auth(endpoint: str) -> None:
    """A root user and role, then auth on (etcd's JSON gateway: no etcdctl needed)."""
    host, _, port = endpoint.rpartition(":")
    for path, body in (
        ("/v3/auth/user/add", {"name": "root", "password": "not-a-secret"}),
        ("/v3/auth/role/add", {"name": "root"}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
        ("/v3/auth/enable", {}),
    ):
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("POST", path, body=json.dumps(body))
            response = conn.getresponse()
            answer = response.read()
        finally:
            conn.close()
        assert response.status == 200, (path, answer)


@pytest.mark.e2e
async def test_the_process_exits_1_when_a_root_task_crashes(
    private_etcd: embedded.EmbeddedEtcd, tmp_path: Path
) -> None:
    async with qvdc_process(tmp_path, "--etcd", private_etcd.endpoint) as (proc, log_path):
        await wait_logged(proc, log_path, "serving on")
        await asyncio.to_thread(enable_etcd_auth, private_etcd.endpoint)
        await private_etcd.restart()  # the watch breaks; etcd refuses the new one
        code = await wait_exit(proc, timeout=30.0)
    text = log_path.read_text()
    assert code == app.EXIT_FAILED, text
    assert text.count(": task view crashed\nTraceback") == 1, text  # its guard, traceback
    assert text.count(" crashed") == 2, text  # ... and the last line names it
    _, _, last = text.partition("QvDC replica stopped: root task view crashed")
    assert last and "Traceback" not in last, text  # logged once, not again at the end


@pytest.mark.e2e
async def test_the_process_exits_0_on_sigterm_while_serving(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    (endpoint,) = etcd_settings.endpoints
    args = ("--etcd", endpoint, "--etcd-prefix", etcd_settings.prefix)
    async with qvdc_process(tmp_path, *args) as (proc, log_path):
        await wait_logged(proc, log_path, "serving on")
        proc.send_signal(signal.SIGTERM)
        code = await wait_exit(proc, timeout=15.0)
    text = log_path.read_text()
    assert code == app.EXIT_STOPPED, text
    assert "received SIGTERM: stopping" in text and "QvDC replica stopped" in text


@pytest.mark.e2e
async def test_the_process_exits_0_at_once_on_sigterm_while_connecting_to_etcd(
    tmp_path: Path,
) -> None:
    """etcd accepts the connection and never answers: without the signal the
    replica would wait out the 5 s connect timeout and fail."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(8)
        port = hole.getsockname()[1]
        async with qvdc_process(tmp_path, "--etcd", f"127.0.0.1:{port}") as (proc, log_path):
            hole.settimeout(30.0)
            conn, _ = await asyncio.to_thread(hole.accept)  # the replica is connecting
            with conn:
                loop = asyncio.get_running_loop()
                started = loop.time()
                proc.send_signal(signal.SIGTERM)
                code = await wait_exit(proc, timeout=10.0)
                elapsed = loop.time() - started
    text = log_path.read_text()
    assert code == app.EXIT_STOPPED, text
    assert elapsed < 4.0, text  # the connect timeout is 5 s, then exit code 1
    assert "received SIGTERM: stopping" in text


# ---------------------------------------------------------------- keepalive

_FRAME_PING = 6
_FLAG_ACK = 1


@pytest.fixture
async def pinging_controller(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> AsyncIterator[app.Controller]:
    settings = controller_settings(etcd_settings)
    settings = dataclasses.replace(
        settings,
        grpc=GrpcSettings(host="127.0.0.1", port=0, keepalive_time=0.2, keepalive_timeout=0.3),
    )
    controller = app.Controller(store=store, settings=settings)
    await controller.start()
    try:
        yield controller
    finally:
        await controller.stop()


async def test_a_connection_that_never_acknowledges_pings_is_closed(
    pinging_controller: app.Controller,
) -> None:
    """A half-open connection: an HTTP/2 client that says hello, then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", pinging_controller.port)
    try:
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h2conn.initiate_connection()
        writer.write(h2conn.data_to_send())
        await writer.drain()
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = b""
        async with asyncio.timeout(10.0):  # without keepalive: never closed
            while chunk := await reader.read(65536):
                received += chunk
        elapsed = loop.time() - started
    finally:
        writer.close()
    pings = []
    while len(received) >= 9:  # frame header: length (3), type, flags, stream id (4)
        length = int.from_bytes(received[:3], "big")
        kind, flags = received[3], received[4]
        if kind == _FRAME_PING and not flags & _FLAG_ACK:
            pings.append(struct.unpack("!Q", received[9 : 9 + length])[0])
        received = received[9 + length :]
    assert pings, "the server sent no ping"
    assert 0.2 <= elapsed < 0.2 + 0.3 + 2.5  # keepalive_time + keepalive_timeout, and slack


async def test_a_grpclib_client_answers_pings_and_keeps_its_connection(
    pinging_controller: app.Controller,
) -> None:
    peers: list[object] = []

    async def on_request(event: grpclib.events.RecvRequest) -> None:
        peers.append(event.peer.addr())

    grpclib.events.listen(pinging_controller.server, grpclib.events.RecvRequest, on_request)
    channel = grpclib.client.Channel("127.0.0.1", pinging_controller.port)
    try:
        pools = storage.StoragePoolServiceStub(channel)
        await pools.list_pools(storage.ListPoolsRequest(), timeout=TIMEOUT)
        await asyncio.sleep(1.5)  # three times keepalive_time + keepalive_timeout, idle
        await pools.list_pools(storage.ListPoolsRequest(), timeout=TIMEOUT)
    finally:
        channel.close()
    assert len(peers) == 2 and peers[0] == peers[1]  # one connection, never closed


def test_keepalive_settings_are_validated() -> None:
    from qvdc.settings import SettingsError

    with pytest.raises(SettingsError, match="keepalive_time"):
        GrpcSettings(keepalive_time=0)
    with pytest.raises(SettingsError, match="keepalive_timeout"):
        GrpcSettings(keepalive_timeout=-1)
    with pytest.raises(SettingsError, match="shutdown_flush_timeout"):
        HeartbeatSettings(shutdown_flush_timeout=0)


async def test_the_node_client_keeps_its_stream_across_server_pings(
    pinging_controller: app.Controller,
) -> None:
    """The node daemon's own client (plain grpclib, no keepalive of its own) on an
    open heartbeat stream and for unary calls, idle between them for several pings."""
    client = node_client.ControllerClient(
        endpoints=[("127.0.0.1", pinging_controller.port)],
        rpc_timeout=TIMEOUT,
        recreate_after=1,
        logger=logging.getLogger("test.node.client"),
    )
    try:
        node_id = await client.register(
            hostname="pinged", management_ip="127.0.0.1", labels={}, facts=FACTS
        )
        async with client.heartbeat_stream() as stream:
            for sequence in (1, 2):
                await stream.send(
                    node_convert.Heartbeat(
                        node_id=node_id, sequence=sequence, delta=sequence > 1, pools=()
                    )
                )
                reply = await stream.recv()
                assert reply.sequence == sequence
                await asyncio.sleep(1.5)  # idle: the server pings, the client answers
        reply = await client.update_heartbeat(
            node_convert.Heartbeat(node_id=node_id, sequence=3, delta=False, pools=())
        )
    finally:
        client.close()
    assert client.channels_created == 1 and client.consecutive_failures == 0
