"""Aggregation in time: rows past their grace are stale, new hosts are pending, hosts named.

The rules (docs/failure-semantics.md, "Pool rows in time"): a host whose last known heartbeat
is more than its grace old is stale even while its liveness record still says live (the
freeze when every node goes silent); an assigned host with no report that has not had one
interval (and a little) since registration or the pool's last change is pending; messages
name a host by hostname and short id.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qvdc.domain import aggregation
from qvdc.domain.aggregation import HostTiming
from qvdc.domain.model import (
    BackendType,
    Capacity,
    Health,
    HostPoolStatus,
    NodeId,
    PoolAggregate,
    PoolId,
    PoolPhase,
    PoolRecord,
    PoolReport,
)

POOL = PoolId("pool-1")
H = Health
NOW = 1000.0
GRACE = 10.0


@dataclass(frozen=True)
class Host:
    """``health=None``: no status; ``heard``: seconds since the last heartbeat (None: not
    known here); ``due``: seconds from now until the first report is due (negative: past)."""

    health: Health | None
    assigned: bool = True
    live: bool = True
    heard: float | None = 1.0
    due: float = -100.0
    total: int = 100
    error: str = ""
    not_reported_row: bool = False  # the intake's "pool not reported by host" row


def timing(host: Host) -> HostTiming:
    return HostTiming(
        live=host.live,
        heard_at=None if host.heard is None else NOW - host.heard,
        grace=GRACE,
        report_due=NOW + host.due,
    )


def aggregate(
    hosts: Mapping[str, Host],
    *,
    backend: BackendType = BackendType.LOCAL_DIR,
    now: float = NOW,
    hostnames: Mapping[str, str] | None = None,
) -> PoolAggregate:
    pool = PoolRecord(
        id=POOL,
        name="pool",
        backend=backend,
        assigned_node_ids=tuple(NodeId(n) for n, h in hosts.items() if h.assigned),
    )
    statuses: dict[NodeId, HostPoolStatus] = {}
    for name, host in hosts.items():
        if host.not_reported_row:
            report = PoolReport(
                pool_id=POOL, health=H.UNMOUNTED, error_message=aggregation.NOT_REPORTED_MESSAGE
            )
        elif host.health is None:
            continue
        else:
            report = PoolReport(
                pool_id=POOL,
                health=host.health,
                total_bytes=host.total,
                available_bytes=host.total,
                error_message=host.error,
            )
        statuses[NodeId(name)] = HostPoolStatus(node_id=NodeId(name), report=report, changed_at=1.0)
    return aggregation.aggregate_pool(
        pool=pool,
        statuses=statuses,
        hosts={NodeId(n): timing(h) for n, h in hosts.items()},
        now=now,
        hostnames={NodeId(n): v for n, v in (hostnames or {}).items()},
    )


# --------------------------------------------------------------------------------------------
# The single-host rules.


@pytest.mark.parametrize(
    ("host_timing", "stale"),
    [
        pytest.param(None, True, id="no-liveness-record"),
        pytest.param(HostTiming(live=False, heard_at=NOW), True, id="not-live"),
        pytest.param(HostTiming(live=True, heard_at=None, grace=GRACE), False, id="unknown-heard"),
        pytest.param(HostTiming(heard_at=NOW - 9.9, grace=GRACE), False, id="within-grace"),
        pytest.param(HostTiming(heard_at=NOW - GRACE, grace=GRACE), False, id="exactly-grace"),
        pytest.param(HostTiming(heard_at=NOW - 10.01, grace=GRACE), True, id="past-grace"),
        pytest.param(HostTiming(heard_at=NOW - 10.01, grace=30.0), False, id="own-longer-grace"),
        pytest.param(HostTiming(heard_at=NOW - 1e6), False, id="default-grace-infinite"),
    ],
)
def test_is_stale(host_timing: HostTiming | None, stale: bool) -> None:
    assert aggregation.is_stale(timing=host_timing, now=NOW) is stale


@pytest.mark.parametrize(
    ("host_timing", "expected"),
    [
        pytest.param(None, None, id="none"),
        pytest.param(HostTiming(live=False, heard_at=5.0, grace=GRACE), None, id="not-live"),
        pytest.param(HostTiming(heard_at=None, grace=GRACE), None, id="unknown-heard"),
        pytest.param(HostTiming(heard_at=5.0, grace=GRACE), 15.0, id="heard-plus-grace"),
    ],
)
def test_stale_at(host_timing: HostTiming | None, expected: float | None) -> None:
    assert aggregation.stale_at(host_timing) == expected


@pytest.mark.parametrize(
    ("since", "interval", "due"),
    [
        pytest.param(100.0, 30.0, 137.5, id="quarter-interval"),
        pytest.param(100.0, 1.0, 102.0, id="at-least-one-second"),
        pytest.param(0.0, 0.0, 1.0, id="no-interval"),
    ],
)
def test_report_due(since: float, interval: float, due: float) -> None:
    assert aggregation.report_due(since=since, interval=interval) == due


@pytest.mark.parametrize(
    ("node_id", "hostname", "label"),
    [
        pytest.param("c7d512f2-6b1c-4c57-9b8e-0a3f", "host-a", "host-a (c7d512f2)", id="both"),
        pytest.param("c7d512f2-6b1c-4c57-9b8e-0a3f", "", "c7d512f2-6b1c-4c57-9b8e-0a3f", id="id"),
        pytest.param("n1", "n1", "n1", id="hostname-is-id"),
    ],
)
def test_host_label(node_id: str, hostname: str, label: str) -> None:
    assert aggregation.host_label(node_id=node_id, hostname=hostname) == label


# --------------------------------------------------------------------------------------------
# Pools: the phase, capacity and message tables.

TIME_CASES = [
    # Every host live by its record but silent past the grace (the freeze): nobody can tell.
    pytest.param(
        {f"n{i}": Host(H.HEALTHY, heard=11.0) for i in range(6)},
        PoolPhase.UNKNOWN,
        Capacity(),
        (),
        id="all-past-grace-unknown-no-capacity",
    ),
    # Two of six past the grace, in a second wave: DEGRADED, their capacity not counted.
    pytest.param(
        {f"n{i}": Host(H.HEALTHY, heard=11.0 if i < 2 else 1.0) for i in range(6)},
        PoolPhase.DEGRADED,
        Capacity(400, 0, 400),
        ("n2", "n3", "n4", "n5"),
        id="wave-past-grace-degraded",
    ),
    pytest.param(
        {"a": Host(H.HEALTHY, heard=GRACE), "b": Host(H.HEALTHY, heard=None)},
        PoolPhase.READY,
        Capacity(200, 0, 200),
        ("a", "b"),
        id="exactly-grace-and-owner-elsewhere-ready",
    ),
    # An assigned host that has not reported and still may: PENDING, never ERROR.
    pytest.param({"a": Host(None, due=0.5)}, PoolPhase.PENDING, Capacity(), (), id="pending"),
    pytest.param(
        {"a": Host(None, due=0.5, not_reported_row=True), "b": Host(None, due=0.0)},
        PoolPhase.PENDING,
        Capacity(),
        (),
        id="pending-not-reported-row-and-due-now",
    ),
    # Past its first interval it is what it was before: UNMOUNTED, not reported -> ERROR.
    pytest.param({"a": Host(None, due=-0.1)}, PoolPhase.ERROR, Capacity(), (), id="overdue"),
    # A pending host beside a healthy one does not hold the pool back.
    pytest.param(
        {"a": Host(H.HEALTHY), "b": Host(None, due=5.0)},
        PoolPhase.READY,
        Capacity(100, 0, 100),
        ("a",),
        id="healthy-plus-pending-ready",
    ),
    pytest.param(
        {"a": Host(H.ERROR), "b": Host(None, due=5.0)},
        PoolPhase.ERROR,
        Capacity(),
        (),
        id="error-plus-pending-error",
    ),
    # A silent host is stale, not pending, whatever its report window says.
    pytest.param(
        {"a": Host(None, due=5.0, heard=11.0)},
        PoolPhase.UNKNOWN,
        Capacity(),
        (),
        id="stale-beats-pending",
    ),
    # A host that did report in its window is judged on its report.
    pytest.param(
        {"a": Host(H.ERROR, due=5.0)}, PoolPhase.ERROR, Capacity(), (), id="reported-error"
    ),
]


@pytest.mark.parametrize(("hosts", "phase", "capacity", "healthy"), TIME_CASES)
def test_phase_and_capacity_in_time(
    hosts: Mapping[str, Host], phase: PoolPhase, capacity: Capacity, healthy: tuple[str, ...]
) -> None:
    result = aggregate(hosts)
    assert result.phase == phase
    assert result.capacity == capacity
    assert result.healthy_node_ids == healthy


def test_rows_past_grace_read_stale_and_keep_their_report() -> None:
    result = aggregate({"a": Host(H.HEALTHY, heard=11.0, total=7)})
    [row] = result.rows
    assert (row.stale, row.pending, row.report.health, row.report.total_bytes) == (
        True,
        False,
        H.HEALTHY,
        7,
    )
    assert result.unhealthy_node_ids == ("a",)


def test_pending_row_is_unknown_with_a_reason_and_in_neither_list() -> None:
    result = aggregate({"a": Host(None, due=1.0), "b": Host(H.HEALTHY)})
    a, b = result.rows
    assert (a.pending, a.stale, a.report.health, a.report.error_message) == (
        True,
        False,
        H.UNKNOWN,
        aggregation.PENDING_MESSAGE,
    )
    assert not b.pending
    assert result.healthy_node_ids == ("b",)
    assert result.unhealthy_node_ids == ()


MESSAGE_CASES = [
    pytest.param(
        {"c7d512f2-aaaa": Host(H.ERROR, error="disk"), "0b1e-bbbb": Host(H.HEALTHY)},
        {"c7d512f2-aaaa": "host-a", "0b1e-bbbb": "host-b"},
        "1 of 2 hosts unhealthy: host-a (c7d512f2) ERROR: disk",
        id="hostname-and-short-id",
    ),
    pytest.param(
        {"c7d512f2-aaaa": Host(H.HEALTHY, heard=11.0), "d0": Host(H.HEALTHY)},
        {"c7d512f2-aaaa": "host-a"},
        "1 of 2 hosts unhealthy: host-a (c7d512f2) stale (no heartbeat)",
        id="stale-named",
    ),
    pytest.param(
        {"gone-node-id": Host(H.ERROR)},
        {},
        "1 of 1 host unhealthy: gone-node-id ERROR",
        id="no-hostname-full-id",
    ),
    pytest.param(
        {"c7d512f2-aaaa": Host(None, due=1.0), "e9a0c3d4-bbbb": Host(None, due=1.0)},
        {"c7d512f2-aaaa": "host-a", "e9a0c3d4-bbbb": "host-b"},
        "waiting for the first report of 2 hosts: host-a (c7d512f2); host-b (e9a0c3d4)",
        id="all-pending",
    ),
    pytest.param(
        {"a1": Host(H.ERROR), "b1": Host(None, due=1.0), "c1": Host(H.HEALTHY)},
        {},
        "1 of 3 hosts unhealthy: a1 ERROR; 1 waiting for a first report",
        id="unhealthy-and-pending",
    ),
]


@pytest.mark.parametrize(("hosts", "hostnames", "message"), MESSAGE_CASES)
def test_message_names_hosts(
    hosts: Mapping[str, Host], hostnames: Mapping[str, str], message: str
) -> None:
    assert aggregate(hosts, hostnames=hostnames).error_message == message


# --------------------------------------------------------------------------------------------
# Properties.

NAMES = [f"n{i}" for i in range(6)]
host_strategy = st.builds(
    Host,
    health=st.none() | st.sampled_from(Health),
    assigned=st.booleans(),
    live=st.booleans(),
    heard=st.none() | st.sampled_from([0.0, 5.0, GRACE, GRACE + 0.5, 50.0]),
    due=st.sampled_from([-10.0, -0.5, 0.0, 0.5, 10.0]),
    total=st.integers(0, 10**6),
    error=st.sampled_from(["", "boom"]),
    not_reported_row=st.booleans(),
)


def normalise(hosts: Mapping[str, Host]) -> dict[str, Host]:
    """An unassigned host without a status has no row at all: drop it."""
    return {
        n: h for n, h in hosts.items() if h.assigned or h.health is not None or h.not_reported_row
    }


hosts_strategy = st.dictionaries(st.sampled_from(NAMES), host_strategy, max_size=6).map(normalise)
backend_strategy = st.sampled_from(BackendType)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


def past_grace(host: Host) -> bool:
    return not host.live or (host.heard is not None and host.heard > GRACE)


@PROPERTY_SETTINGS
@given(hosts=hosts_strategy, backend=backend_strategy)
def test_property_a_pool_with_an_assigned_row_past_grace_is_never_ready(
    hosts: dict[str, Host], backend: BackendType
) -> None:
    result = aggregate(hosts, backend=backend)
    stale = {n for n, h in hosts.items() if h.assigned and past_grace(h)}
    if stale:
        assert result.phase != PoolPhase.READY
    assert not stale & set(result.healthy_node_ids)
    assert {row.node_id for row in result.rows if row.stale} == {
        n for n, h in hosts.items() if past_grace(h)
    }


@PROPERTY_SETTINGS
@given(
    hosts=hosts_strategy, backend=st.sampled_from([BackendType.LOCAL_DIR, BackendType.LOCAL_LVM])
)
def test_property_capacity_sums_only_fresh_healthy_assigned_rows(
    hosts: dict[str, Host], backend: BackendType
) -> None:
    result = aggregate(hosts, backend=backend)
    counted = [
        h
        for h in hosts.values()
        if h.assigned and not past_grace(h) and h.health == H.HEALTHY and not h.not_reported_row
    ]
    total = sum(h.total for h in counted)
    assert result.capacity == Capacity(total, 0, total)


@PROPERTY_SETTINGS
@given(hosts=hosts_strategy, backend=backend_strategy, noise=st.integers(0, 10**9))
def test_property_stale_rows_never_move_capacity(
    hosts: dict[str, Host], backend: BackendType, noise: int
) -> None:
    changed = {n: replace(h, total=noise) if past_grace(h) else h for n, h in hosts.items()}
    assert (
        aggregate(changed, backend=backend).capacity == aggregate(hosts, backend=backend).capacity
    )


@PROPERTY_SETTINGS
@given(hosts=hosts_strategy, backend=backend_strategy)
def test_property_hosts_yet_to_report_make_a_pool_pending_never_error(
    hosts: dict[str, Host], backend: BackendType
) -> None:
    waiting = {
        n: replace(h, assigned=True, live=True, heard=1.0, due=max(h.due, 0.0), health=None)
        for n, h in hosts.items()
    }
    result = aggregate(waiting, backend=backend)
    if waiting:
        assert result.phase == PoolPhase.PENDING
        assert all(row.pending for row in result.rows)
        assert result.unhealthy_node_ids == ()


@PROPERTY_SETTINGS
@given(hosts=hosts_strategy, backend=backend_strategy)
def test_property_assigned_hosts_are_healthy_unhealthy_or_pending(
    hosts: dict[str, Host], backend: BackendType
) -> None:
    result = aggregate(hosts, backend=backend)
    pending = sorted(row.node_id for row in result.rows if row.pending)
    assigned = sorted(n for n, h in hosts.items() if h.assigned)
    parts = list(result.healthy_node_ids) + list(result.unhealthy_node_ids) + pending
    assert sorted(parts) == assigned
    assert len(parts) == len(set(parts))
    assert (result.error_message == "") == (result.phase == PoolPhase.READY)


@PROPERTY_SETTINGS
@given(
    hosts=hosts_strategy,
    backend=backend_strategy,
    later=st.floats(0.0, 100.0, allow_nan=False),
)
def test_property_time_alone_never_adds_a_healthy_host(
    hosts: dict[str, Host], backend: BackendType, later: float
) -> None:
    before = aggregate(hosts, backend=backend)
    after = aggregate(hosts, backend=backend, now=NOW + later)
    assert set(after.healthy_node_ids) <= set(before.healthy_node_ids)
    if before.phase != PoolPhase.READY:
        assert after.phase != PoolPhase.READY


def test_infinite_defaults_are_never_stale_nor_pending() -> None:
    default = HostTiming()
    assert default.grace == math.inf and default.report_due == -math.inf
    assert not aggregation.is_stale(timing=default, now=NOW)
    assert not aggregation.is_pending(timing=default, status=None, now=NOW)
