"""EmbeddedEtcd: a real etcd child process that starts, answers, keeps data, and stops."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from qvdc.settings import EtcdSettings
from qvdc.store import embedded, etcd


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_starts_answers_keeps_data_and_stops(tmp_path: Path) -> None:
    settings = EtcdSettings(embedded_compaction_retention="500", embedded_quota_bytes=64 * 1024**2)
    data_dir = tmp_path / "state" / "etcd"

    async with embedded.EmbeddedEtcd(data_dir=data_dir, settings=settings) as first:
        pid = first.pid
        assert pid is not None
        host, _, port = first.endpoint.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        assert await embedded.probe_health(first.endpoint, timeout=5)
        cmdline = await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)
        argv = cmdline.split(b"\0")
        assert b"--auto-compaction-mode=revision" in argv
        assert b"--auto-compaction-retention=500" in argv
        assert b"--quota-backend-bytes=67108864" in argv
        store = await etcd.EtcdStore.connect(
            settings=EtcdSettings(endpoints=(first.endpoint,), prefix="/quantix/")
        )
        try:
            await store.put("pools/p1", b"kept")
        finally:
            await store.close()

    assert first.pid is None
    assert not _running(pid)
    log = await asyncio.to_thread((tmp_path / "state" / "etcd.log").read_text)  # next to the data
    assert '"signal":"terminated"' in log  # stopped gracefully by SIGTERM, not killed

    # A new instance on the same data dir (and other ports) still has the data.
    async with embedded.EmbeddedEtcd(data_dir=data_dir, settings=settings) as second:
        store = await etcd.EtcdStore.connect(
            settings=EtcdSettings(endpoints=(second.endpoint,), prefix="/quantix/")
        )
        try:
            kv = await store.get("pools/p1")
        finally:
            await store.close()
    assert kv is not None and kv.value == b"kept"


async def test_missing_binary_is_reported_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    server = embedded.EmbeddedEtcd(data_dir=tmp_path / "etcd", settings=EtcdSettings())

    with pytest.raises(
        embedded.EmbeddedEtcdError, match="etcd not found: install Debian package etcd-server"
    ):
        await server.start()
    assert server.pid is None


async def test_child_dying_during_startup_reports_its_log(tmp_path: Path) -> None:
    bad = EtcdSettings(embedded_compaction_retention="bogus")  # etcd refuses to start
    server = embedded.EmbeddedEtcd(data_dir=tmp_path / "etcd", settings=bad)

    with pytest.raises(embedded.EmbeddedEtcdError) as caught:
        await server.start()

    message = str(caught.value)
    assert "exited with code" in message
    assert "bogus" in message  # etcd's own complaint, from the log tail
    assert server.pid is None


async def test_stop_is_idempotent_and_restart_keeps_the_endpoint(tmp_path: Path) -> None:
    server = embedded.EmbeddedEtcd(data_dir=tmp_path / "etcd", settings=EtcdSettings())
    with pytest.raises(embedded.EmbeddedEtcdError):
        _ = server.endpoint
    await server.start()
    try:
        endpoint, pid = server.endpoint, server.pid
        await server.restart()
        assert server.endpoint == endpoint and server.pid != pid
        assert await embedded.probe_health(server.endpoint, timeout=5)
    finally:
        await server.stop()
        await server.stop()
    assert not await embedded.probe_health(endpoint, timeout=1)


async def test_stop_kills_an_etcd_that_ignores_sigterm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = embedded.EmbeddedEtcd(
        data_dir=tmp_path / "etcd", settings=EtcdSettings(), stop_timeout=0.5
    )
    await server.start()
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    try:
        await server.stop()
    finally:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
    assert not _running(pid)
    assert "ignored SIGTERM; killing it" in caplog.text
