"""ListNodeEvents and StreamEvents against a real controller and etcd: a node going
OFFLINE and recovering is listed newest first and streamed live; the history is bounded;
an etcd that does not take the events never holds a heartbeat."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpclib.client
import pytest
from grpclib.config import Configuration
from grpclib.const import Status

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.engines import eventstore
from qvdc.kits import eventlog
from qvdc.settings import EtcdSettings, EventSettings
from qvdc.store.etcd import EtcdStore
from tests.fixtures.etcd import FaultyStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    controller_settings,
    create_request,
    eventually,
    expect_error,
    register_request,
    report,
)

NodeType = compute.NodeEventEventType
SysType = compute.SystemEventEventType


async def _list(
    nodes: compute.NodeServiceStub, node_id: str, **kw: object
) -> list[compute.NodeEvent]:
    got = await nodes.list_node_events(
        compute.ListNodeEventsRequest(node_id=node_id, **kw),  # type: ignore[arg-type]
        timeout=TIMEOUT,
    )
    return got.events


class Subscriber:
    """A StreamEvents call read in a task into a queue."""

    def __init__(self, channel: grpclib.client.Channel, request: compute.StreamEventsRequest):
        self.received: asyncio.Queue[compute.SystemEvent] = asyncio.Queue()
        self.ended: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read(channel, request))

    async def _read(
        self, channel: grpclib.client.Channel, request: compute.StreamEventsRequest
    ) -> None:
        try:
            async for event in compute.NodeServiceStub(channel).stream_events(request):
                await self.received.put(event)
            self.ended.set_result(None)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            self.ended.set_result(exc)

    async def next(self, timeout: float = 10.0) -> compute.SystemEvent:
        return await asyncio.wait_for(self.received.get(), timeout)

    async def until(self, reason: str, timeout: float = 15.0) -> compute.SystemEvent:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next(timeout=max(0.01, deadline - loop.time()))
            if event.metadata.get("event") == reason:
                return event

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def subscribers(
    channel: grpclib.client.Channel,
) -> AsyncIterator[list[Subscriber]]:
    made: list[Subscriber] = []
    yield made
    for sub in made:
        await sub.close()


async def subscribe(
    made: list[Subscriber], channel: grpclib.client.Channel, **kw: object
) -> Subscriber:
    sub = Subscriber(channel, compute.StreamEventsRequest(**kw))  # type: ignore[arg-type]
    made.append(sub)
    marker = await sub.next()
    assert marker.type == SysType.SERVICE_STARTED and marker.metadata["marker"] == "subscribed"
    assert marker.id == ""
    return sub


async def test_offline_then_recovered_is_listed_newest_first_and_streamed(
    nodes: compute.NodeServiceStub,
    pools: storage.StoragePoolServiceStub,
    channel: grpclib.client.Channel,
    controller: Controller,
    subscribers: list[Subscriber],
) -> None:
    node = await nodes.register_node(register_request("blinky"), timeout=TIMEOUT)
    other = await nodes.register_node(register_request("steady"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request("blinkpool", nodes=[node.id]), timeout=TIMEOUT)
    assert await _list(nodes, node.id) == []
    everything = await subscribe(subscribers, channel)
    mine = await subscribe(subscribers, channel, node_id=node.id)
    recoveries = await subscribe(subscribers, channel, types=[SysType.SYSTEM_RECOVERED])
    theirs = await subscribe(subscribers, channel, node_id=other.id)
    warnings = await subscribe(subscribers, channel, types=[SysType.WARNING_ISSUED])

    async def keep_alive() -> None:  # one node stays live: no mass-outage freeze
        while True:
            await nodes.update_heartbeat(
                compute.UpdateHeartbeatRequest(node_id=other.id), timeout=TIMEOUT
            )
            await asyncio.sleep(0.3)

    alive = asyncio.create_task(keep_alive())
    try:
        await _offline_and_back(nodes, node, pool, controller, everything, mine, recoveries)
    finally:
        alive.cancel()
        await asyncio.gather(alive, return_exceptions=True)
    # The pool went UNKNOWN while its one host was silent: named by id and name.
    pool_event = await warnings.until("pool.phase")
    assert (pool_event.resource_id, pool_event.metadata["pool_name"]) == (pool.id, "blinkpool")
    assert pool_event.metadata["to"] == "UNKNOWN"
    # The other node's subscriber got nothing: that node never changed.
    assert theirs.received.empty()
    assert not theirs.ended.done()


async def _offline_and_back(
    nodes: compute.NodeServiceStub,
    node: compute.Node,
    pool: storage.StoragePool,
    controller: Controller,
    everything: Subscriber,
    mine: Subscriber,
    recoveries: Subscriber,
) -> None:
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(pool.id)]),
        timeout=TIMEOUT,
    )
    # Silent past the grace (3 s here): OFFLINE, then one heartbeat brings it back.
    offline = await mine.until("node.offline")
    assert offline.type == SysType.WARNING_ISSUED
    assert offline.severity == compute.SystemEventSeverity.WARNING
    assert (offline.source, offline.resource_id) == ("qvdc", node.id)
    assert offline.metadata["node_id"] == node.id
    assert offline.metadata["hostname"] == "blinky"
    assert offline.metadata["replica"] == controller.replica_id
    assert float(offline.metadata["grace_s"]) == pytest.approx(3.0)
    assert "OFFLINE" in offline.message
    await nodes.update_heartbeat(
        compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(pool.id)]),
        timeout=TIMEOUT,
    )
    recovered = await mine.until("node.recovered")
    assert recovered.type == SysType.SYSTEM_RECOVERED
    assert (await recoveries.until("node.recovered")).id == recovered.id
    assert (await everything.until("node.offline")).id == offline.id
    assert (await everything.until("node.recovered")).id == recovered.id

    listed = await eventually(
        lambda: _list(nodes, node.id),
        lambda events: any(e.reason == "node.recovered" for e in events),
        what="node.recovered listed",
    )
    reasons = [e.reason for e in listed]
    # Newest first: recovered (and its phase change) after offline (and its phase change).
    assert reasons.index("node.recovered") < reasons.index("node.offline")
    times = [e.timestamp.timestamp() for e in listed if e.timestamp is not None]
    assert len(times) == len(listed)
    assert times == sorted(times, reverse=True)
    by_id = {e.id: e for e in listed}
    assert by_id[offline.id].type == NodeType.WARNING
    assert by_id[offline.id].node_id == node.id
    assert by_id[recovered.id].type == NodeType.NORMAL
    assert by_id[recovered.id].message == recovered.message
    phases = [e.message for e in listed if e.reason == "node.phase"]
    assert any("READY -> OFFLINE" in m for m in phases), phases
    # The type filter and the limit.
    warnings = await _list(nodes, node.id, types=[NodeType.WARNING])
    assert warnings and all(e.type == NodeType.WARNING for e in warnings)
    assert offline.id in {e.id for e in warnings}
    assert [e.id for e in await _list(nodes, node.id, limit=1)] == [listed[0].id]


async def test_bad_requests_are_refused_naming_the_field(
    nodes: compute.NodeServiceStub, channel: grpclib.client.Channel
) -> None:
    node = await nodes.register_node(register_request("asker"), timeout=TIMEOUT)
    await expect_error(_list(nodes, node.id, limit=-1), Status.INVALID_ARGUMENT, "limit")
    await expect_error(_list(nodes, node.id, limit=1001), Status.INVALID_ARGUMENT, "limit")
    await expect_error(_list(nodes, ""), Status.INVALID_ARGUMENT, "node_id")
    await expect_error(_list(nodes, "nobody"), Status.NOT_FOUND, "node_id")
    assert await _list(nodes, node.id, limit=1000) == []
    with pytest.raises(grpclib.exceptions.GRPCError) as info:
        async for _ in nodes.stream_events(
            compute.StreamEventsRequest(node_id="nobody"), timeout=TIMEOUT
        ):
            pass
    assert info.value.status == Status.NOT_FOUND and "node_id" in (info.value.message or "")


def _event(node_id: str, i: int, *, padding: int = 0) -> eventlog.Event:
    return eventlog.Event(
        id=eventlog.new_event_id(),
        name="node.phase",
        level=logging.WARNING,
        message="x" * padding + f"node {node_id}: step {i}",
        fields={"node_id": node_id, "from": "READY", "to": "MAINTENANCE", "i": i},
    )


@pytest.fixture
async def small_history(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path
) -> AsyncIterator[Controller]:
    settings = dataclasses.replace(
        controller_settings(etcd_settings), events=EventSettings(history=20, subscriber_queue=4)
    )
    c = Controller(store=store, settings=settings)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def test_the_history_keeps_the_newest_n_per_node(
    small_history: Controller, store: EtcdStore
) -> None:
    c = small_history
    channel = grpclib.client.Channel("127.0.0.1", c.port)
    try:
        nodes = compute.NodeServiceStub(channel)
        node = await nodes.register_node(register_request("chatty"), timeout=TIMEOUT)
        quiet = await nodes.register_node(register_request("quiet"), timeout=TIMEOUT)
        c.events.record(_event(quiet.id, 0))
        for i in range(30):  # N + 10
            c.events.record(_event(node.id, i))
        listed = await eventually(
            lambda: _list(nodes, node.id, limit=1000),
            lambda events: bool(events) and events[0].message.endswith("step 29"),
            what="the last event",
        )
        assert [e.message for e in listed] == [
            f"node {node.id}: step {i}" for i in range(29, 9, -1)
        ]
        # The trim follows the write (same task): wait for it, then look in etcd.
        await eventually(
            lambda: asyncio.sleep(0, c.events.trimmed), lambda n: n >= 8, what="trimmed"
        )
        events_store = store.sibling(eventstore.events_prefix(store.settings.prefix))
        kept, _ = await events_store.get_prefix(eventstore.node_events(node.id))
        assert 20 <= len(kept) <= 22  # trimmed once past the bound by a tenth
        assert len(await _list(nodes, quiet.id)) == 1
    finally:
        channel.close()


async def test_a_slow_subscriber_is_ended_and_never_slows_the_others(
    small_history: Controller,
) -> None:
    c = small_history
    window = 65_535  # the smallest HTTP/2 allows (grpclib's default is 4 MiB)
    slow = grpclib.client.Channel(
        "127.0.0.1",
        c.port,
        config=Configuration(http2_stream_window_size=window, http2_connection_window_size=window),
    )
    fast = grpclib.client.Channel("127.0.0.1", c.port)
    made: list[Subscriber] = []
    try:
        nodes = compute.NodeServiceStub(fast)
        node = await nodes.register_node(register_request("noisy"), timeout=TIMEOUT)
        # The slow one reads its marker, then nothing for a while: once its HTTP/2 window
        # (64 KiB) is full and 4 more events wait, it is behind; when it reads again, it
        # gets what was sent and then the end of the stream.
        stream = compute.NodeServiceStub(slow).stream_events(compute.StreamEventsRequest())
        first = await asyncio.wait_for(stream.__anext__(), TIMEOUT)
        assert first.metadata["marker"] == "subscribed"
        reader = await subscribe(made, fast)
        started = asyncio.get_running_loop().time()
        for i in range(40):
            c.events.record(_event(node.id, i, padding=4096))
            got = await reader.until("node.phase", timeout=5.0)
            assert got.message.endswith(f"step {i}")
        assert asyncio.get_running_loop().time() - started < 20
        got_late = 0
        with pytest.raises(grpclib.exceptions.GRPCError) as info:
            async with asyncio.timeout(10):
                async for _ in stream:
                    got_late += 1
        assert info.value.status == Status.RESOURCE_EXHAUSTED
        assert "behind" in (info.value.message or "")
        assert 4 < got_late < 40  # what its window held, then the end
    finally:
        for sub in made:
            await sub.close()
        slow.close()
        fast.close()


async def test_subscribers_are_bounded(
    store: EtcdStore, etcd_settings: EtcdSettings, subscribers: list[Subscriber]
) -> None:
    settings = dataclasses.replace(
        controller_settings(etcd_settings), events=EventSettings(max_subscribers=2)
    )
    c = Controller(store=store, settings=settings)
    await c.start()
    channel = grpclib.client.Channel("127.0.0.1", c.port)
    try:
        await subscribe(subscribers, channel)
        await subscribe(subscribers, channel)
        with pytest.raises(grpclib.exceptions.GRPCError) as info:
            async for _ in compute.NodeServiceStub(channel).stream_events(
                compute.StreamEventsRequest(), timeout=TIMEOUT
            ):
                pass
        assert info.value.status == Status.RESOURCE_EXHAUSTED
        assert "events.max_subscribers" in (info.value.message or "")
        assert c.events.subscribers == 2
    finally:
        for sub in subscribers:
            await sub.close()
        subscribers.clear()
        channel.close()
        await c.stop()


async def test_an_etcd_that_takes_no_events_never_holds_a_heartbeat(
    store: EtcdStore, etcd_settings: EtcdSettings, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = FaultyStore(store)
    settings = dataclasses.replace(
        controller_settings(etcd_settings), events=EventSettings(queue=5)
    )
    c = Controller(store=faulty, settings=settings)
    await c.start()
    channel = grpclib.client.Channel("127.0.0.1", c.port)
    try:
        nodes = compute.NodeServiceStub(channel)
        node = await nodes.register_node(register_request("unlucky"), timeout=TIMEOUT)
        faulty.hang("grant_lease")  # the event writer's first call: it hangs, as etcd would
        caplog.set_level(logging.WARNING, logger="qvdc.engines.eventstore")
        for i in range(50):
            c.events.record(_event(node.id, i))
        assert c.events.dropped >= 40  # the queue holds 5 (and the writer one batch)
        assert any("dropped" in r.getMessage() for r in caplog.records)
        scraped = c.metrics.render().decode()
        assert f"qvdc_events_dropped_total {float(c.events.dropped)}" in scraped
        assert f"qvdc_events_queued {float(c.events.queued)}" in scraped
        for _ in range(20):
            started = time.monotonic()
            await nodes.update_heartbeat(
                compute.UpdateHeartbeatRequest(node_id=node.id), timeout=TIMEOUT
            )
            assert time.monotonic() - started < 0.5
        faulty.heal()
        c.events.record(_event(node.id, 99))
        listed = await eventually(
            lambda: _list(nodes, node.id),
            lambda events: any(e.message.endswith("step 99") for e in events),
            what="events written again after etcd came back",
        )
        assert listed[0].message.endswith("step 99")
    finally:
        channel.close()
        await c.stop()


def test_system_event_types_follow_the_event() -> None:
    from qvdc.api import node_events

    def of(name: str, level: int = logging.INFO, **fields: str) -> compute.SystemEvent:
        stored = eventstore.StoredEvent(
            id="e", name=name, level=level, message="m", at=1.0, replica="r1", fields=fields,
            node_id="n1" if name.startswith(("node.", "host.")) else "",
            pool_id="p1" if name.startswith(("pool.", "host.")) else "",
        )  # fmt: skip
        return node_events.system_event(stored)

    cases = {
        ("node.offline", logging.WARNING, ()): (SysType.WARNING_ISSUED, "n1"),
        ("node.recovered", logging.INFO, ()): (SysType.SYSTEM_RECOVERED, "n1"),
        ("pool.phase", logging.WARNING, (("to", "ERROR"),)): (SysType.ERROR_OCCURRED, "p1"),
        ("pool.phase", logging.INFO, (("to", "READY"),)): (SysType.SYSTEM_RECOVERED, "p1"),
        ("host.health", logging.WARNING, (("to", "DEGRADED"),)): (SysType.WARNING_ISSUED, "n1"),
        ("pool.deleted", logging.INFO, ()): (SysType.STORAGE_POOL_DELETED, "p1"),
        ("leader.acquired", logging.INFO, ()): (SysType.SERVICE_STARTED, "r1"),
        ("leader.lost", logging.INFO, ()): (SysType.SERVICE_STOPPED, "r1"),
        ("liveness.frozen", logging.WARNING, ()): (SysType.WARNING_ISSUED, "r1"),
        ("liveness.unfrozen", logging.INFO, ()): (SysType.SYSTEM_RECOVERED, "r1"),
    }
    for (name, level, fields), (kind, resource) in cases.items():
        got = of(name, level, **dict(fields))
        assert (got.type, got.resource_id) == (kind, resource), name
        assert got.metadata["event"] == name and got.source == "qvdc"
    assert (
        of("pool.phase", logging.WARNING, to="ERROR").severity == compute.SystemEventSeverity.ERROR
    )
