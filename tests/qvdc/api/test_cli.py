"""qvdcctl against a real controller, and the live table's rendering."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import socket

import pytest
from click.testing import CliRunner, Result

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc import cli
from qvdc.app import Controller
from tests.qvdc.api.helpers import TIMEOUT, register_request


def invoke(port: int, *argv: str) -> Result:
    return CliRunner().invoke(cli.cli, ["--insecure", "--controller", f"127.0.0.1:{port}", *argv])


async def run_cli(controller: Controller, *argv: str) -> Result:
    # qvdcctl runs its own event loop: drive it from a thread while the controller serves.
    return await asyncio.to_thread(invoke, controller.port, *argv)


async def test_cli_by_name_confirms_and_reports_errors(
    controller: Controller,
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
) -> None:
    node = await nodes.register_node(register_request("cli-host"), timeout=TIMEOUT)
    r = await run_cli(controller, "pools", "create", "cli-pool", "--local-dir", "/srv/cli")
    assert r.exit_code == 0, r.output
    match = re.fullmatch(r"pool cli-pool \(id (\S+)\) created\n", r.output)
    assert match, r.output
    got = await pools.get_pool(storage.GetPoolRequest(id=match[1]), timeout=TIMEOUT)
    assert got.spec.backend.local_dir.path == "/srv/cli"

    r = await run_cli(controller, "pools", "assign", "cli-pool", "cli-host")
    assert (r.exit_code, r.output) == (0, "pool cli-pool assigned to cli-host\n")
    got = await pools.get_pool(storage.GetPoolRequest(id=match[1]), timeout=TIMEOUT)
    assert got.spec.assigned_node_ids == [node.id]

    r = await run_cli(controller, "pools", "list")
    assert r.exit_code == 0 and "cli-pool" in r.output and "LOCAL_DIR" in r.output
    r = await run_cli(controller, "pools", "get", "cli-pool", "-o", "json")
    assert r.exit_code == 0 and json.loads(r.output)["id"] == match[1]
    r = await run_cli(controller, "nodes", "get", "cli-host", "-o", "yaml")
    assert r.exit_code == 0 and f"id: {node.id}" in r.output

    r = await run_cli(controller, "nodes", "disable", "cli-host", "--reason", "bios")
    assert (r.exit_code, r.output) == (0, "node cli-host disabled (MAINTENANCE)\n")
    r = await run_cli(controller, "status")
    assert (
        r.exit_code == 0
        and "MAINTENANCE 1" in r.output
        and "node cli-host: MAINTENANCE" in r.output
    )

    # A controller error: exit 1 and the gRPC status with its message.
    r = await run_cli(controller, "pools", "create", "cli-pool", "--local-dir", "/srv/x")
    assert r.exit_code == 1 and "ALREADY_EXISTS" in r.output, r.output
    r = await run_cli(controller, "pools", "get", "nope")
    assert r.exit_code == 1 and "NOT_FOUND" in r.output

    r = await run_cli(controller, "pools", "unassign", "cli-pool", node.id)
    assert (r.exit_code, r.output) == (0, "pool cli-pool unassigned from cli-host\n")
    r = await run_cli(controller, "pools", "delete", match[1])
    assert (r.exit_code, r.output) == (0, f"pool cli-pool (id {match[1]}) deleted\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["pools", "create", "x"],
        ["pools", "create", "x", "--nfs", "no-export"],
        ["pools", "create", "x", "--local-dir", "/a", "--capacity-gib", "lots"],
        ["pools", "create", "x", "--ceph-rbd", "rbd"],
        ["pools", "create", "x", "--local-dir", "/a", "--label", "novalue"],
        ["pools", "frobnicate"],
        ["--controller", "host:99999", "pools", "list"],
        ["--controller", "host:abc", "status"],
    ],
)
def test_cli_bad_usage_exits_2_without_a_traceback(argv: list[str]) -> None:
    r = CliRunner().invoke(cli.cli, argv)
    assert r.exit_code == 2, r.output
    assert ("Traceback" not in r.output and r.exception is None) or isinstance(
        r.exception, SystemExit
    )


def test_cli_unreachable_controller_exits_3() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = invoke(port, "pools", "list")
    assert r.exit_code == 3 and "cannot reach the controller" in r.output


def test_endpoint_parsing() -> None:
    assert cli.parse_endpoint("localhost") == ("localhost", 7443)
    assert cli.parse_endpoint("10.0.0.1:9000") == ("10.0.0.1", 9000)
    assert cli.parse_endpoint("[::1]:7000") == ("::1", 7000)


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
    assert "1/2 healthy" in lines[1] and "4.0 GiB / 10.0 GiB" in lines[1]
    assert "n2 stale" in lines[2]
    alpha, bravo, charlie = lines[3:6]
    assert "HEALTHY" in alpha and "STALE" not in alpha and "5s ago" in alpha
    assert "HEALTHY (STALE)" in bravo
    assert "ERROR (unassigned)" in charlie and "mount failed" in charlie
    assert cli.render_pools([]).splitlines()[1].strip() == "(no pools)"
    disabled = compute.Node(
        id="n1", status=compute.NodeStatus(phase=compute.NodeStatusPhase.MAINTENANCE)
    )
    alpha = cli.render_pools([pool], nodes=[disabled], now=now).splitlines()[3]
    assert "HEALTHY (MAINTENANCE)" in alpha
