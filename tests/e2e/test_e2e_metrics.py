"""End to end: a real controller with its HTTP server and a real ``qvdc-node`` process
(``python -m node --metrics-listen``) with a local-directory pool. Both ``/metrics`` are
scraped over HTTP while the node heartbeats on its stream; then SIGTERM stops the node
promptly even with a scrape connection left half-sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpclib.client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings, HttpSettings
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import TIMEOUT, controller_settings, eventually

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(port: int) -> Samples:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    try:
        text = await asyncio.to_thread(fetch)
    except OSError:
        return {}  # not listening yet
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def spawn_node(controller_port: int, *, metrics_port: int, home: Path) -> subprocess.Popen[bytes]:
    """``python -m node`` against the controller, its /metrics on ``metrics_port``."""
    with open(home / "node.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node",
                "--controller",
                f"127.0.0.1:{controller_port}",
                "--hostname",
                "metered-host",
                "--state-dir",
                str(home / "state"),
                "--heartbeat-interval",
                "1",
                "--libvirt-uri",
                "test:///default",
                "--insecure",  # the in-process controller is plain text
                "--metrics-listen",
                f"127.0.0.1:{metrics_port}",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    return proc


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    settings = dataclasses.replace(
        controller_settings(etcd_settings, grace=3.0),
        http=HttpSettings(enabled=True, host="127.0.0.1", port=0, close_timeout=1.0),
    )
    c = Controller(store=store, settings=settings)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def test_controller_and_node_metrics_of_a_real_daemon(
    controller: Controller, tmp_path: Path
) -> None:
    metrics_port = free_port()
    log_path = tmp_path / "node.log"
    proc = spawn_node(controller.port, metrics_port=metrics_port, home=tmp_path)
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        nodes = compute.NodeServiceStub(channel)
        pools = storage.StoragePoolServiceStub(channel)

        async def node_ids() -> list[str]:
            listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
            return [n.id for n in listed.nodes]

        [node_id] = await eventually(node_ids, lambda ids: len(ids) == 1, timeout=30)
        await pools.create_pool(
            storage.CreatePoolRequest(
                name="metered",
                spec=storage.StoragePoolSpec(
                    backend=storage.StorageBackend(
                        type=storage.StorageBackendBackendType.LOCAL_DIR,
                        local_dir=storage.LocalDirConfig(),
                    ),
                    assigned_node_ids=[node_id],
                ),
            ),
            timeout=TIMEOUT,
        )
        node = await eventually(
            lambda: scrape(metrics_port),
            lambda s: (
                s.get(("qvdc_node_pools", (("health", "HEALTHY"),))) == 1
                and s.get(
                    ("qvdc_node_probe_duration_seconds_count", (("backend", "local_dir"),)), 0
                )
                >= 1
            ),
            timeout=30,
            what="the node's metrics showing its pool probed HEALTHY",
        )
        assert node[("qvdc_node_connected", ())] == 1
        assert node[("qvdc_node_heartbeats_acknowledged_total", ())] >= 1
        assert node[("qvdc_node_stream_connects_total", ())] == 1
        http_port = controller.http_port
        ctl = await eventually(
            lambda: scrape(http_port),
            # The view can show the READY aggregate a moment before the leader, back from
            # its write, observes the report's lag.
            lambda s: (
                s.get(("qvdc_pools", (("phase", "READY"),))) == 1
                and s.get(("qvdc_aggregation_lag_seconds_count", ()), 0) >= 1
            ),
            timeout=30,
            what="the controller's metrics showing the pool READY and its lag",
        )
        assert ctl[("qvdc_nodes", (("phase", "READY"),))] == 1
        assert ctl[("qvdc_heartbeat_streams_open", ())] == 1
        assert ctl[("qvdc_heartbeat_streams_opened_total", ())] == 1
        assert ctl[("qvdc_heartbeats_received_total", (("transport", "stream"),))] >= 1
        assert ctl[("qvdc_heartbeats_received_total", (("transport", "unary"),))] == 0
        assert ctl[("qvdc_host_reports_total", (("result", "written"),))] >= 1
        assert ctl[("qvdc_aggregation_lag_seconds_count", ())] >= 1
        # A scrape left half-sent does not hold the daemon's shutdown up.
        _reader, writer = await asyncio.open_connection("127.0.0.1", metrics_port)
        writer.write(b"GET /metr")
        await writer.drain()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
        assert code == 0, log_path.read_text(errors="replace")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
