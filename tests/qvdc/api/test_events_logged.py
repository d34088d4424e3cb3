"""Through a real controller: a host's report turning ERROR is logged once as ``host.health``
and once as ``pool.phase`` by the aggregation leader, however often it is repeated; taking
and giving up the leadership are ``leader.acquired`` and ``leader.lost``."""

from __future__ import annotations

import asyncio
import logging

import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.kits import eventlog
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    controller_settings,
    create_request,
    eventually,
    register_request,
    report,
)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    return [
        dict(getattr(r, eventlog.FIELDS_ATTR))
        for r in caplog.records
        if getattr(r, eventlog.EVENT_ATTR, None) == name
    ]


async def test_a_pool_going_to_error_is_one_event_of_each_kind(
    pools: storage.StoragePoolServiceStub,
    nodes: compute.NodeServiceStub,
    controller: Controller,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="qvdc.engines.events")
    node = await nodes.register_node(register_request("host-e"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("evented", nodes=[node.id]), timeout=TIMEOUT)

    async def beat(*, health: int = 1, error: str = "", total: int = 100 << 30) -> None:
        reports = [report(pool.id, health=health, error=error, total=total)]
        await nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=reports),
            timeout=TIMEOUT,
        )

    async def phase() -> storage.StoragePoolStatusPhase:
        got = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)
        return got.status.phase

    await beat()
    await eventually(phase, lambda p: p == storage.StoragePoolStatusPhase.READY, what="READY")
    for total in (100 << 30, 90 << 30, 80 << 30):  # the same ERROR, with material changes
        await beat(health=3, error="mount lost", total=total)
        await controller.committer.flushed(timeout=TIMEOUT)
    await eventually(phase, lambda p: p == storage.StoragePoolStatusPhase.ERROR, what="ERROR")
    await beat(health=3, error="mount lost", total=70 << 30)
    await controller.committer.flushed(timeout=TIMEOUT)

    to_error = [e for e in events(caplog, "pool.phase") if e["to"] == "ERROR"]
    assert to_error == [{"pool_id": pool.id, "from": "READY", "to": "ERROR"}]
    host = [e for e in events(caplog, "host.health") if e["to"] == "ERROR"]
    assert host == [
        {"pool_id": pool.id, "node_id": node.id, "error": "mount lost", "from": "HEALTHY",
         "to": "ERROR"}
    ]  # fmt: skip


async def test_leadership_is_logged_when_taken_and_when_given_up(
    store: EtcdStore, etcd_settings: EtcdSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qvdc.app")
    replica = Controller(store=store, settings=controller_settings(etcd_settings))
    await replica.start()
    try:
        await eventually(
            lambda: asyncio.sleep(0, replica.election.is_leader), bool, what="leadership"
        )
    finally:
        await replica.stop()
    names = [
        (getattr(r, eventlog.EVENT_ATTR), dict(getattr(r, eventlog.FIELDS_ATTR)))
        for r in caplog.records
        if getattr(r, eventlog.EVENT_ATTR, "").startswith("leader.")
    ]
    assert names == [
        ("leader.acquired", {"replica_id": "test-replica"}),
        ("leader.lost", {"replica_id": "test-replica"}),
    ]


async def test_an_operator_phase_change_is_one_node_phase_event(
    nodes: compute.NodeServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qvdc.engines.catalog")
    node = await nodes.register_node(register_request("host-m"), timeout=TIMEOUT)
    await nodes.disable_node(compute.DisableNodeRequest(id=node.id), timeout=TIMEOUT)
    await nodes.disable_node(compute.DisableNodeRequest(id=node.id), timeout=TIMEOUT)  # no-op
    await nodes.enable_node(compute.EnableNodeRequest(id=node.id), timeout=TIMEOUT)
    got = [(e["node_id"], e["from"], e["to"]) for e in events(caplog, "node.phase")]
    assert got == [(node.id, "READY", "MAINTENANCE"), (node.id, "MAINTENANCE", "READY")]
