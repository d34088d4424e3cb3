"""HeartbeatIntake in a real controller over a real etcd: one host's report that the
store cannot hold becomes that host's ERROR row, and every other host's report lands."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.domain.model import Health, HostPoolStatus, NodeId, PoolId, PoolReport
from qvdc.settings import EtcdSettings
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import (
    controller_settings,
    create_request,
    eventually,
    register_request,
)

TIMEOUT = 10.0
GIB = 1024**3


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=controller_settings(etcd_settings))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def rows(store: EtcdStore, pool_id: str) -> dict[str, HostPoolStatus]:
    kvs, _ = await store.get_prefix(keys.host_statuses_of(pool_id), timeout=TIMEOUT)
    return {
        kv.key.rsplit("/", 1)[1]: codec.decode_host_status(
            pool_id, kv.key.rsplit("/", 1)[1], kv.value
        )
        for kv in kvs
    }


def healthy(pool_id: str, *, used: int, message: str = "") -> PoolReport:
    return PoolReport(
        pool_id=PoolId(pool_id),
        health=Health.HEALTHY,
        total_bytes=100 * GIB,
        used_bytes=used,
        available_bytes=100 * GIB - used,
        error_message=message,
    )


async def two_hosts_on_a_pool(controller: Controller) -> tuple[NodeId, NodeId, str]:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        nodes = compute.NodeServiceStub(channel)
        a = await nodes.register_node(register_request("host-a"), timeout=TIMEOUT)
        b = await nodes.register_node(register_request("host-b"), timeout=TIMEOUT)
        pools = storage.StoragePoolServiceStub(channel)
        pool = await pools.create_pool(create_request("pp", nodes=[a.id, b.id]), timeout=TIMEOUT)
    finally:
        channel.close()
    return NodeId(a.id), NodeId(b.id), pool.id


async def test_an_oversized_report_is_its_hosts_error_row_and_the_others_land(
    controller: Controller, store: EtcdStore
) -> None:
    a, b, pool_id = await two_hosts_on_a_pool(controller)
    intake = controller.intake
    intake.accept(node_id=b, reports=[healthy(pool_id, used=GIB)], full=True)
    await eventually(lambda: rows(store, pool_id), lambda r: b in r, what="B's first row")

    poison = healthy(pool_id, used=GIB, message="x" * (2 * 1024 * 1024))
    intake.accept(node_id=a, reports=[poison], full=True)
    intake.accept(node_id=b, reports=[healthy(pool_id, used=7 * GIB)], full=True)

    got = await eventually(
        lambda: rows(store, pool_id),
        lambda r: a in r and r[b].report.used_bytes == 7 * GIB,
        what="A's ERROR row and B's change",
    )
    assert got[b].report.health is Health.HEALTHY
    assert got[a].report.health is Health.ERROR
    assert got[a].report.error_message.startswith("report refused by the store: ")
    assert len(got[a].report.error_message) < 200
    assert got[a].report.used_bytes == 0


async def test_a_report_etcd_refuses_is_its_hosts_error_row_and_the_others_land(
    controller: Controller, store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intake's own size check off: etcd itself refuses the write (over its 1.5 MiB
    request limit); the committer isolates it and the row becomes ERROR."""
    a, b, pool_id = await two_hosts_on_a_pool(controller)
    committer = controller.committer
    monkeypatch.setattr(committer, "max_op_bytes", 64 * 1024 * 1024)
    monkeypatch.setattr(committer, "_max_txn_bytes", 64 * 1024 * 1024)
    intake = controller.intake

    poison = healthy(pool_id, used=GIB, message="x" * (2 * 1024 * 1024))
    intake.accept(node_id=a, reports=[poison], full=True)
    intake.accept(node_id=b, reports=[healthy(pool_id, used=7 * GIB)], full=True)

    got = await eventually(
        lambda: rows(store, pool_id),
        lambda r: a in r and b in r,
        what="A's ERROR row and B's row",
    )
    assert got[b].report == healthy(pool_id, used=7 * GIB)
    assert got[a].report.health is Health.ERROR
    assert got[a].report.error_message.startswith("report refused by the store: ")
    assert committer.ops_refused == 1
