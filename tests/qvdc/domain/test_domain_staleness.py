"""Liveness on the controller's clock: grace, mass outage, resets and the node phase table.

Boundary choice under test: a node is offline when ``now - last_seen > grace`` (strictly
greater); a heartbeat exactly ``grace`` old is still live.
"""

from __future__ import annotations

import itertools

import pytest

from qvdc.domain import staleness
from qvdc.domain.model import NodeId, NodePhase
from qvdc.domain.staleness import Classification, Liveness

GRACE = 100.0


def records_of(**last_seen: float | None) -> dict[NodeId, Liveness]:
    """``name=last_seen`` for live nodes, ``name=None`` for an already-offline node."""
    return {
        NodeId(name): Liveness(
            node_id=NodeId(name), last_seen=0.0 if seen is None else seen, live=seen is not None
        )
        for name, seen in last_seen.items()
    }


def outcome(
    *, offline: tuple[str, ...] = (), live: tuple[str, ...] = (), mass: bool = False
) -> Classification:
    return Classification(
        newly_offline=tuple(NodeId(n) for n in offline),
        still_live=tuple(NodeId(n) for n in live),
        mass_outage=mass,
    )


# --------------------------------------------------------------------------------------------
# A single node: the grace boundary (no mass-outage rule can interfere with one node).


@pytest.mark.parametrize(
    ("last_seen", "now", "grace", "offline"),
    [
        pytest.param(1000.0, 1000.0, GRACE, False, id="just-seen"),
        pytest.param(1000.0, 1050.0, GRACE, False, id="half-grace"),
        pytest.param(1000.0, 1100.0, GRACE, False, id="exactly-at-grace-still-live"),
        pytest.param(1000.0, 1100.001, GRACE, True, id="just-past-grace-offline"),
        pytest.param(1000.0, 5000.0, GRACE, True, id="long-silent"),
        pytest.param(1000.0, 1040.0, 30.0, True, id="short-grace"),
        # A reset can put last_seen slightly ahead of a pass's now: that is live.
        pytest.param(1000.0, 999.0, GRACE, False, id="last-seen-after-now"),
    ],
)
def test_single_node_grace_boundary(
    last_seen: float, now: float, grace: float, offline: bool
) -> None:
    result = staleness.classify(records=records_of(a=last_seen), now=now, grace=grace)
    assert result == (outcome(offline=("a",)) if offline else outcome(live=("a",)))


def test_single_node_fleet_going_silent_is_marked_offline() -> None:
    # One node going silent is no evidence that the controller is cut off.
    result = staleness.classify(records=records_of(a=0.0), now=1000.0, grace=GRACE)
    assert result.newly_offline == ("a",)
    assert result.mass_outage is False


# --------------------------------------------------------------------------------------------
# Several nodes: who goes offline, and the mass-outage guard.

CLASSIFY_CASES = [
    pytest.param(
        records_of(a=950.0, b=950.0, c=850.0),
        1.0,
        outcome(offline=("c",), live=("a", "b"), mass=False),
        id="one-of-three-silent",
    ),
    pytest.param(
        records_of(a=850.0, b=800.0, c=950.0),
        1.0,
        outcome(offline=("a", "b"), live=("c",), mass=False),
        id="two-of-three-silent-below-fraction-1",
    ),
    pytest.param(
        records_of(a=850.0, b=800.0, c=700.0),
        1.0,
        outcome(offline=(), live=("a", "b", "c"), mass=True),
        id="all-silent-mass-outage-nobody-marked",
    ),
    pytest.param(
        records_of(a=850.0, b=800.0),
        1.0,
        outcome(offline=(), live=("a", "b"), mass=True),
        id="two-node-fleet-all-silent-mass-outage",
    ),
    pytest.param(
        records_of(a=850.0, b=800.0, c=950.0),
        0.5,
        outcome(offline=(), live=("a", "b", "c"), mass=True),
        id="two-of-three-silent-fraction-half-mass-outage",
    ),
    pytest.param(
        records_of(a=850.0, b=950.0, c=950.0),
        0.5,
        outcome(offline=("a",), live=("b", "c"), mass=False),
        id="one-of-three-silent-fraction-half",
    ),
    # Already-offline nodes are ignored and do not count as live before the pass: here only
    # one node was live, so its silence is not a mass outage.
    pytest.param(
        records_of(a=850.0, b=None, c=None),
        1.0,
        outcome(offline=("a",), live=(), mass=False),
        id="offline-nodes-do-not-count-as-live",
    ),
    pytest.param(
        records_of(a=850.0, b=800.0, c=None),
        1.0,
        outcome(offline=(), live=("a", "b"), mass=True),
        id="all-live-silent-beside-offline-mass-outage",
    ),
    pytest.param(
        records_of(a=None, b=None),
        1.0,
        outcome(offline=(), live=(), mass=False),
        id="everyone-already-offline",
    ),
    pytest.param(
        {},
        1.0,
        outcome(offline=(), live=(), mass=False),
        id="no-nodes",
    ),
]


@pytest.mark.parametrize(("records", "fraction", "expected"), CLASSIFY_CASES)
def test_classify(
    records: dict[NodeId, Liveness], fraction: float, expected: Classification
) -> None:
    result = staleness.classify(
        records=records, now=1000.0, grace=GRACE, mass_outage_fraction=fraction
    )
    assert result == expected


def test_classify_does_not_depend_on_mapping_order() -> None:
    records = records_of(c=850.0, a=950.0, b=800.0, d=990.0)
    reversed_records = dict(reversed(list(records.items())))
    one = staleness.classify(records=records, now=1000.0, grace=GRACE)
    two = staleness.classify(records=reversed_records, now=1000.0, grace=GRACE)
    assert one == two == outcome(offline=("b", "c"), live=("a", "d"))


