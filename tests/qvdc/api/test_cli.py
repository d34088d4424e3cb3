"""qvdcctl against a real controller, and the live table's rendering."""

from __future__ import annotations

import datetime as dt

import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc import cli
from qvdc.app import Controller
from tests.qvdc.api.helpers import TIMEOUT, register_request


async def run_cli(controller: Controller, *argv: str) -> int:
    args = cli.build_parser().parse_args(["--controller", f"127.0.0.1:{controller.port}", *argv])
    return await cli.run(args)


async def test_cli_creates_lists_assigns_and_reports_errors(
    controller: Controller,
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = await nodes.register_node(register_request("cli-host"), timeout=TIMEOUT)
    assert await run_cli(controller, "pools", "create", "cli-pool", "--local-dir", "/srv/cli") == 0
    pool_id = capsys.readouterr().out.strip()
    got = await pools.get_pool(storage.GetPoolRequest(id=pool_id), timeout=TIMEOUT)
    assert got.spec.backend.local_dir.path == "/srv/cli"

    assert await run_cli(controller, "pools", "assign", pool_id, node.id) == 0
    got = await pools.get_pool(storage.GetPoolRequest(id=pool_id), timeout=TIMEOUT)
    assert got.spec.assigned_node_ids == [node.id]

    assert await run_cli(controller, "pools", "list") == 0
    table = capsys.readouterr().out
    assert "cli-pool" in table and "LOCAL_DIR" in table

    assert await run_cli(controller, "nodes", "disable", node.id, "--reason", "bios") == 0
    assert '"MAINTENANCE"' in capsys.readouterr().out

    # A controller error: exit 1 and the gRPC status with its message.
    assert await run_cli(controller, "pools", "create", "cli-pool", "--local-dir", "/srv/x") == 1
    err = capsys.readouterr().err
    assert "ALREADY_EXISTS" in err and "name" in err


async def test_cli_unreachable_controller_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = cli.build_parser().parse_args(["--controller", f"127.0.0.1:{port}", "pools", "list"])
    assert await cli.run(args) == 3
    assert "cannot reach the controller" in capsys.readouterr().err


def test_render_marks_stale_and_unassigned_rows() -> None:
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    pool = storage.StoragePool(
        name="p1",
        spec=storage.StoragePoolSpec(
            backend=storage.StorageBackend(type=storage.StorageBackendBackendType.NFS),
            assigned_node_ids=["n1", "n2"],
        ),
        status=storage.StoragePoolStatus(
            phase=storage.StoragePoolStatusPhase.DEGRADED,
            capacity=storage.StorageCapacity(
                total_bytes=10 << 30, used_bytes=4 << 30, available_bytes=6 << 30
            ),
            error_message="1 of 2 hosts unhealthy: n2 stale (no heartbeat)",
            healthy_node_ids=["n1"],
            host_statuses=[
                storage.PoolHostStatus(
                    node_id="n1",
                    hostname="alpha",
                    health=storage.PoolHostStatusHealth.HEALTHY,
                    assigned=True,
                    mount_path="/mnt/p1",
                    total_bytes=10 << 30,
                    last_changed=now - dt.timedelta(seconds=5),
                ),
                storage.PoolHostStatus(
                    node_id="n2",
                    hostname="bravo",
                    health=storage.PoolHostStatusHealth.HEALTHY,
                    assigned=True,
                    stale=True,
                ),
                storage.PoolHostStatus(
                    node_id="n3",
                    hostname="charlie",
                    health=storage.PoolHostStatusHealth.ERROR,
                    error_message="mount failed",
                ),
            ],
        ),
    )
    lines = cli.render_pools([pool], now=now).splitlines()
    assert lines[1].split()[:3] == ["p1", "NFS", "DEGRADED"]
    assert "1/2 healthy" in lines[1] and "6.0 GiB" in lines[1]
    assert "n2 stale" in lines[2]
    alpha, bravo, charlie = lines[3:6]
    assert "HEALTHY" in alpha and "STALE" not in alpha and "5s ago" in alpha
    assert "HEALTHY (STALE)" in bravo
    assert "ERROR (unassigned)" in charlie and "mount failed" in charlie
    assert cli.render_pools([]).splitlines()[1] == "(no pools)"
