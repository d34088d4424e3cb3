"""The whole daemon: real local_dir pools on tmp_path, a real grpclib server, restarts, signals."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from node import app
from storage_backends import base

REPO = Path(__file__).resolve().parents[2]


async def test_registers_attaches_reports_and_persists(
    controller, node_settings, run_app, pool_def, eventually, tmp_path
):
    controller.assigned = [pool_def("p1"), pool_def("p2", path=str(tmp_path / "custom"))]
    node = app.NodeApp(settings=node_settings(controller.endpoint, labels={"rack": "r1"}))
    await run_app(node)

    await eventually(
        lambda: (
            {k: v.health for k, v in node.heartbeat.acked_reports.items()}
            == {"p1": base.PoolHealth.HEALTHY, "p2": base.PoolHealth.HEALTHY}
        ),
        what="both local_dir pools reported healthy",
    )
    status = node.status()
    assert status.node_id == "node-host-a-1"
    assert status.endpoint == controller.endpoint
    assert status.attached == ("p1", "p2")
    assert status.pools["p1"].mount_path == str(tmp_path / "pools" / "p1")
    assert status.pools["p2"].mount_path == str(tmp_path / "custom")
    assert (tmp_path / "pools" / "p1").is_dir() and (tmp_path / "custom").is_dir()
    assert status.heartbeats_acknowledged >= 1

    registration = controller.register_requests[0]
    assert (registration.hostname, dict(registration.labels)) == ("host-a", {"rack": "r1"})
    assert registration.cpu_info.total_threads == 16  # libvirt test:///default
    state = tmp_path / "state"
    assert (state / "node-id").read_text().strip() == "node-host-a-1"
    await eventually(lambda: (state / "assignments.json").exists(), what="assignments saved")
    saved = json.loads((state / "assignments.json").read_text())
    assert [p["pool_id"] for p in saved["pools"]] == ["p1", "p2"]


async def test_restart_without_controller_reattaches_pools(
    controller, closed_endpoint, node_settings, run_app, pool_def, eventually, tmp_path
):
    controller.assigned = [pool_def("p1")]
    first = app.NodeApp(settings=node_settings(controller.endpoint))
    stop_first = await run_app(first)
    await eventually(lambda: first.status().attached == ("p1",), what="p1 attached")
    await eventually(
        lambda: (tmp_path / "state" / "assignments.json").exists(), what="assignments saved"
    )
    await stop_first()

    # The host restarts while no controller is reachable.
    second = app.NodeApp(settings=node_settings(closed_endpoint))
    await run_app(second)
    await eventually(lambda: second.status().attached == ("p1",), what="p1 re-attached")
    status = second.status()
    assert status.pools["p1"].health is base.PoolHealth.HEALTHY
    assert status.endpoint is None
    assert status.node_id == "node-host-a-1"  # remembered, not yet confirmed


async def test_sigterm_stops_the_daemon_cleanly(closed_endpoint, tmp_path):
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node",
        "--controller",
        closed_endpoint,
        "--state-dir",
        str(tmp_path / "state"),
        "--hostname",
        "sig-host",
        "--heartbeat-interval",
        "1",
        "--probe-timeout",
        "0.5",
        "--libvirt-uri",
        "test:///default",
        "--insecure",
        "--log-level",
        "debug",
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not any("controller unreachable" in line for line in lines):
                raw = await process.stderr.readline()
                assert raw, "daemon exited early:\n" + "".join(lines)
                lines.append(raw.decode())
            process.send_signal(signal.SIGTERM)
            rest = await process.stderr.read()
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = "".join(lines) + rest.decode()
    assert code == 0, output
    assert "node sig-host starting" in output
    assert "received SIGTERM" in output
    assert "node sig-host stopped" in output
    assert "Traceback" not in output


async def test_a_root_task_cancelled_by_anything_but_the_shutdown_fails_the_daemon(
    closed_endpoint, node_settings
):
    node = app.NodeApp(settings=node_settings(closed_endpoint))
    running = asyncio.create_task(node.run(stop=asyncio.Event()))
    async with asyncio.timeout(20):
        await node.started.wait()
    [prober] = [t for t in asyncio.all_tasks() if t.get_name() == "prober"]
    prober.cancel()  # nobody set stop: this is not a shutdown
    with pytest.raises(app.RootTaskEnded, match="root task prober ended before the daemon"):
        async with asyncio.timeout(20):
            await running
