"""End to end: a local-directory pool whose disk is not mounted yet, on a real
controller and a real node daemon (``python -m node``).

The pool requires its path to be a mount point. While the test's tmpfs is not
mounted the host row is UNMOUNTED naming the path and the daemon writes nothing
into the directory on the parent disk; once the test mounts the tmpfs the row
turns HEALTHY with the tmpfs's capacity, without the pool being touched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from tests.e2e.test_e2e_local_pools import controller, spawn_node  # noqa: F401  (fixtures)
from tests.qvdc.api.helpers import TIMEOUT, eventually

pytestmark = pytest.mark.e2e

PoolPhase = storage.StoragePoolStatusPhase
Health = storage.PoolHostStatusHealth


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        yield mount_point
    finally:
        while os.path.ismount(mount_point):
            subprocess.run(["umount", str(mount_point)], check=True)


async def test_unmounted_disk_is_unmounted_until_mounted(
    controller: Controller,  # noqa: F811
    spawn_node: Callable[[str], tuple[subprocess.Popen[bytes], Path]],  # noqa: F811
    disk: Path,
) -> None:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    nodes = compute.NodeServiceStub(channel)
    pools = storage.StoragePoolServiceStub(channel)
    try:
        proc, _ = spawn_node("host-a")

        async def registered() -> dict[str, str]:
            listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
            return {n.hostname: n.id for n in listed.nodes}

        ids = await eventually(
            registered, lambda m: "host-a" in m, timeout=30, what="the daemon registered"
        )
        pool = await pools.create_pool(
            storage.CreatePoolRequest(
                name="on-disk",
                spec=storage.StoragePoolSpec(
                    backend=storage.StorageBackend(
                        type=storage.StorageBackendBackendType.LOCAL_DIR,
                        local_dir=storage.LocalDirConfig(path=str(disk), require_mountpoint=True),
                    ),
                    assigned_node_ids=[ids["host-a"]],
                ),
            ),
            timeout=TIMEOUT,
        )

        def get() -> Awaitable[storage.StoragePool]:
            return pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)

        # Before the daemon's first attach the row is UNMOUNTED "not attached yet";
        # wait for the attach's own verdict, which names the path.
        expected = (
            f"pool path {disk} needs a filesystem mounted at {disk}, and none is mounted there"
        )
        unmounted = await eventually(
            get,
            lambda p: (
                [(r.health, r.error_message) for r in p.status.host_statuses]
                == [(Health.UNMOUNTED, expected)]
            ),
            timeout=30,
            what="an UNMOUNTED host row naming the path",
        )
        assert unmounted.status.phase != PoolPhase.READY
        await asyncio.sleep(2.5)  # a few more probes (interval 1 s): still nothing written
        assert await asyncio.to_thread(os.listdir, disk) == []

        await asyncio.to_thread(
            subprocess.run,
            ["mount", "-t", "tmpfs", "-o", "size=8m", "quantix-test", str(disk)],
            check=True,
        )
        healthy = await eventually(
            get,
            lambda p: [r.health for r in p.status.host_statuses] == [Health.HEALTHY],
            timeout=30,
            what="HEALTHY once the disk is mounted",
        )
        (row,) = healthy.status.host_statuses
        assert 0 < row.total_bytes <= 8 * 1024**2  # the tmpfs, not the parent disk
        assert healthy.status.phase == PoolPhase.READY
        assert proc.poll() is None
    finally:
        channel.close()
