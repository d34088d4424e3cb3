"""Each node is judged on the interval it was told: a real controller (30 s interval, the
default grace) and the node daemon's own client registering with ``--heartbeat-interval 5``.

The node is told 5 s, and goes OFFLINE after 3 x 5 + 10 = 25 s of silence, not after the
controller's 3 x 30 + 10 = 100 s. A node that says nothing (upstream) keeps the controller's
interval and grace. The controller's clock is fake: the test moves it past each grace.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpclib.client
import pytest

from node import client as node_client
from node import hostfacts
from node import settings as node_settings
from protos.limiquantix.compute import v1 as compute
from qvdc.app import Controller
from qvdc.domain.model import NodeId
from qvdc.kits.timing import FakeClock
from qvdc.settings import (
    ControllerSettings,
    EtcdSettings,
    GrpcSettings,
    HeartbeatSettings,
    MonitorSettings,
)
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import TIMEOUT, eventually

LOG = logging.getLogger("test")


@pytest.fixture
async def controller(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> AsyncIterator[tuple[Controller, FakeClock]]:
    clock = FakeClock()
    settings = ControllerSettings(
        etcd=etcd_settings,
        grpc=GrpcSettings(host="127.0.0.1", port=0),
        heartbeat=HeartbeatSettings(interval=30.0, commit_delay=0.001),
        monitor=MonitorSettings(check_period=0.05),  # the grace is the default: 100 s
        replica_id="r1",
    )
    ctrl = Controller(store=store, settings=settings, clock=clock)
    await ctrl.start()
    try:
        yield ctrl, clock
    finally:
        await ctrl.stop()


async def register(endpoint: str, hostname: str, interval: float) -> str:
    c = node_client.ControllerClient(
        endpoints=[node_settings.parse_endpoint(endpoint)],
        rpc_timeout=5.0,
        recreate_after=5,
        logger=LOG,
    )
    try:
        return await c.register(
            hostname=hostname,
            management_ip="10.0.0.1",
            labels={},
            facts=hostfacts.HostFacts(hostname=hostname),
            heartbeat_interval=interval,
        )
    finally:
        c.close()


async def live(store: EtcdStore, node_id: str) -> bool:
    kv = await store.get(keys.node_status(node_id))
    assert kv is not None
    return codec.decode_node_state(node_id, kv.value).live


async def test_a_node_asking_for_5s_is_told_5s_and_judged_on_25s(
    controller: tuple[Controller, FakeClock], store: EtcdStore
) -> None:
    ctrl, clock = controller
    endpoint = f"127.0.0.1:{ctrl.port}"
    fast = await register(endpoint, "fast", 5.0)
    slow = await register(endpoint, "slow", 60.0)  # asks for longer: the controller's wins
    upstream = await register(endpoint, "upstream", 0.0)  # says nothing
    channel = grpclib.client.Channel("127.0.0.1", ctrl.port)
    try:
        nodes = compute.NodeServiceStub(channel)
        told = {}
        for name, node_id in (("fast", fast), ("slow", slow), ("upstream", upstream)):
            reply = await nodes.update_heartbeat(
                compute.UpdateHeartbeatRequest(node_id=node_id), timeout=TIMEOUT
            )
            told[name] = reply.heartbeat_interval_secs
        assert told == {"fast": 5, "slow": 30, "upstream": 30}
    finally:
        channel.close()
    clock.advance(24.0)  # within the fast node's grace (25 s)
    ctrl.monitor.check()
    assert ctrl.monitor.is_live(fast)
    clock.advance(2.0)  # 26 s: past it; far within the others' 100 s
    await eventually(lambda: live(store, fast), lambda v: not v, what="fast node OFFLINE")
    assert await live(store, slow) and await live(store, upstream)
    assert ctrl.monitor.grace_of(NodeId(fast)) == 25.0
    assert ctrl.monitor.grace_of(NodeId(slow)) == ctrl.monitor.grace_of(NodeId(upstream)) == 100.0
