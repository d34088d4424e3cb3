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