@pytest.mark.parametrize(
    ("live_before", "going_offline", "fraction", "expected"),
    [
        pytest.param(0, 0, 1.0, False, id="empty-fleet"),
        pytest.param(1, 1, 1.0, False, id="single-node-never-mass"),
        pytest.param(1, 1, 0.1, False, id="single-node-never-mass-low-fraction"),
        pytest.param(2, 2, 1.0, True, id="two-of-two"),
        pytest.param(2, 1, 1.0, False, id="one-of-two"),
        pytest.param(2, 1, 0.5, True, id="one-of-two-fraction-half"),
        pytest.param(3, 0, 0.5, False, id="nobody-going"),
        pytest.param(10, 9, 1.0, False, id="nine-of-ten"),
        pytest.param(10, 10, 1.0, True, id="ten-of-ten"),
        # 0.28 * 25 is 7.000000000000001 in floating point; seven nodes must still suffice.
        pytest.param(25, 7, 0.28, True, id="float-fraction-exact"),
        pytest.param(25, 6, 0.28, False, id="below-float-fraction"),
    ],
)
def test_detect_mass_outage(
    live_before: int, going_offline: int, fraction: float, expected: bool
) -> None:
    assert (
        staleness.detect_mass_outage(
            live_before=live_before, going_offline=going_offline, fraction=fraction
        )
        is expected
    )


# --------------------------------------------------------------------------------------------
# Heartbeats, marking and resets.


@pytest.mark.parametrize(
    ("record", "now", "expected_last_seen"),
    [
        pytest.param(None, 500.0, 500.0, id="first-heartbeat"),
        pytest.param(Liveness(NodeId("a"), 400.0, True), 500.0, 500.0, id="live-node"),
        pytest.param(Liveness(NodeId("a"), 100.0, False), 500.0, 500.0, id="offline-node-back"),
        pytest.param(Liveness(NodeId("a"), 600.0, True), 500.0, 600.0, id="never-backwards"),
    ],
)
def test_observe_heartbeat(record: Liveness | None, now: float, expected_last_seen: float) -> None:
    assert staleness.observe_heartbeat(record=record, node_id=NodeId("a"), now=now) == Liveness(
        node_id=NodeId("a"), last_seen=expected_last_seen, live=True
    )


def test_reset_after_outage_gives_everyone_a_fresh_grace() -> None:
    records = records_of(a=100.0, b=200.0, c=None)
    reset = staleness.reset_after_outage(records=records, now=5000.0)
    assert reset == {
        NodeId("a"): Liveness(NodeId("a"), 5000.0, True),
        NodeId("b"): Liveness(NodeId("b"), 5000.0, True),
        # An offline node stays offline until it heartbeats.
        NodeId("c"): Liveness(NodeId("c"), 5000.0, False),
    }
    # Within the fresh grace nobody is due, although all were long silent before the reset.
    assert staleness.classify(records=reset, now=5000.0 + GRACE, grace=GRACE) == outcome(
        offline=(), live=("a", "b"), mass=False
    )


def test_mass_outage_then_recovery_scenario() -> None:
    # Three live nodes; the controller loses connectivity: every node silent past grace.
    records = records_of(a=0.0, b=0.0, c=0.0)
    outage = staleness.classify(records=records, now=150.0, grace=GRACE)
    assert outage.mass_outage and outage.newly_offline == ()
    # Connectivity returns: a and b heartbeat, c really is dead. Reset, then observe.
    records = staleness.reset_after_outage(records=records, now=160.0)
    for name in ("a", "b"):
        records[NodeId(name)] = staleness.observe_heartbeat(
            record=records[NodeId(name)], node_id=NodeId(name), now=170.0
        )
    # c gets a full grace from the reset, then is marked on its own.
    assert staleness.classify(records=records, now=260.0, grace=GRACE).newly_offline == ()
    late = staleness.classify(records=records, now=261.0, grace=GRACE)
    assert late == outcome(offline=("c",), live=("a", "b"), mass=False)


# --------------------------------------------------------------------------------------------
# The node phase transition table, every (phase, live) pair.

P = NodePhase
PHASE_TABLE: dict[tuple[NodePhase, bool], NodePhase] = {
    # Operator phases never change from heartbeats or silence.
    (P.MAINTENANCE, True): P.MAINTENANCE,
    (P.MAINTENANCE, False): P.MAINTENANCE,
    (P.DRAINING, True): P.DRAINING,
    (P.DRAINING, False): P.DRAINING,
    # Silence takes every non-operator phase to OFFLINE.
    (P.READY, False): P.OFFLINE,
    (P.PENDING, False): P.OFFLINE,
    (P.UNKNOWN, False): P.OFFLINE,
    (P.NOT_READY, False): P.OFFLINE,
    (P.OFFLINE, False): P.OFFLINE,
    # A heartbeat brings them back to READY.
    (P.OFFLINE, True): P.READY,
    (P.PENDING, True): P.READY,
    (P.UNKNOWN, True): P.READY,
    (P.NOT_READY, True): P.READY,
    (P.READY, True): P.READY,
}


def test_phase_table_covers_every_pair() -> None:
    assert set(PHASE_TABLE) == set(itertools.product(NodePhase, (True, False)))


@pytest.mark.parametrize(
    ("current", "live", "expected"),
    [
        pytest.param(current, live, expected, id=f"{current.name}-{'live' if live else 'silent'}")
        for (current, live), expected in PHASE_TABLE.items()
    ],
)
def test_next_node_phase(current: NodePhase, live: bool, expected: NodePhase) -> None:
    assert staleness.next_node_phase(current=current, live=live) == expected
