"""EventStore against a real etcd: where each event is kept, the codec, a lease revoked
under the writer, a value that is not an event, and a watch that breaks and resumes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest

from qvdc.engines import eventstore
from qvdc.engines.eventstore import EventStore, StoredEvent
from qvdc.engines.view import ClusterView
from qvdc.kits import eventlog, tasks
from qvdc.kits.timing import FakeClock
from qvdc.settings import EventSettings
from qvdc.store.etcd import EtcdStore
from tests.fixtures.etcd import FaultyStore
from tests.qvdc.api.helpers import eventually


def event(name: str = "node.offline", **fields: object) -> eventlog.Event:
    return eventlog.Event(
        eventlog.new_event_id(), name, logging.WARNING, f"{name} happened", fields
    )


@contextlib.asynccontextmanager
async def running(events: EventStore) -> AsyncIterator[EventStore]:
    task = asyncio.create_task(events.run())
    try:
        yield events
    finally:
        await tasks.cancel_and_wait(task)


def make(store: EtcdStore, **settings: int) -> EventStore:
    return EventStore(
        store=store,
        view=ClusterView(store=store),
        clock=FakeClock(),
        settings=EventSettings(**settings),
        replica_id="r9",
        timeout=2.0,
    )


async def written(events: EventStore, count: int) -> None:
    await eventually(
        lambda: asyncio.sleep(0, events.written), lambda n: n >= count, what=f"{count} written"
    )


def test_keys_sort_by_time_and_the_codec_round_trips() -> None:
    assert eventstore.events_prefix("/quantix/") == "/quantix-events/"
    a = StoredEvent(id="a" * 32, name="node.offline", level=logging.WARNING, message="m",
                    at=1_700_000_000.5, node_id="n1", hostname="h1", replica="r1",
                    fields={"grace_s": "3.0"})  # fmt: skip
    b = StoredEvent(id="0" * 32, name="pool.phase", level=logging.INFO, message="m2",
                    at=1_700_000_001.25, pool_id="p1", pool_name="fast")  # fmt: skip
    assert a.key == f"nodes/n1/{1_700_000_000_500_000:016d}-{'a' * 32}"
    assert b.key.startswith("pools/p1/") and b.key.split("/")[2] > a.key.split("/")[2]
    assert eventstore.decode(eventstore.encode(a)) == a
    assert eventstore.decode(eventstore.encode(b)) == b
    for bad in (b"", b"[]", b'{"name": "x"}', b'{"id": "i", "name": "n", "at": "soon"}'):
        with pytest.raises(eventstore.Undecodable):
            eventstore.decode(bad)


async def test_each_event_is_kept_under_its_node_pool_or_replica(
    store: EtcdStore,
) -> None:
    events = make(store)
    events.record(event("liveness.frozen", nodes=3))  # about neither: the replica's
    events.record(event("node.offline", node_id="n1", grace_s=3.0))
    events.record(event("host.health", node_id="n1", pool_id="p1", to=None))
    events.record(event("pool.phase", pool_id="p1", **{"from": "READY", "to": "ERROR"}))
    assert events.queued == 4
    async with running(events):
        await written(events, 4)
    history = await events.node_history("n1")
    assert [e.name for e in history] == ["host.health", "node.offline"]  # newest first
    assert history[0].pool_id == "p1" and history[0].fields == {"to": ""}
    assert history[1].fields == {"grace_s": "3.0"} and history[1].replica == "r9"
    kvs, _ = await events.store.get_prefix(eventstore.pool_events("p1"))
    [pool_event] = [eventstore.decode(kv.value) for kv in kvs]
    assert pool_event.fields == {"from": "READY", "to": "ERROR"}
    kvs, _ = await events.store.get_prefix(eventstore.replica_events("r9"))
    [frozen] = [eventstore.decode(kv.value) for kv in kvs]
    assert (frozen.name, frozen.fields) == ("liveness.frozen", {"nodes": "3"})
    # The replica's own keyspace holds none of it.
    assert [kv.key for kv in (await store.get_prefix(""))[0]] == []


async def test_a_revoked_lease_is_replaced_and_nothing_is_lost(store: EtcdStore) -> None:
    events = make(store)
    async with running(events):
        events.record(event(node_id="n1"))
        await written(events, 1)
        assert events._lease is not None
        await store.revoke_lease(events._lease)  # the event on it goes with it
        events.record(event(node_id="n1"))
        await written(events, 2)
    assert [e.name for e in await events.node_history("n1")] == ["node.offline"]
    assert events.dropped == 0


async def test_a_value_that_is_not_an_event_is_skipped(
    store: EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    events = make(store)
    await events.store.put(eventstore.node_events("n1") + "0000000000000001-x", b"garbage")
    async with running(events), events.subscribe() as sub:
        await events.store.put(eventstore.node_events("n1") + "0000000000000002-y", b"{}")
        events.record(event(node_id="n1"))
        got = await asyncio.wait_for(sub.next(), 10)
        assert got is not None and got.name == "node.offline"
    assert [e.name for e in await events.node_history("n1")] == ["node.offline"]
    assert sum("ignoring" in r.getMessage() for r in caplog.records) >= 2


async def test_the_watch_resumes_after_a_break_without_losing_an_event(store: EtcdStore) -> None:
    faulty = FaultyStore(store)
    events = make(faulty)
    sibling = events.store
    assert isinstance(sibling, FaultyStore)
    async with running(events), events.subscribe() as sub:
        events.record(event(node_id="n1"))
        first = await asyncio.wait_for(sub.next(), 10)
        await sibling.cut_watches()  # the watch's connection closes under it
        events.record(event("node.recovered", node_id="n1"))
        second = await asyncio.wait_for(sub.next(), 10)
        assert first is not None and second is not None
        assert (first.name, second.name) == ("node.offline", "node.recovered")
    assert events.subscribers == 0  # the last one left: the watch is stopped


async def test_a_full_subscription_says_so_and_gets_nothing_more(store: EtcdStore) -> None:
    events = make(store, subscriber_queue=2)
    async with running(events), events.subscribe() as sub:
        for i in range(3):
            events.record(event(node_id="n1", i=i))
        await asyncio.wait_for(sub.overflowed.wait(), 10)
        assert await sub.next() is None
