"""The liveness freeze on real etcd: every live node silent in one pass marks nobody, and
the freeze is visible (one WARNING, a LivenessFrozen condition on every node it holds),
lasts until a heartbeat arrives, and ends cleanly (one INFO, the condition cleared, a
fresh grace for every node). A fleet going silent in waves is judged, not frozen."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from qvdc.domain.model import NodeId, NodePhase, NodeState
from qvdc.engines.liveness import FROZEN_CONDITION
from qvdc.store.etcd import EtcdStore
from tests.qvdc.engines.liveness_rig import GRACE, Replica, make_replica, status

LOGGER = "qvdc.engines.liveness"


@pytest.fixture
async def replica(store: EtcdStore) -> AsyncIterator[Replica]:
    a = await make_replica(store, "A")
    try:
        yield a
    finally:
        await a.stop_following()


def frozen_shown(state: NodeState) -> bool | None:
    """The latest LivenessFrozen condition's status (None: never frozen)."""
    for condition in reversed(state.conditions):
        if condition.type == FROZEN_CONDITION:
            return condition.status
    return None


def lines(caplog: pytest.LogCaptureFixture, level: int, word: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and word in r.getMessage()
    ]


async def test_the_freeze_is_visible_lasts_and_ends_with_a_fresh_grace(
    store: EtcdStore, replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    a = replica
    nodes = [await a.register(f"h{i}") for i in range(3)]
    await a.heartbeat(*nodes)
    await a.pass_(GRACE + 5.0)  # all three silent in one pass: frozen
    for _ in range(int(3 * GRACE / 5)):  # three more graces of silence: still frozen
        await a.pass_(5.0)
    for node_id in nodes:
        state = await status(store, node_id)
        assert (state.live, state.phase, frozen_shown(state)) == (True, NodePhase.READY, True)
    [started] = lines(caplog, logging.WARNING, "frozen")
    assert "all 3 live nodes" in started
    assert lines(caplog, logging.INFO, "freeze ended") == []
    # One node is heard again: the freeze ends, once, and its condition is cleared everywhere.
    await a.pass_(5.0, heard=(nodes[0],))
    [ended] = lines(caplog, logging.INFO, "freeze ended")
    assert "1 of 3" in ended
    for node_id in nodes:
        state = await status(store, node_id)
        assert (state.live, frozen_shown(state)) == (True, False), node_id
    # Every node has a fresh grace from the end: the silent two are not offline before it...
    await a.pass_(GRACE - 5.0, heard=(nodes[0],))
    assert all([(await status(store, n)).live for n in nodes])
    # ...and are judged after it: a second wave of silence after a freeze (one node still
    # heartbeats, so no second freeze).
    await a.pass_(6.0, heard=(nodes[0],))
    assert [(await status(store, n)).live for n in nodes] == [True, False, False]
    assert len(lines(caplog, logging.WARNING, "frozen")) == 1


async def test_a_fleet_going_silent_in_waves_is_judged_not_frozen(
    store: EtcdStore, replica: Replica
) -> None:
    """Four of six go silent, then (5 s later) the last two: the first wave is marked, and
    the last wave, though it is every node still live, is marked too."""
    a = replica
    nodes: list[NodeId] = [await a.register(f"h{i}") for i in range(6)]
    await a.heartbeat(*nodes)
    await a.pass_(5.0, heard=tuple(nodes[4:]))  # the first wave's last heartbeat was 5 s ago
    for _ in range(int(GRACE / 5)):
        await a.pass_(5.0)
    # Four are past the grace, two are not yet: the four are marked (four of six).
    assert [(await status(store, n)).live for n in nodes] == [False] * 4 + [True] * 2
    await a.pass_(5.0)  # now the last two are past it too: every live node, but judged
    assert [(await status(store, n)).live for n in nodes] == [False] * 6
    assert not a.monitor.mass_outage
