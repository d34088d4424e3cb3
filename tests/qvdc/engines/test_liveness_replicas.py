"""Liveness across two replicas on real etcd: a node is judged once, by its owner.

Each replica here is the real wiring of one controller's liveness (a ClusterView that
follows etcd's watch, a LivenessMonitor, a Catalog for registration) on its own fake
clock; the test drives the passes, so a "pause" is a replica whose clock and passes
stand still while the other takes the node's heartbeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from qvdc.domain.model import NodeId, NodeState
from qvdc.engines.catalog import Catalog
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.view import ClusterView
from qvdc.kits import tasks
from qvdc.kits.timing import FakeClock
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore

GRACE = 30.0


@dataclass
class Replica:
    name: str
    clock: FakeClock
    view: ClusterView
    monitor: LivenessMonitor
    catalog: Catalog
    following: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        self.following = asyncio.create_task(self.view.run(), name=f"view-{self.name}")
        await self.view.wait_ready(timeout=5.0)

    async def stop_following(self) -> None:
        if self.following is not None:
            await tasks.cancel_and_wait(self.following)
            self.following = None

    async def caught_up(self) -> None:
        await self.view.wait_for_revision(await self.view.store.revision(timeout=5.0), timeout=5.0)

    async def register(self, hostname: str) -> NodeId:
        def build(node_id: str, old: Mapping[str, Any] | None) -> dict[str, Any]:
            return {"id": node_id, "hostname": hostname}

        node_id, _ = await self.catalog.register_node(hostname=hostname, build=build)
        return NodeId(node_id)

    async def heartbeat(self, *node_ids: NodeId) -> None:
        for node_id in node_ids:
            self.monitor.observe(node_id)
        await self.monitor._write_transitions()

    async def pass_(self, advance: float, *, heard: tuple[NodeId, ...] = ()) -> None:
        """Move this replica's clock on, take the heartbeats of ``heard``, run one liveness
        pass and write what it decided."""
        self.clock.advance(advance)
        for node_id in heard:
            self.monitor.observe(node_id)
        self.monitor.check()
        await self.monitor._write_transitions()


async def make_replica(store: EtcdStore, name: str) -> Replica:
    clock = FakeClock()
    view = ClusterView(store=store)
    monitor = LivenessMonitor(
        store=store,
        view=view,
        clock=clock,
        replica_id=name,
        grace=GRACE,
        startup_grace=GRACE,
        check_period=5.0,
        mass_outage_fraction=1.0,
        timeout=5.0,
    )
    catalog = Catalog(store=store, view=view, monitor=monitor, clock=clock, timeout=5.0)
    replica = Replica(name=name, clock=clock, view=view, monitor=monitor, catalog=catalog)
    await store.put(keys.replica(name), name.encode())  # presence (a lease in production)
    await replica.follow()
    return replica


@pytest.fixture
async def pair(store: EtcdStore) -> AsyncIterator[tuple[Replica, Replica]]:
    a = await make_replica(store, "A")
    b = await make_replica(store, "B")
    try:
        yield a, b
    finally:
        await a.stop_following()
        await b.stop_following()


async def status(store: EtcdStore, node_id: str) -> NodeState:
    kv = await store.get(keys.node_status(node_id))
    assert kv is not None
    return codec.decode_node_state(node_id, kv.value)


async def test_a_replica_paused_while_its_nodes_moved_marks_none_of_them_offline(
    store: EtcdStore, pair: tuple[Replica, Replica]
) -> None:
    """A stalls (a GC-length pause); n1 and n2 fail over to B; n3 stays with A. When A's
    passes run again, n1 and n2 are B's to judge: A writes nothing about them."""
    a, b = pair
    n1, n2, n3 = [await a.register(h) for h in ("h1", "h2", "h3")]
    await a.heartbeat(n1, n2, n3)
    await b.caught_up()
    # A is paused: its clock and passes stand still. n1, n2 reconnect to B.
    for _ in range(3):
        await b.heartbeat(n1, n2)
        await b.pass_(5.0)
    await a.caught_up()  # A's watch delivers what happened while it was paused
    # A wakes up: n3 still heartbeats to it; n1 and n2 have been silent (to A) for long.
    await a.pass_(GRACE + 5.0, heard=(n3,))
    for _ in range(3):
        await a.pass_(5.0, heard=(n3,))
    for node_id, owner in ((n1, "B"), (n2, "B"), (n3, "A")):
        state = await status(store, node_id)
        assert (state.live, state.owner_replica) == (True, owner), node_id


async def test_a_replica_waking_with_a_stale_view_writes_no_stale_verdict(
    store: EtcdStore, pair: tuple[Replica, Replica], caplog: pytest.LogCaptureFixture
) -> None:
    """A's watch is behind when it wakes (it still sees itself as the owner): its OFFLINE
    write must fail on etcd's compare and be dropped quietly, not retried until the view
    catches up and then written over B's ownership."""
    a, b = pair
    n1, n2 = [await a.register(h) for h in ("h1", "h2")]
    await a.heartbeat(n1, n2)
    await b.caught_up()
    await a.stop_following()  # A's view freezes: it will wake up believing it owns n1
    await b.heartbeat(n1)
    await b.pass_(5.0)
    caplog.set_level(logging.INFO, logger="qvdc.engines.liveness")
    await a.pass_(GRACE + 5.0, heard=(n2,))  # n1 silent to A past the grace; n2 is not
    assert (await status(store, n1)).live
    await a.follow()  # the watch is back
    for _ in range(3):
        await a.pass_(5.0, heard=(n2,))
    state = await status(store, n1)
    assert (state.live, state.owner_replica) == (True, "B")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_node_registered_through_one_replica_and_heartbeating_to_the_other(
    store: EtcdStore, pair: tuple[Replica, Replica]
) -> None:
    """Registered through B, streaming to A only: B must never mark it OFFLINE."""
    a, b = pair
    n1 = await b.register("h1")
    n2 = await a.register("h2")
    await a.caught_up()
    for _ in range(4 * int(GRACE / 5)):  # four graces of passes on both replicas
        await a.pass_(5.0, heard=(n1, n2))
        await b.pass_(5.0)
        state = await status(store, n1)
        assert (state.live, state.owner_replica) == (True, "A")


async def test_nodes_of_a_gone_replica_are_judged_by_the_leader_alone(
    store: EtcdStore, pair: tuple[Replica, Replica]
) -> None:
    """B dies (its presence key goes); its silent nodes are the leader's (A's) to judge,
    after a fresh grace from the takeover."""
    a, b = pair
    n1, n2 = [await b.register(h) for h in ("h1", "h2")]
    n3 = await a.register("h3")
    await b.heartbeat(n1, n2)
    await b.stop_following()
    await store.delete(keys.replica("B"))
    a.monitor.leader = True
    await a.caught_up()
    await a.pass_(0.0, heard=(n3,))
    await a.pass_(GRACE - 1.0, heard=(n3,))  # adopted with a fresh grace: not yet offline
    assert (await status(store, n1)).live
    await a.pass_(2.0, heard=(n3,))
    for node_id in (n1, n2):
        state = await status(store, node_id)
        assert not state.live, node_id
