"""A replica killed under its watchers (SIGKILL, real ``python -m qvdc`` processes on a
real etcd): a gRPC watch sees its connection break, and a real ``qvdcctl pools list
--watch`` re-watches once a replica serves its address again and shows a pool created
meanwhile, then exits 0 on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import grpclib.client
import grpclib.exceptions
import pytest

from benchmarks.heartbeat import procs
from protos.limiquantix.storage import v1 as storage
from qvdc.settings import EtcdSettings
from tests.qvdc.api.helpers import TIMEOUT, create_request


@pytest.fixture
def replicas(
    etcd_settings: EtcdSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[procs.Child]]:
    monkeypatch.setenv("QVDC_TLS_MODE", "off")  # plain text on loopback, chosen explicitly
    started: list[procs.Child] = []
    yield started
    for child in started:
        if child.alive():
            child.proc.kill()
        child.stop(timeout=5)


def start(
    started: list[procs.Child], etcd_settings: EtcdSettings, tmp_path: Path, name: str, port: int
) -> procs.Child:
    args = [
        *(a for e in etcd_settings.endpoints for a in ("--etcd", e)),
        "--etcd-prefix", etcd_settings.prefix,
        "--listen", f"127.0.0.1:{port}",
        "--state-dir", str(tmp_path / name),
        "--replica-id", name,
        "--log-level", "INFO",
    ]  # fmt: skip
    child = procs.Child(
        name=name, module="qvdc", args=args, log_path=tmp_path / f"{name}.log", port=port
    )
    started.append(child)
    try:
        procs.wait_listening("127.0.0.1", port, timeout=60, proc=child.proc)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"{name} did not start: {exc}\n{child.log_tail()}") from exc
    return child


async def create(port: int, name: str) -> storage.StoragePool:
    channel = grpclib.client.Channel("127.0.0.1", port)
    try:
        stub = storage.StoragePoolServiceStub(channel)
        for _ in range(50):  # listening a moment before its view is listed
            try:
                return await stub.create_pool(create_request(name), timeout=TIMEOUT)
            except grpclib.exceptions.GRPCError as exc:
                if exc.status.name != "UNAVAILABLE":
                    raise
                await asyncio.sleep(0.2)
        raise AssertionError("the replica never served")
    finally:
        channel.close()


async def read_until(stream: asyncio.StreamReader, *needles: bytes, timeout: float = 30) -> bytes:
    """Output up to the end of a frame holding every needle."""
    frame = b""
    async with asyncio.timeout(timeout):
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"output ended; last frame {frame!r}")
            if b"(watching; Ctrl-C to stop)" in line:
                frame = b""
            frame += line
            if line == b"\n" and all(n in frame for n in needles):
                return frame


async def test_qvdcctl_rewatches_after_its_replica_is_killed(
    replicas: list[procs.Child], etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    port = procs.free_port()
    first = start(replicas, etcd_settings, tmp_path, "k1", port)
    await create(port, "killed-a")

    # A gRPC watcher of the replica about to die.
    channel = grpclib.client.Channel("127.0.0.1", port)
    grpc_watch = storage.StoragePoolServiceStub(channel).watch_pools(storage.WatchPoolsRequest())
    got = await asyncio.wait_for(grpc_watch.__anext__(), TIMEOUT)
    assert got.pool.name == "killed-a"

    env = {k: v for k, v in os.environ.items() if not k.startswith(("QVDC", "QVDCCTL"))}
    env["QVDC_CONTEXT"] = "/nonexistent/context.json"
    cli = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("qvdcctl")),
        "--insecure",
        "--controller",
        f"127.0.0.1:{port}",
        "pools",
        "list",
        "--watch",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert cli.stdout is not None and cli.stderr is not None
        await read_until(cli.stdout, b"killed-a")

        first.proc.kill()  # no goodbye: the connections just break
        first.proc.wait(timeout=10)
        # Updates already sent before the kill (the pool's aggregate settling) may come
        # first; then the broken connection.
        with pytest.raises((grpclib.exceptions.StreamTerminatedError, ConnectionError, OSError)):
            async with asyncio.timeout(TIMEOUT):
                while True:
                    await grpc_watch.__anext__()
        channel.close()

        start(replicas, etcd_settings, tmp_path, "k2", port)  # another replica, same address
        await create(port, "killed-b")
        frame = await read_until(cli.stdout, b"killed-a", b"killed-b")
        assert b"killed-b" in frame
        cli.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            _, err = await cli.communicate()
    finally:
        channel.close()  # idempotent; not left for the collector when the test fails
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
    assert cli.returncode == 0, err.decode()
    assert b"watch lost (cannot reach the controller" in err and b"re-watching" in err
    assert b"Traceback" not in err
