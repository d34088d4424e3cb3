"""Request builders and waiting helpers shared by the API and end-to-end tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.settings import (
    ControllerSettings,
    EtcdSettings,
    GrpcSettings,
    HeartbeatSettings,
    MonitorSettings,
    TlsSettings,
)

T = TypeVar("T")
TIMEOUT = 5.0


def local_backend(path: str = "/srv/pools/a", capacity_gib: int = 0) -> storage.StorageBackend:
    return storage.StorageBackend(
        type=storage.StorageBackendBackendType.LOCAL_DIR,
        local_dir=storage.LocalDirConfig(path=path, capacity_gib=capacity_gib),
    )


def nfs_backend(
    server: str = "nfs1.example.com", export: str = "/export/a"
) -> storage.StorageBackend:
    return storage.StorageBackend(
        type=storage.StorageBackendBackendType.NFS,
        nfs=storage.NfsConfig(server=server, export_path=export, version="4.1"),
    )


def create_request(
    name: str, *, backend: storage.StorageBackend | None = None, nodes: list[str] | None = None
) -> storage.CreatePoolRequest:
    return storage.CreatePoolRequest(
        name=name,
        spec=storage.StoragePoolSpec(
            backend=backend or local_backend(f"/srv/pools/{name}"),
            assigned_node_ids=nodes or [],
        ),
    )


def register_request(hostname: str, ip: str = "10.1.0.5:9090") -> compute.RegisterNodeRequest:
    return compute.RegisterNodeRequest(
        hostname=hostname,
        management_ip=ip,
        labels={"rack": "r1"},
        role=compute.NodeRole(compute=True),
        cpu_info=compute.CpuInfo(model="test", sockets=1, cores_per_socket=4),
        memory_info=compute.MemoryInfo(total_bytes=8 << 30),
    )


def report(
    pool_id: str,
    *,
    health: int = 1,
    total: int = 100 << 30,
    used: int = 10 << 30,
    volumes: int = 0,
    error: str = "",
    mount: str = "/srv/pools/x",
) -> compute.StoragePoolStatusReport:
    return compute.StoragePoolStatusReport(
        pool_id=pool_id,
        health=compute.StoragePoolStatusReportHealthStatus(health),
        total_bytes=total,
        used_bytes=used,
        available_bytes=total - used,
        mount_path=mount,
        volume_count=volumes,
        error_message=error,
    )


async def expect_error(call: Awaitable[object], status: Status, *names: str) -> GRPCError:
    """Assert that ``call`` fails with ``status`` and a message naming each of ``names``."""
    with pytest.raises(GRPCError) as info:
        await call
    assert info.value.status == status, info.value
    for name in names:
        assert name in (info.value.message or ""), info.value.message
    return info.value


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool],
    *,
    timeout: float = 10.0,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until ``check`` holds; fail with the last value after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value!r}")
        await asyncio.sleep(0.05)


def controller_settings(etcd_settings: EtcdSettings, **monitor: float) -> ControllerSettings:
    return ControllerSettings(
        etcd=etcd_settings,
        grpc=GrpcSettings(host="127.0.0.1", port=0),
        heartbeat=HeartbeatSettings(interval=1.0, commit_delay=0.001),
        monitor=MonitorSettings(
            grace=monitor.get("grace", 3.0), check_period=monitor.get("check_period", 0.1)
        ),
        replica_id="test-replica",
        tls=TlsSettings(mode="off"),  # plain text on loopback, chosen explicitly
    )
