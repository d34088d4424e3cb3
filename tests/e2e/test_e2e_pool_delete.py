"""End to end: DeletePool waits for the hosts, with a real ``python -m node`` process.

A pool holding a volume is refused unless forced (gRPC and Connect). Forced, the pool is
DELETING at once, the host detaches it (its files stay) and the keys go as soon as the
host's report no longer lists it. A host that stops answering is waited for up to
``pools.delete_timeout``, across a restart of the replica, and then named in a WARNING.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpclib.client
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import ControllerSettings, EtcdSettings, HttpSettings, PoolSettings
from qvdc.store import keys
from qvdc.store.etcd import EtcdStore
from tests.e2e.test_e2e_local_pools import local_pool_on_host, spawn_node  # noqa: F401 (fixture)
from tests.fixtures import procs
from tests.qvdc.api.helpers import TIMEOUT, controller_settings, eventually
from tests.qvdc.http.conftest import Http

pytestmark = pytest.mark.e2e

Phase = storage.StoragePoolStatusPhase
SERVICE = "limiquantix.storage.v1.StoragePoolService/"
Spawn = Callable[[str], tuple[subprocess.Popen[bytes], Path]]
DELETE_TIMEOUT = 4.0


def _settings(etcd_settings: EtcdSettings) -> ControllerSettings:
    return dataclasses.replace(
        controller_settings(etcd_settings, grace=3.0),
        http=HttpSettings(enabled=True, host="127.0.0.1", port=0, close_timeout=1.0),
        pools=PoolSettings(delete_timeout=DELETE_TIMEOUT),
    )


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=_settings(etcd_settings))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def _gone(pools: storage.StoragePoolServiceStub, pool_id: str) -> bool:
    try:
        await pools.get_pool(storage.GetPoolRequest(id=pool_id), timeout=TIMEOUT)
    except GRPCError as exc:
        return exc.status == Status.NOT_FOUND
    return False


async def test_delete_waits_for_the_host_to_detach(
    controller: Controller,
    spawn_node: Spawn,  # noqa: F811
    tmp_path: Path,
    store: EtcdStore,
) -> None:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    pools = storage.StoragePoolServiceStub(channel)
    try:
        _, home = spawn_node("host-a")
        path = tmp_path / "data"
        path.mkdir()
        (path / "vm-1.qcow2").write_bytes(b"q" * 512)
        pool = await local_pool_on_host(pools, compute.NodeServiceStub(channel), path, "deletable")
        await eventually(
            lambda: pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
            lambda p: [r.volume_count for r in p.status.host_statuses] == [1],
            timeout=30,
            what="the volume reported",
        )

        with pytest.raises(GRPCError) as refused:
            await pools.delete_pool(storage.DeletePoolRequest(id=pool.id), timeout=TIMEOUT)
        assert refused.value.status == Status.FAILED_PRECONDITION
        assert refused.value.message == (
            "force: pool 'deletable' still holds 1 volume(s) on 1 host(s); delete them or set force"
        )
        http = Http(controller.http_port)
        connect = await http.call(SERVICE + "DeletePool", {"id": pool.id})
        assert connect.json() == {"code": "failed_precondition", "message": refused.value.message}

        forced = await http.call(SERVICE + "DeletePool", {"id": pool.id, "force": True})
        assert forced.status == 200, forced.body
        # DELETING at once; then gone as soon as the host has let go (well within the timeout).
        deleting = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
        assert deleting.status.phase == Phase.DELETING
        started = asyncio.get_running_loop().time()
        # The view shows the pool gone before the engine has finished (it still deletes
        # the host rows' prefix, then counts): wait for both.
        await eventually(
            lambda: _gone(pools, pool.id),
            lambda gone: gone and controller.deletions.finished >= 1,
            timeout=20,
            what="the pool gone and its deletion finished",
        )
        assert asyncio.get_running_loop().time() - started < DELETE_TIMEOUT
        assert (
            await store.get(keys.host_status(pool.id, deleting.status.host_statuses[0].node_id))
            is None
        )
        log = (home / "node.log").read_text(errors="replace")
        assert f"detached pool {pool.id}" in log
        assert (path / "vm-1.qcow2").read_bytes() == b"q" * 512  # the data stays
        assert controller.deletions.finished == 1
    finally:
        channel.close()


async def test_a_silent_host_is_waited_for_across_a_restart_then_named(
    controller: Controller,
    spawn_node: Spawn,  # noqa: F811
    tmp_path: Path,
    store: EtcdStore,
    etcd_settings: EtcdSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    pools = storage.StoragePoolServiceStub(channel)
    proc, _ = spawn_node("host-a")
    second: Controller | None = None
    try:
        path = tmp_path / "data"
        path.mkdir()
        pool = await local_pool_on_host(pools, compute.NodeServiceStub(channel), path, "stuck")
        procs.sigstop(proc.pid)  # the host stops answering, still live for a moment
        await pools.delete_pool(storage.DeletePoolRequest(id=pool.id), timeout=TIMEOUT)
        began = asyncio.get_running_loop().time()
        deleting = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
        assert deleting.status.phase == Phase.DELETING

        # The replica goes away mid-wait; a new one finishes the deletion from etcd.
        channel.close()
        await controller.stop()
        second = Controller(store=store, settings=_settings(etcd_settings))
        await second.start()
        channel = grpclib.client.Channel("127.0.0.1", second.port)
        pools = storage.StoragePoolServiceStub(channel)
        still = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
        assert still.status.phase == Phase.DELETING
        with caplog.at_level(logging.WARNING, logger="qvdc.engines.deletion"):
            # Gone from the view first; the WARNING follows the host rows' delete.
            await eventually(
                lambda: _gone(pools, pool.id),
                lambda gone: gone and second.deletions.finished >= 1,
                timeout=30,
                what="removed and the deletion finished",
            )
        assert asyncio.get_running_loop().time() - began >= DELETE_TIMEOUT - 0.5
        (warning,) = [r for r in caplog.records if r.name == "qvdc.engines.deletion"]
        assert warning.levelno == logging.WARNING
        assert "without confirmation from host(s) host-a" in warning.getMessage()
        assert second.deletions.finished == 1
    finally:
        channel.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        if second is not None:
            await second.stop()
