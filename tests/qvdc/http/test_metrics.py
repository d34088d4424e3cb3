"""``GET /metrics`` of a real replica (real etcd, gRPC and HTTP on loopback): a known
sequence of heartbeats, scraped over HTTP and parsed with prometheus-client's parser,
gives exact counters and the phase gauges; deploy/prometheus/alerts.yml names only
metrics the registries expose."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpclib.client
import grpclib.const
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from node import metrics as node_metrics
from node.heartbeat import HeartbeatStats
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.metrics import ViewCollector
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore, LeaseExpired
from tests.qvdc.api.helpers import TIMEOUT, create_request, register_request, report
from tests.qvdc.http.conftest import Http, http_settings, unaggregated

ROOT = Path(__file__).resolve().parents[3]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def replica(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=http_settings(etcd_settings))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def channel(replica: Controller) -> AsyncIterator[grpclib.client.Channel]:
    ch = grpclib.client.Channel("127.0.0.1", replica.port)
    try:
        yield ch
    finally:
        ch.close()


async def scrape(http: Http) -> Samples:
    answer = await http.request("GET", "/metrics")
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return parse(answer.body.decode())


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


async def scrape_until(http: Http, wanted: float, name: str, **labels: str) -> Samples:
    """Scrape until the sample ``name{labels}`` reads ``wanted`` (bounded)."""
    samples: Samples = {}
    for _ in range(200):
        samples = await scrape(http)
        if samples.get(key(name, **labels)) == wanted:
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}{labels} never read {wanted}: {samples.get(key(name, **labels))}")


async def test_a_known_heartbeat_sequence_scrapes_as_exact_counters_and_gauges(
    replica: Controller, channel: grpclib.client.Channel
) -> None:
    nodes = compute.NodeServiceStub(channel)
    pools = storage.StoragePoolServiceStub(channel)
    http = Http(replica.http_port)
    node = await nodes.register_node(register_request("metered"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("metered", nodes=[node.id]), timeout=TIMEOUT)
    # Five unary heartbeats with the same report: written once, then unchanged four times;
    # the last also names a pool that does not exist.
    for i in range(5):
        extra = [report("no-such-pool")] if i == 4 else []
        await nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(
                node_id=node.id, storage_pools=[report(pool.id), *extra], sequence=i + 1
            ),
            timeout=TIMEOUT,
        )
    # Two more on a stream (one stream opened), both reports unchanged.
    async with channel.request(
        "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
        grpclib.const.Cardinality.STREAM_STREAM,
        compute.UpdateHeartbeatRequest,
        compute.UpdateHeartbeatResponse,
        timeout=30,
    ) as stream:
        for sequence in (10, 11):
            await stream.send_message(
                compute.UpdateHeartbeatRequest(
                    node_id=node.id, storage_pools=[report(pool.id)], sequence=sequence
                )
            )
            answer = await stream.recv_message()
            assert answer is not None and answer.acknowledged
        samples = await scrape_until(http, 1.0, "qvdc_pools", phase="READY")
        assert samples[("qvdc_heartbeat_streams_open", ())] == 1.0
        await stream.end()
    await replica.committer.flushed(timeout=TIMEOUT)
    samples = await scrape_until(http, 1.0, "qvdc_aggregation_lag_seconds_count")

    def value(name: str, **labels: str) -> float:
        return samples[key(name, **labels)]

    assert value("qvdc_heartbeats_received_total", transport="unary") == 5
    assert value("qvdc_heartbeats_received_total", transport="stream") == 2
    assert value("qvdc_host_reports_total", result="written") == 1
    assert value("qvdc_host_reports_total", result="unchanged") == 6
    assert value("qvdc_host_reports_total", result="unknown_pool") == 1
    assert value("qvdc_host_status_writes_total") == 1
    assert value("qvdc_host_status_ops_total", result="committed") == 1
    assert value("qvdc_heartbeat_streams_opened_total") == 1
    assert value("qvdc_pools", phase="READY") == 1
    assert sum(v for (n, _), v in samples.items() if n == "qvdc_pools") == 1
    assert value("qvdc_nodes", phase="READY") == 1
    assert value("qvdc_nodes", phase="OFFLINE") == 0
    assert value("qvdc_leader") == 1
    assert value("qvdc_liveness_frozen") == 0
    assert value("qvdc_liveness_freezes_total") == 0
    assert value("qvdc_pool_aggregates_written_total") >= 1
    # The one written report's lag: bounded, and in the buckets consistently.
    lag = value("qvdc_aggregation_lag_seconds_sum")
    assert 0 <= lag < TIMEOUT
    assert value("qvdc_aggregation_lag_seconds_bucket", le="+Inf") == 1
    assert not [n for (n, _) in samples if n == "qvdc_etcd_errors_total"]


async def test_pools_are_counted_by_the_phase_getpool_shows(
    replica: Controller, channel: grpclib.client.Channel
) -> None:
    """Not aggregated yet is PENDING, as GetPool shows it (it read UNKNOWN, which an alert on
    UNKNOWN pools would have taken for a fleet problem after every CreatePool)."""
    nodes = compute.NodeServiceStub(channel)
    pools = storage.StoragePoolServiceStub(channel)
    node = await nodes.register_node(register_request("counted"), timeout=TIMEOUT)
    created = await pools.create_pool(create_request("fresh", nodes=[node.id]), timeout=TIMEOUT)
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(created.id)]),
        timeout=TIMEOUT,
    )
    await scrape_until(Http(replica.http_port), 1.0, "qvdc_pools", phase="READY")

    collector = ViewCollector(unaggregated(replica.view))  # the leader has not written it
    counted = {
        sample.labels["phase"]: sample.value
        for family in collector.collect()
        if family.name == "qvdc_pools"
        for sample in family.samples
    }
    assert counted["PENDING"] == 1 and counted["UNKNOWN"] == 0 and counted["READY"] == 0
    shown = await pools.get_pool(storage.GetPoolRequest(id=created.id), timeout=TIMEOUT)
    assert shown.status.phase == storage.StoragePoolStatusPhase.READY  # the real view's


async def test_open_watch_streams_are_a_gauge(
    replica: Controller, channel: grpclib.client.Channel
) -> None:
    http = Http(replica.http_port)
    samples = await scrape(http)
    assert samples[key("qvdc_watch_streams_open")] == 0
    pools = storage.StoragePoolServiceStub(channel)
    await pools.create_pool(create_request("watched"), timeout=TIMEOUT)  # an initial state

    def watch() -> Any:
        return channel.request(
            "/limiquantix.storage.v1.StoragePoolService/WatchPools",
            grpclib.const.Cardinality.UNARY_STREAM,
            storage.WatchPoolsRequest,
            storage.PoolUpdate,
            timeout=30,
        )

    async with watch() as first, watch() as second:
        for stream in (first, second):
            await stream.send_message(storage.WatchPoolsRequest(), end=True)
            assert await stream.recv_message() is not None  # the pool's ADDED: it is open
        await scrape_until(http, 2.0, "qvdc_watch_streams_open")
        await first.cancel()
        await scrape_until(http, 1.0, "qvdc_watch_streams_open")
        await second.cancel()
    await scrape_until(http, 0.0, "qvdc_watch_streams_open")


async def test_etcd_errors_are_counted_by_operation_and_kind(
    replica: Controller, store: EtcdStore
) -> None:
    with pytest.raises(LeaseExpired):  # etcd: "lease not found"
        await store.put("metrics-probe", b"x", lease=0x7FFF_FFFF_0001)
    samples = await scrape(Http(replica.http_port))
    assert samples[key("qvdc_etcd_errors_total", kind="lease_not_found", operation="put")] == 1


async def test_metrics_is_get_only_and_needs_no_credentials(replica: Controller) -> None:
    http = Http(replica.http_port)
    assert (await http.request("POST", "/metrics", b"")).status == 405
    head = await http.request("HEAD", "/metrics")
    assert head.status == 200 and head.body == b""
    assert (await http.request("GET", "/metrics")).status == 200


def family_names(text: str) -> set[str]:
    """The sample names each family of an exposition may have (with or without samples)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


async def test_every_alert_expression_names_metrics_that_exist(replica: Controller) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert {
        "QvdcNodeOffline",
        "QvdcPoolDegraded",
        "QvdcPoolError",
        "QvdcLivenessFrozen",
        "QvdcAggregationLagHigh",
        "QvdcEtcdErrors",
        "QvdcNoLeader",
        "QvdcNodeProbesFailing",
    } <= {rule["alert"] for rule in alerts}
    answer = await Http(replica.http_port).request("GET", "/metrics")
    known = family_names(answer.body.decode()) | family_names(node_exposition())
    for rule in alerts:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        used = set(re.findall(r"\b(qvdc_[a-z_]+)", rule["expr"]))
        assert used, rule["alert"]
        assert used <= known, (rule["alert"], used - known)


def node_exposition() -> str:
    """What a node daemon's registry exposes (no probe yet: every family, no children)."""
    metrics = node_metrics.NodeMetrics()
    metrics.watch(stats=HeartbeatStats(), connected=lambda: False, reports=dict)
    return metrics.render().decode()
