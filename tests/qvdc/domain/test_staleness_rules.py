"""Staleness rules beyond the single pass: a fleet going silent in waves, and each node's
grace from its own heartbeat interval."""

from __future__ import annotations

import pytest

from qvdc.domain import staleness
from qvdc.domain.model import NodeId
from qvdc.domain.staleness import Liveness

GRACE = 100.0
NOW = 1000.0


def fleet(**last_seen: tuple[float, bool]) -> dict[NodeId, Liveness]:
    """``name=(last_seen, live)``."""
    return {
        NodeId(n): Liveness(node_id=NodeId(n), last_seen=seen, live=live)
        for n, (seen, live) in last_seen.items()
    }


@pytest.mark.parametrize(
    ("records", "offline", "mass"),
    [
        pytest.param(
            fleet(a=(880.0, False), b=(880.0, False), c=(895.0, True), d=(895.0, True)),
            ("c", "d"),
            False,
            id="last-wave-after-a-recent-wave-is-judged",
        ),
        pytest.param(
            fleet(a=(799.0, False), b=(799.0, False), c=(895.0, True), d=(895.0, True)),
            (),
            True,
            id="lost-more-than-two-graces-ago-does-not-count",
        ),
        pytest.param(
            fleet(a=(800.0, False), c=(895.0, True), d=(895.0, True)),
            ("c", "d"),
            False,
            id="lost-exactly-two-graces-ago-counts",
        ),
        pytest.param(
            fleet(a=(880.0, False), c=(895.0, True), d=(895.0, True), e=(950.0, True)),
            ("c", "d"),
            False,
            id="a-live-node-remains",
        ),
        pytest.param(
            fleet(c=(895.0, True), d=(895.0, True)),
            (),
            True,
            id="all-at-once-is-still-a-freeze",
        ),
    ],
)
def test_waves(records: dict[NodeId, Liveness], offline: tuple[str, ...], mass: bool) -> None:
    result = staleness.classify(records=records, now=NOW, grace=GRACE)
    assert (result.newly_offline, result.mass_outage) == (tuple(map(NodeId, offline)), mass)


@pytest.mark.parametrize(
    ("requested", "interval", "told"),
    [
        pytest.param(5.0, 30.0, 5, id="node-shorter-wins"),
        pytest.param(60.0, 30.0, 30, id="controller-shorter-wins"),
        pytest.param(30.0, 30.0, 30, id="equal"),
        pytest.param(0.0, 30.0, 30, id="node-said-nothing"),
        pytest.param(0.3, 30.0, 1, id="sub-second-is-told-one-second"),
        pytest.param(0.0, 0.2, 1, id="sub-second-controller-is-told-one-second"),
        pytest.param(2.6, 30.0, 3, id="rounded-to-whole-seconds"),
    ],
)
def test_told_interval_secs(requested: float, interval: float, told: int) -> None:
    assert staleness.told_interval_secs(requested=requested, interval=interval) == told


@pytest.mark.parametrize(
    ("requested", "interval", "grace", "explicit", "expected"),
    [
        pytest.param(5.0, 30.0, 100.0, False, 25.0, id="node-interval-wins-3x5+10"),
        pytest.param(60.0, 30.0, 100.0, False, 100.0, id="controller-interval-wins"),
        pytest.param(0.0, 30.0, 100.0, False, 100.0, id="node-said-nothing"),
        pytest.param(30.0, 30.0, 100.0, False, 100.0, id="equal"),
        pytest.param(5.0, 30.0, 300.0, True, 300.0, id="explicit-grace-wins"),
        pytest.param(5.0, 30.0, 12.0, True, 12.0, id="explicit-short-grace-wins"),
        pytest.param(0.3, 0.5, 11.5, False, 11.5, id="never-longer-than-the-controllers"),
    ],
)
def test_node_grace(
    requested: float, interval: float, grace: float, explicit: bool, expected: float
) -> None:
    result = staleness.node_grace(
        requested=requested, interval=interval, grace=grace, explicit=explicit
    )
    assert result == expected


def test_classify_applies_each_nodes_own_grace() -> None:
    records = fleet(fast=(970.0, True), slow=(970.0, True), other=(999.0, True))
    result = staleness.classify(
        records=records, now=NOW, grace=GRACE, graces={NodeId("fast"): 25.0}
    )
    assert (result.newly_offline, result.mass_outage) == ((NodeId("fast"),), False)


@pytest.mark.parametrize(
    ("spread", "frozen"),
    [
        (0.0, False),  # expiries only: the early half is judged, a stop read as two waves
        (1.0, True),  # one interval of spread: the same stop is one outage
    ],
)
def test_a_fleet_stopped_at_once_is_one_outage_across_two_passes(
    spread: float, frozen: bool
) -> None:
    """Nodes stopped at the same moment have last heartbeats up to one interval apart
    (interval 1 s), so their expiries straddle passes: the later half is not expired yet."""
    records = {
        NodeId(n): Liveness(node_id=NodeId(n), last_seen=seen, live=True)
        for n, seen in [("a", 0.0), ("b", 0.3), ("c", 0.6), ("d", 0.9)]
    }
    result = staleness.classify(records=records, now=8.5, grace=8.0, spread=spread)
    assert result.mass_outage is frozen
    assert result.newly_offline == (() if frozen else (NodeId("a"), NodeId("b")))


def test_spread_never_freezes_when_one_node_still_heartbeats() -> None:
    records = {
        NodeId(n): Liveness(node_id=NodeId(n), last_seen=seen, live=True)
        for n, seen in [("a", 0.0), ("b", 0.9), ("c", 8.0)]
    }
    result = staleness.classify(records=records, now=8.5, grace=8.0, spread=1.0)
    assert not result.mass_outage
    assert result.newly_offline == (NodeId("a"),)
