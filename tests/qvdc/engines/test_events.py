"""PoolEvents: pool.phase and host.health logged once per transition from written aggregates."""

from __future__ import annotations

import logging

import pytest

from qvdc.domain.model import (
    Capacity,
    Health,
    HostRow,
    NodeId,
    PoolAggregate,
    PoolId,
    PoolPhase,
    PoolReport,
)
from qvdc.engines import events
from qvdc.kits import eventlog


def aggregate(phase: PoolPhase, *rows: tuple[str, Health, str], total: int = 100) -> PoolAggregate:
    return PoolAggregate(
        pool_id=PoolId("p1"),
        phase=phase,
        capacity=Capacity(total_bytes=total),
        volume_count=0,
        error_message="",
        rows=tuple(
            HostRow(
                node_id=NodeId(node),
                report=PoolReport(pool_id=PoolId("p1"), health=health, error_message=error),
                changed_at=0.0,
                assigned=True,
                stale=False,
            )
            for node, health, error in rows
        ),
        healthy_node_ids=(),
        unhealthy_node_ids=(),
    )


def logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, object], str]]:
    return [
        (
            getattr(r, eventlog.EVENT_ATTR),
            dict(getattr(r, eventlog.FIELDS_ATTR)),
            r.levelname,
        )
        for r in caplog.records
        if getattr(r, eventlog.EVENT_ATTR, None)
    ]


def test_each_transition_is_logged_once_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    on_written = events.PoolEvents()
    ok = ("n1", Health.HEALTHY, "")
    with caplog.at_level(logging.INFO, logger="qvdc.engines.events"):
        on_written("p1", aggregate(PoolPhase.READY, ok))  # the baseline: no event
        on_written("p1", aggregate(PoolPhase.READY, ok, total=200))  # capacity only
        assert logged(caplog) == []
        bad = ("n1", Health.ERROR, "mount failed")
        on_written("p1", aggregate(PoolPhase.ERROR, bad))
        on_written("p1", aggregate(PoolPhase.ERROR, bad, total=50))  # same states again
        on_written("p1", aggregate(PoolPhase.READY, ok))
    assert logged(caplog) == [
        ("pool.phase", {"pool_id": "p1", "from": "READY", "to": "ERROR"}, "WARNING"),
        (
            "host.health",
            {"pool_id": "p1", "node_id": "n1", "error": "mount failed", "from": "HEALTHY",
             "to": "ERROR"},
            "WARNING",
        ),
        ("pool.phase", {"pool_id": "p1", "from": "ERROR", "to": "READY"}, "INFO"),
        (
            "host.health",
            {"pool_id": "p1", "node_id": "n1", "error": "", "from": "ERROR", "to": "HEALTHY"},
            "INFO",
        ),
    ]  # fmt: skip
    ids = [getattr(r, eventlog.EVENT_ID_ATTR) for r in caplog.records]
    assert len(set(ids)) == 4


def test_a_row_that_leaves_and_comes_back_is_a_new_baseline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    on_written = events.PoolEvents()
    with caplog.at_level(logging.INFO, logger="qvdc.engines.events"):
        on_written("p1", aggregate(PoolPhase.READY, ("n1", Health.HEALTHY, "")))
        on_written("p1", aggregate(PoolPhase.PENDING))  # n1 unassigned: its row is gone
        on_written("p1", aggregate(PoolPhase.DEGRADED, ("n1", Health.DEGRADED, "slow")))
    assert [(name, f.get("to")) for name, f, _ in logged(caplog)] == [
        ("pool.phase", "PENDING"),
        ("pool.phase", "DEGRADED"),  # no host.health: n1's row is new again
    ]


def test_a_new_leadership_term_starts_from_new_baselines(caplog: pytest.LogCaptureFixture) -> None:
    """Leading again after a pause: what the pool was last term is no baseline (another
    leader logged what happened in between)."""
    on_written = events.PoolEvents()
    with caplog.at_level(logging.INFO, logger="qvdc.engines.events"):
        on_written("p1", aggregate(PoolPhase.READY, ("n1", Health.HEALTHY, "")))
        on_written.reset()
        on_written("p1", aggregate(PoolPhase.ERROR, ("n1", Health.ERROR, "gone")))
        on_written("p1", aggregate(PoolPhase.READY, ("n1", Health.HEALTHY, "")))
    assert [(name, f["to"]) for name, f, _ in logged(caplog)] == [
        ("pool.phase", "READY"),
        ("host.health", "HEALTHY"),
    ]
