"""Liveness across two replicas on real etcd: a node is judged once, by its owner.

Each replica is :mod:`tests.qvdc.engines.liveness_rig`'s: the real wiring of one
controller's liveness on its own fake clock, driven pass by pass by the test, so a
"pause" is a replica whose clock and passes stand still while the other takes the
node's heartbeats.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from qvdc.store import keys
from qvdc.store.etcd import EtcdStore
from tests.qvdc.engines.liveness_rig import GRACE, Replica, make_replica, status


@pytest.fixture
async def pair(store: EtcdStore) -> AsyncIterator[tuple[Replica, Replica]]:
    a = await make_replica(store, "A")
    b = await make_replica(store, "B")
    try:
        yield a, b
    finally:
        await a.stop_following()
        await b.stop_following()


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
    """n1 registered through A streams to B; B dies (its presence key goes). A, not
    leading, had only stopped hearing n1: it marks nothing. Once A leads, it adopts n1
    with a fresh grace and judges it."""
    a, b = pair
    n1 = await a.register("h1")
    n2 = await a.register("h2")  # keeps heartbeating to A: no freeze
    await b.caught_up()
    await b.heartbeat(n1)
    await b.stop_following()
    await store.delete(keys.replica("B"))
    await a.caught_up()
    for _ in range(int(2 * GRACE / 5)):
        await a.pass_(5.0, heard=(n2,))
    assert (await status(store, n1)).live  # nobody judges it: no leader
    a.monitor.leader = True
    await a.pass_(0.0, heard=(n2,))  # adopted now, with a fresh grace
    await a.pass_(GRACE - 1.0, heard=(n2,))
    assert (await status(store, n1)).live
    await a.pass_(2.0, heard=(n2,))
    state = await status(store, n1)
    assert (state.live, state.phase.name) == (False, "OFFLINE")
