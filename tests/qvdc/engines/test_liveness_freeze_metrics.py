"""The liveness freeze as a metric (issue 16: "the freeze is visible (API condition, log
event, metric)"): on real etcd, ``qvdc_liveness_frozen`` reads 1 from the pass that
freezes until the pass that ends it, then 0; ``qvdc_liveness_freezes_total`` counts it
once; parsed from the exposition as Prometheus would read it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qvdc import metrics
from qvdc.store.etcd import EtcdStore
from tests.qvdc.engines.liveness_rig import GRACE, Replica, make_replica


@pytest.fixture
async def replica(store: EtcdStore) -> AsyncIterator[Replica]:
    a = await make_replica(store, "A")
    try:
        yield a
    finally:
        await a.stop_following()


def read(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


async def test_the_freeze_gauge_is_1_while_frozen_and_0_after(replica: Replica) -> None:
    a = replica
    registry = CollectorRegistry()
    registry.register(metrics.LivenessCollector(a.monitor))
    nodes = [await a.register(f"h{i}") for i in range(3)]
    await a.heartbeat(*nodes)
    await a.pass_(5.0, heard=tuple(nodes))
    assert read(registry) == {
        "qvdc_liveness_frozen": 0,
        "qvdc_liveness_freezes_total": 0,
        "qvdc_leader": 0,
    }
    await a.pass_(GRACE + 5.0)  # all three silent in one pass: frozen
    assert read(registry)["qvdc_liveness_frozen"] == 1
    await a.pass_(5.0)  # still silent: still frozen, still one freeze
    assert read(registry)["qvdc_liveness_frozen"] == 1
    assert read(registry)["qvdc_liveness_freezes_total"] == 1
    await a.pass_(5.0, heard=(nodes[0],))  # one node heard again: the freeze ends
    after = read(registry)
    assert (after["qvdc_liveness_frozen"], after["qvdc_liveness_freezes_total"]) == (0, 1)
    a.monitor.leader = True
    assert read(registry)["qvdc_leader"] == 1
