"""The aggregator's inputs in time, over a real etcd: whose last heartbeat a row is judged on,
and the deadline heap (checked lazily, bounded per pass)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from qvdc.domain.model import (
    Health,
    HostPoolStatus,
    NodeCondition,
    NodeId,
    NodePhase,
    NodeState,
    PoolId,
    PoolPhase,
    PoolReport,
)
from qvdc.engines import aggregator as aggregator_module
from qvdc.engines import liveness
from qvdc.engines.aggregator import Aggregator
from qvdc.engines.view import ClusterView
from qvdc.kits import tasks
from qvdc.kits.timing import FakeClock
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore

GRACE = 10.0
ME = "r1"
POOL = PoolId("p1")


@contextlib.asynccontextmanager
async def following(view: ClusterView) -> AsyncIterator[ClusterView]:
    task = asyncio.create_task(view.run(), name="view")
    try:
        await view.wait_ready(timeout=10)
        yield view
    finally:
        await tasks.cancel_and_wait(task)


async def put_fleet(
    store: EtcdStore,
    clock: FakeClock,
    states: dict[str, NodeState],
) -> None:
    """Nodes (registered long ago), their states, one pool on all of them, HEALTHY rows."""
    for node_id, state in states.items():
        doc = {"id": node_id, "hostname": f"host-{node_id}", "createdAt": "2020-01-01T00:00:00Z"}
        await store.put(keys.node(node_id), codec.encode_node_document(doc))
        await store.put(keys.node_status(node_id), codec.encode_node_state(state))
        report = PoolReport(pool_id=POOL, health=Health.HEALTHY, total_bytes=100)
        row = HostPoolStatus(node_id=NodeId(node_id), report=report, changed_at=clock.time())
        await store.put(keys.host_status(POOL, node_id), codec.encode_host_status(row))
    pool = {
        "id": POOL,
        "name": "pool",
        "spec": {"backend": {"type": "LOCAL_DIR"}, "assignedNodeIds": sorted(states)},
        "updatedAt": "2020-01-01T00:00:00Z",
    }
    await store.put(keys.pool(POOL), codec.encode_pool_document(pool))


def state(node_id: str, *, owner: str, frozen: bool | None = None, heard: float = 0.0) -> NodeState:
    conditions: tuple[NodeCondition, ...] = ()
    if frozen is not None:
        conditions = (
            NodeCondition(
                type=liveness.FROZEN_CONDITION, status=frozen, reason="", message="", at=0.0
            ),
        )
    return NodeState(
        node_id=NodeId(node_id),
        phase=NodePhase.READY,
        last_heartbeat_at=heard,
        live=True,
        owner_replica=owner,
        conditions=conditions,
    )


async def test_a_row_is_judged_on_its_owners_last_heartbeat(store: EtcdStore) -> None:
    clock = FakeClock()
    now = clock.time()
    heard = {"mine-fresh": now - 1, "mine-old": now - GRACE - 1}
    await put_fleet(
        store,
        clock,
        {
            # Owned here: this replica's own record of the last heartbeat decides.
            "mine-fresh": state("mine-fresh", owner=ME),
            "mine-old": state("mine-old", owner=ME, heard=now),  # etcd's time is not read
            "mine-unheard": state("mine-unheard", owner=ME),  # not heard here yet: trusted
            # Owned by another live replica: its verdict in etcd is trusted ...
            "theirs": state("theirs", owner="r2", heard=now - 1000),
            "theirs-thawed": state("theirs-thawed", owner="r2", frozen=False, heard=now - 1000),
            # ... unless it froze the node: then the heartbeat it recorded at the freeze.
            "theirs-frozen-old": state(
                "theirs-frozen-old", owner="r2", frozen=True, heard=now - 11
            ),
            "theirs-frozen-new": state("theirs-frozen-new", owner="r2", frozen=True, heard=now - 9),
        },
    )
    view = ClusterView(store=store)
    agg = Aggregator(
        store=store,
        view=view,
        clock=clock,
        timeout=5.0,
        grace=GRACE,
        interval=1.0,
        replica_id=ME,
        heard_at=heard.get,
    )
    async with following(view):
        result = agg.compute(POOL)
    assert result is not None
    stale = {row.node_id for row in result.rows if row.stale}
    assert stale == {"mine-old", "theirs-frozen-old"}
    assert result.phase == PoolPhase.DEGRADED
    assert result.capacity.total_bytes == 500
    assert "host-mine-old (mine-old) stale (no heartbeat)" in result.error_message


async def test_deadlines_are_checked_lazily_and_bounded_per_pass(
    store: EtcdStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    names = [f"n{i}" for i in range(5)]
    heard = dict.fromkeys(names, clock.time())
    await put_fleet(store, clock, {n: state(n, owner=ME) for n in names})
    # A second pool on the four that keep heartbeating: no deadline of theirs may mark it.
    other = {"id": "p2", "name": "other", "spec": {"assignedNodeIds": names[1:]}}
    await store.put(keys.pool("p2"), codec.encode_pool_document(other))
    for n in names[1:]:
        await store.put(keys.assignment(n, "p2"), b"")
    view = ClusterView(store=store)
    agg = Aggregator(
        store=store,
        view=view,
        clock=clock,
        timeout=5.0,
        grace=GRACE,
        interval=1.0,
        replica_id=ME,
        heard_at=heard.get,
        recheck=2.0,
    )
    monkeypatch.setattr(aggregator_module, "MAX_TIMER_WORK", 2)
    async with following(view):
        first = agg.compute(POOL)
        assert first is not None and first.phase == PoolPhase.READY
        assert agg.compute("p2") is not None
        # Every node is due at heard + grace: the loop sleeps until then (in steps of at
        # most MAX_TIMER_SLEEP against wall-clock steps), not a busy poll.
        assert agg._sleep_budget() == aggregator_module.MAX_TIMER_SLEEP
        # Four keep heartbeating: their deadlines come and are only moved on.
        clock.advance(GRACE - 1)
        for n in names[1:]:
            heard[n] = clock.time()
        clock.advance(1.5)
        # Five entries due (at least: a row event the view delivers late under load adds a
        # superseded one), two handled per pass: each pass asks for the next while some
        # are left, so it takes three passes or more, and it ends.
        passes = 0
        while True:
            before = len(agg._timers)
            agg._wakeup.clear()
            agg._run_timers()
            passes += 1
            assert before - len(agg._timers) <= 2  # bounded per pass
            if not agg._wakeup.is_set():
                break
            assert passes < 10, "the due entries never ran out"
        assert passes >= 3
        # Only the silent one's pool was marked; the others were rescheduled, nothing marked.
        assert agg._dirty == {POOL}
        later = agg.compute(POOL)
        assert later is not None
        assert [row.node_id for row in later.rows if row.stale] == ["n0"]
        agg._dirty.clear()
        # The silent node is still live in etcd (a freeze): it is rechecked, and its next
        # heartbeat marks the pool again with no event in etcd.
        heard["n0"] = clock.time()
        clock.advance(2.1)
        agg._run_timers()
        assert agg._dirty == {POOL}
        back = agg.compute(POOL)
        assert back is not None and back.phase == PoolPhase.READY
