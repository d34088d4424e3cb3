"""The node daemon's ``/metrics`` listener: a real daemon (real local_dir pools on
tmp_path, the scripted controller over real gRPC) scraped over real HTTP on loopback and
parsed with prometheus-client's parser; the listener's refusals; a stop with a request
hanging half-sent."""

from __future__ import annotations

import asyncio
import http.client
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node import app, metrics, probing
from node import settings as settings_mod
from storage_backends import base
from storage_backends.local_dir import LocalDirBackend

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


async def scrape(port: int) -> Samples:
    status, kind, body = await asyncio.to_thread(get, port, "/metrics")
    assert status == 200 and kind.startswith("text/plain; version="), (status, kind)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def test_a_running_daemon_serves_probe_heartbeat_and_pool_metrics(
    controller, node_settings, run_app, pool_def, eventually
):
    controller.assigned = [pool_def("p1"), pool_def("p2")]
    node = app.NodeApp(settings=node_settings(controller.endpoint, metrics_listen="127.0.0.1:0"))
    await run_app(node)
    assert node.metrics_server is not None and node.metrics_server.port > 0
    port = node.metrics_server.port
    await eventually(
        lambda: (
            node.heartbeat.stats.acknowledged >= 2
            # Two rounds: the first may have run before the second pool was attached.
            and node.prober.rounds >= 2
            and all(i.health is base.PoolHealth.HEALTHY for i in node.pools.reports().values())
            and len(node.pools.reports()) == 2
        ),
        what="both pools probed healthy and acknowledged",
    )
    samples = await scrape(port)
    stats = node.heartbeat.stats
    assert samples[("qvdc_node_pools", (("health", "HEALTHY"),))] == 2
    assert samples[("qvdc_node_pools", (("health", "ERROR"),))] == 0
    assert samples[("qvdc_node_connected", ())] == 1
    assert samples[("qvdc_node_stream_connects_total", ())] == stats.sessions >= 1
    assert samples[("qvdc_node_registrations_total", ())] == 1
    sent = samples[("qvdc_node_heartbeats_sent_total", ())]
    acked = samples[("qvdc_node_heartbeats_acknowledged_total", ())]
    assert 2 <= acked <= sent <= stats.sent  # read at scrape time: never ahead of the daemon
    probes = samples[("qvdc_node_probe_duration_seconds_count", (("backend", "local_dir"),))]
    assert probes >= 2  # a round probed both pools, each a real statvfs and write probe
    total = samples[("qvdc_node_probe_duration_seconds_sum", (("backend", "local_dir"),))]
    assert 0 < total < probes * 0.3  # each within the probe timeout
    assert samples.get(("qvdc_node_probe_failures_total", (("backend", "local_dir"),)), 0) == 0


async def test_probe_metrics_count_each_probe_and_its_failure(tmp_path):
    """A real local_dir probe, healthy and then of a path that is no longer a directory:
    one observation each, the second a failure."""
    node_metrics = metrics.NodeMetrics()
    prober = probing.Prober(
        timeout=1.0, logger=logging.getLogger("test"), on_probe=node_metrics.observe_probe
    )
    backend = LocalDirBackend(pools_root=tmp_path)
    spec = base.PoolSpec(pool_id="p1", kind="local_dir", config={"path": str(tmp_path / "p1")})
    await backend.attach(spec, timeout=1.0)
    assert (await prober.probe_one(backend=backend, spec=spec)).health is base.PoolHealth.HEALTHY
    (tmp_path / "p1").rmdir()
    (tmp_path / "p1").write_text("not a directory")
    assert (await prober.probe_one(backend=backend, spec=spec)).health is base.PoolHealth.ERROR
    text = node_metrics.render().decode()
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("qvdc_node_probe_duration_seconds_count", (("backend", "local_dir"),))] == 2
    assert samples[("qvdc_node_probe_failures_total", (("backend", "local_dir"),))] == 1


@pytest.fixture
async def listener():
    node_metrics = metrics.NodeMetrics()
    server = metrics.MetricsServer(
        metrics=node_metrics,
        host="127.0.0.1",
        port=0,
        logger=logging.getLogger("test"),
        read_timeout=0.5,
    )
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def test_the_listener_serves_only_get_metrics(listener):
    assert (await asyncio.to_thread(get, listener.port, "/"))[0] == 404
    assert (await asyncio.to_thread(get, listener.port, "/metrics", "POST"))[0] == 405
    status, _, body = await asyncio.to_thread(get, listener.port, "/metrics", "HEAD")
    assert (status, body) == (200, b"")
    status, _, body = await asyncio.to_thread(get, listener.port, "/metrics?x=1")
    assert status == 200 and b"qvdc_node_probe_duration_seconds" in body


async def test_a_trickled_or_oversized_request_is_closed_and_close_does_not_wait(listener):
    # A request whose head never ends is dropped after read_timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the server, nothing answered
    writer.close()
    # A head over the limit is dropped at once.
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (metrics.MAX_REQUEST_HEAD + 10))
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    # Closing the listener with a request half-sent ends it promptly.
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
    writer.write(b"GET /metr")
    await writer.drain()
    await asyncio.sleep(0.05)
    async with asyncio.timeout(2):
        await listener.close()
    writer.close()


def test_metrics_listen_is_validated_naming_the_setting(node_settings):
    for bad in ("nocolon", ":9100", "host:port", "host:70000"):
        with pytest.raises(settings_mod.SettingsError, match="metrics_listen"):
            node_settings("127.0.0.1:1", metrics_listen=bad)
    assert settings_mod.parse_listen("[::1]:9100") == ("::1", 9100)
    assert node_settings("127.0.0.1:1", metrics_listen="0.0.0.0:0").metrics_listen == "0.0.0.0:0"
