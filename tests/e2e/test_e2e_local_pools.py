"""End to end: a real controller (real etcd, grpclib on loopback) and two real
node daemons (separate processes, ``python -m node``) with local-directory pools.

Create a pool, assign it to both hosts: READY with two HEALTHY rows. Stop one
daemon: after the grace its row is stale and the pool DEGRADED. Unassign the
pool from the other host: that daemon detaches it and its row goes away.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import TIMEOUT, controller_settings, eventually

pytestmark = pytest.mark.e2e

PoolPhase = storage.StoragePoolStatusPhase
Health = storage.PoolHostStatusHealth
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=controller_settings(etcd_settings, grace=3.0))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
def spawn_node(
    controller: Controller, tmp_path: Path
) -> Iterator[Callable[[str], tuple[subprocess.Popen[bytes], Path]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(hostname: str) -> tuple[subprocess.Popen[bytes], Path]:
        home = tmp_path / hostname
        home.mkdir()
        with open(home / "node.log", "wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "node",
                    "--controller",
                    f"127.0.0.1:{controller.port}",
                    "--hostname",
                    hostname,
                    "--management-ip",
                    "127.0.0.1",
                    "--state-dir",
                    str(home / "state"),
                    "--pools-root",
                    str(home / "pools"),
                    "--heartbeat-interval",
                    "1",
                    "--libvirt-uri",
                    "test:///default",
                    "--insecure",  # the in-process controller is plain text
                    "--log-level",
                    "DEBUG",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        procs.append(proc)
        return proc, home

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def local_pool_on_host(
    pools: storage.StoragePoolServiceStub, nodes: compute.NodeServiceStub, path: Path, name: str
) -> storage.StoragePool:
    """Once a spawned ``host-a`` has registered: a local-dir pool ``name`` at ``path``
    assigned to it, returned once its row is HEALTHY."""

    async def registered() -> dict[str, str]:
        listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
        return {n.hostname: n.id for n in listed.nodes}

    ids = await eventually(registered, lambda m: "host-a" in m, timeout=30, what="registered")
    pool = await pools.create_pool(
        storage.CreatePoolRequest(
            name=name,
            spec=storage.StoragePoolSpec(
                backend=storage.StorageBackend(
                    type=storage.StorageBackendBackendType.LOCAL_DIR,
                    local_dir=storage.LocalDirConfig(path=str(path)),
                ),
                assigned_node_ids=[ids["host-a"]],
            ),
        ),
        timeout=TIMEOUT,
    )
    await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
        lambda p: [r.health for r in p.status.host_statuses] == [Health.HEALTHY],
        timeout=30,
        what="the host's row HEALTHY",
    )
    return pool


def _log(home: Path) -> str:
    return (home / "node.log").read_text(errors="replace")


async def test_two_hosts_stale_row_and_detach(
    controller: Controller, spawn_node: Callable[[str], tuple[subprocess.Popen[bytes], Path]]
) -> None:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    nodes = compute.NodeServiceStub(channel)
    pools = storage.StoragePoolServiceStub(channel)
    try:
        proc_a, home_a = spawn_node("host-a")
        proc_b, home_b = spawn_node("host-b")

        async def registered() -> dict[str, str]:
            listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
            return {n.hostname: n.id for n in listed.nodes}

        ids = await eventually(
            registered,
            lambda m: {"host-a", "host-b"} <= set(m),
            timeout=30,
            what="both daemons registered",
        )
        pool = await pools.create_pool(
            storage.CreatePoolRequest(
                name="shared-local",
                spec=storage.StoragePoolSpec(
                    # No path: each host uses <pools_root>/<pool_id> of its own.
                    backend=storage.StorageBackend(
                        type=storage.StorageBackendBackendType.LOCAL_DIR,
                        local_dir=storage.LocalDirConfig(),
                    ),
                    assigned_node_ids=[ids["host-a"], ids["host-b"]],
                ),
            ),
            timeout=TIMEOUT,
        )

        def get() -> Awaitable[storage.StoragePool]:
            return pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)

        ready = await eventually(
            get,
            # READY alone is not enough: a host still within its first interval is pending
            # (UNKNOWN, counted neither way), so the pool is READY on the other host's report.
            lambda p: (
                p.status.phase == PoolPhase.READY
                and len(p.status.host_statuses) == 2
                and all(r.health == Health.HEALTHY for r in p.status.host_statuses)
            ),
            timeout=30,
            what="READY with two HEALTHY host rows",
        )
        rows = {r.hostname: r for r in ready.status.host_statuses}
        assert set(rows) == {"host-a", "host-b"}
        for hostname, home in (("host-a", home_a), ("host-b", home_b)):
            row = rows[hostname]
            assert row.health == Health.HEALTHY and not row.stale and row.assigned
            assert row.mount_path == str(home / "pools" / pool.id)
            assert await asyncio.to_thread(Path(row.mount_path).is_dir)  # really created
            assert row.total_bytes > 0
        # Local pools sum the hosts' capacity.
        assert ready.status.capacity.total_bytes == sum(r.total_bytes for r in rows.values())

        # Stop host-b's daemon: after the grace its row is stale and the pool DEGRADED.
        proc_b.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc_b.wait, 15)
        degraded = await eventually(
            get,
            lambda p: p.status.phase == PoolPhase.DEGRADED,
            timeout=20,
            what="DEGRADED after host-b went silent",
        )
        rows = {r.hostname: r for r in degraded.status.host_statuses}
        assert rows["host-b"].stale and not rows["host-a"].stale
        assert degraded.status.healthy_node_ids == [ids["host-a"]]
        assert ids["host-b"] in degraded.status.unhealthy_node_ids
        assert "host-b" in degraded.status.error_message or ids["host-b"] in (
            degraded.status.error_message
        )

        # Unassign from host-a (still running): it detaches and stops reporting the pool.
        await pools.unassign_pool_from_node(
            storage.UnassignPoolFromNodeRequest(pool_id=pool.id, node_id=ids["host-a"]),
            timeout=TIMEOUT,
        )
        after = await eventually(
            get,
            lambda p: all(r.hostname != "host-a" for r in p.status.host_statuses),
            timeout=20,
            what="host-a's row gone after unassign",
        )
        assert [r.hostname for r in after.status.host_statuses] == ["host-b"]
        saved = json.loads((home_a / "state" / "assignments.json").read_text())
        assert pool.id not in json.dumps(saved)
        assert "detach" in _log(home_a).lower()
        assert proc_a.poll() is None  # host-a kept running throughout
    finally:
        channel.close()
