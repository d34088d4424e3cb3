"""End to end: a real node daemon (``python -m node``) paused and resumed under a real
controller. Its heartbeats carry its real figures (GetNodeMetrics); paused past the grace
it is OFFLINE, its figures refused, and the transition streamed (StreamEvents); resumed,
it recovers; ListNodeEvents shows both, newest first."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpclib.client
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from qvdc.app import Controller
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from tests.e2e.test_e2e_local_pools import spawn_node  # noqa: F401  (fixture)
from tests.qvdc.api.helpers import TIMEOUT, controller_settings, eventually

pytestmark = pytest.mark.e2e

Spawn = Callable[[str], tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=controller_settings(etcd_settings, grace=3.0))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def _refusal(call: object) -> Status | None:
    try:
        await call  # type: ignore[misc]
    except GRPCError as exc:
        return exc.status
    return None


async def test_a_paused_daemon_goes_offline_and_back_in_events_and_metrics(
    controller: Controller,
    spawn_node: Spawn,  # noqa: F811
) -> None:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    nodes = compute.NodeServiceStub(channel)
    proc, _ = spawn_node("host-e")
    try:

        async def node_id() -> list[str]:
            listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
            return [n.id for n in listed.nodes if n.hostname == "host-e"]

        [nid] = await eventually(node_id, lambda ids: len(ids) == 1, timeout=30)

        def metrics() -> asyncio.Future[compute.NodeMetrics]:
            return asyncio.ensure_future(
                nodes.get_node_metrics(compute.GetNodeMetricsRequest(id=nid), timeout=TIMEOUT)
            )

        async def current() -> compute.NodeMetrics | None:
            try:
                return await metrics()
            except GRPCError:
                return None

        got = await eventually(
            current,
            lambda m: m is not None and m.memory_total_bytes > 0,
            timeout=30,
            what="the daemon's own figures",
        )
        assert got is not None
        assert 0 < got.memory_used_bytes <= got.memory_total_bytes
        assert 0.0 <= got.cpu_usage_percent <= 100.0 and got.cpu_cores_total > 0

        stream = nodes.stream_events(compute.StreamEventsRequest(node_id=nid))
        marker = await asyncio.wait_for(stream.__anext__(), TIMEOUT)
        assert marker.metadata["marker"] == "subscribed"
        proc.send_signal(signal.SIGSTOP)  # silent, connection open: only the grace tells
        try:
            while (event := await asyncio.wait_for(stream.__anext__(), 20)).metadata[
                "event"
            ] != "node.offline":
                pass
            assert event.metadata["hostname"] == "host-e"
            assert await _refusal(metrics()) is Status.FAILED_PRECONDITION
        finally:
            proc.send_signal(signal.SIGCONT)
        while (back := await asyncio.wait_for(stream.__anext__(), 20)).metadata[
            "event"
        ] != "node.recovered":
            pass
        assert back.type == compute.SystemEventEventType.SYSTEM_RECOVERED
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator

        listed = await nodes.list_node_events(
            compute.ListNodeEventsRequest(node_id=nid), timeout=TIMEOUT
        )
        reasons = [e.reason for e in listed.events]
        assert reasons.index("node.recovered") < reasons.index("node.offline")
        assert {event.id, back.id} <= {e.id for e in listed.events}
        await eventually(current, lambda m: m is not None, what="figures current again")
    finally:
        proc.send_signal(signal.SIGCONT)
        channel.close()
