"""Pool aggregation: phase, capacity, volume count, error message and rows.

The phase table contains every worked case of upstream's phase rules (docs/upstream.md)
with *our* expectation; where it differs from upstream's, the case's comment says what
upstream returned and why.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qvdc.domain import aggregation
from qvdc.domain.model import (
    SHARED_BACKENDS,
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


@dataclass(frozen=True)
class Host:
    """One host in a test scenario. ``health=None``: the host has no status for the pool."""

    health: Health | None
    assigned: bool = True
    live: bool = True
    total: int = 0
    used: int = 0
    available: int = 0
    volumes: int = 0
    changed_at: float = 1.0
    error: str = ""


def build_inputs(
    *, hosts: Mapping[str, Host], backend: BackendType = BackendType.LOCAL_DIR
) -> tuple[PoolRecord, dict[NodeId, HostPoolStatus], dict[NodeId, aggregation.HostTiming]]:
    pool = PoolRecord(
        id=POOL,
        name="pool",
        backend=backend,
        assigned_node_ids=tuple(NodeId(n) for n, h in hosts.items() if h.assigned),
    )
    statuses = {
        NodeId(n): HostPoolStatus(
            node_id=NodeId(n),
            report=PoolReport(
                pool_id=POOL,
                health=h.health,
                total_bytes=h.total,
                used_bytes=h.used,
                available_bytes=h.available,
                volume_count=h.volumes,
                error_message=h.error,
            ),
            changed_at=h.changed_at,
        )
        for n, h in hosts.items()
        if h.health is not None
    }
    timings = {NodeId(n): aggregation.HostTiming(live=h.live) for n, h in hosts.items()}
    return pool, statuses, timings


def aggregate(
    hosts: Mapping[str, Host],
    *,
    backend: BackendType = BackendType.LOCAL_DIR,
    deleting: bool = False,
) -> PoolAggregate:
    pool, statuses, live = build_inputs(hosts=hosts, backend=backend)
    if deleting:
        pool = replace(pool, deleting=True)
    return aggregation.aggregate_pool(pool=pool, statuses=statuses, hosts=live, now=0.0)


# --------------------------------------------------------------------------------------------
# Phase: every worked case of upstream's phase rules (docs/upstream.md), plus the cases our
# fixes introduce.

PHASE_CASES = [
    # Upstream: PENDING. Same.
    pytest.param({}, PoolPhase.PENDING, (), (), id="upstream-none-A0-pending"),
    # Upstream: PENDING (it looked only at host statuses, and there were none). Ours: two
    # assigned, live hosts that do not report the pool are UNMOUNTED there -> no host healthy.
    pytest.param(
        {"a": Host(None), "b": Host(None)},
        PoolPhase.ERROR,
        (),
        ("a", "b"),
        id="upstream-none-A2-assigned-unreported-error",
    ),
    # Upstream: READY. Same.
    pytest.param({"a": Host(H.HEALTHY)}, PoolPhase.READY, ("a",), (), id="upstream-healthy-A1"),
    # Upstream: DEGRADED. Same.
    pytest.param(
        {"a": Host(H.HEALTHY), "b": Host(H.ERROR)},
        PoolPhase.DEGRADED,
        ("a",),
        ("b",),
        id="upstream-healthy-error-A2",
    ),
    # Upstream: DEGRADED. Same.
    pytest.param(
        {"a": Host(H.HEALTHY), "b": Host(H.UNMOUNTED)},
        PoolPhase.DEGRADED,
        ("a",),
        ("b",),
        id="upstream-healthy-unmounted-A2",
    ),
    # Upstream: READY, because DEGRADED counted neither as healthy nor as an error (defect
    # 11). Ours: a degraded host is not healthy, so the pool is DEGRADED.
    pytest.param(
        {"a": Host(H.HEALTHY), "b": Host(H.DEGRADED)},
        PoolPhase.DEGRADED,
        ("a",),
        ("b",),
        id="upstream-healthy-degraded-A2-is-degraded-not-ready",
    ),
    # Upstream: ERROR (no healthy host). Same result, now for the stated reason.
    pytest.param({"a": Host(H.DEGRADED)}, PoolPhase.ERROR, (), ("a",), id="upstream-degraded"),
    pytest.param(
        {"a": Host(H.DEGRADED), "b": Host(H.DEGRADED)},
        PoolPhase.ERROR,
        (),
        ("a", "b"),
        id="upstream-degraded-degraded",
    ),
    # Upstream: ERROR. Same: a live host that reports UNKNOWN is not healthy.
    pytest.param({"a": Host(H.UNKNOWN)}, PoolPhase.ERROR, (), ("a",), id="upstream-unknown"),
    # Upstream: ERROR. Same.
    pytest.param({"a": Host(H.ERROR)}, PoolPhase.ERROR, (), ("a",), id="upstream-error"),
    pytest.param({"a": Host(H.UNMOUNTED)}, PoolPhase.ERROR, (), ("a",), id="upstream-unmounted"),
    # Upstream: READY (healthy 1 is not < assigned 0): hosts reported a pool nobody assigned
    # them and they counted (defect 20). Ours: unassigned hosts never count -> PENDING.
    pytest.param(
        {"a": Host(H.HEALTHY, assigned=False), "b": Host(H.ERROR, assigned=False)},
        PoolPhase.PENDING,
        (),
        (),
        id="upstream-healthy-error-A0-is-pending",
    ),
    # Upstream: READY (healthy 2 is not < assigned 2): the unassigned host's HEALTHY counted.
    # Ours: only a and c count; c is in ERROR -> DEGRADED.
    pytest.param(
        {
            "a": Host(H.HEALTHY),
            "b": Host(H.HEALTHY, assigned=False),
            "c": Host(H.ERROR),
        },
        PoolPhase.DEGRADED,
        ("a",),
        ("c",),
        id="upstream-healthy-unassigned-healthy-error-A2-is-degraded",
    ),
    # Upstream: READY. Host b was assigned, then unassigned; its HEALTHY entry stayed and kept
    # counting (defect 10), so healthy 1 was not < assigned 1. Ours: b does not count; the
    # only assigned host is in ERROR -> ERROR.
    pytest.param(
        {"a": Host(H.ERROR), "b": Host(H.HEALTHY, assigned=False)},
        PoolPhase.ERROR,
        (),
        ("a",),
        id="upstream-unassigned-leftover-entry-does-not-count",
    ),
    # Upstream: READY (nothing ever aged out). Ours: b was unassigned and then went silent;
    # its stale leftover entry counts neither as assigned nor as healthy.
    pytest.param(
        {"a": Host(H.ERROR), "b": Host(H.HEALTHY, assigned=False, live=False)},
        PoolPhase.ERROR,
        (),
        ("a",),
        id="upstream-unassigned-then-stale-entry-does-not-count",
    ),
    # Upstream: READY (a silent host kept its last HEALTHY forever, defect 2). Ours: a
    # stale host is never healthy.
    pytest.param(
        {"a": Host(H.HEALTHY), "b": Host(H.HEALTHY, live=False)},
        PoolPhase.DEGRADED,
        ("a",),
        ("b",),
        id="stale-healthy-host-is-not-healthy",
    ),
    # Upstream: READY. Ours: the only assigned host is stale -> nobody can tell -> UNKNOWN.
    pytest.param(
        {"a": Host(H.HEALTHY, live=False)},
        PoolPhase.UNKNOWN,
        (),
        ("a",),
        id="only-assigned-host-stale-unknown",
    ),
    # Upstream: DEGRADED (it trusted both silent hosts' last reports: healthy 1, errors 1,
    # 1 < 2). Ours: every assigned host is stale -> UNKNOWN, not ERROR or DEGRADED: the
    # controller cannot see the hosts, which says nothing about the storage.
    pytest.param(
        {"a": Host(H.HEALTHY, live=False), "b": Host(H.ERROR, live=False)},
        PoolPhase.UNKNOWN,
        (),
        ("a", "b"),
        id="all-assigned-stale-unknown",
    ),
    # An assigned host with no status that is also stale counts as stale.
    pytest.param(
        {"a": Host(None, live=False)},
        PoolPhase.UNKNOWN,
        (),
        ("a",),
        id="assigned-unreported-and-stale-unknown",
    ),
    # One stale, one live host that does not report the pool: not every host is stale, none
    # healthy -> ERROR.
    pytest.param(
        {"a": Host(H.HEALTHY, live=False), "b": Host(None)},
        PoolPhase.ERROR,
        (),
        ("a", "b"),
        id="stale-plus-unreported-error",
    ),
    # Healthy plus an assigned host that does not report the pool -> DEGRADED.
    pytest.param(
        {"a": Host(H.HEALTHY), "b": Host(None)},
        PoolPhase.DEGRADED,
        ("a",),
        ("b",),
        id="healthy-plus-unreported-degraded",
    ),
    # A stale unassigned host next to a healthy assigned one changes nothing.
    pytest.param(
        {"a": Host(H.HEALTHY), "z": Host(H.ERROR, assigned=False, live=False)},
        PoolPhase.READY,
        ("a",),
        (),
        id="unassigned-stale-error-ignored-ready",
    ),
    pytest.param(
        {"a": Host(H.HEALTHY), "b": Host(H.HEALTHY), "c": Host(H.HEALTHY)},
        PoolPhase.READY,
        ("a", "b", "c"),
        (),
        id="all-healthy-A3-ready",
    ),
]


@pytest.mark.parametrize(("hosts", "phase", "healthy", "unhealthy"), PHASE_CASES)
def test_phase(
    hosts: Mapping[str, Host],
    phase: PoolPhase,
    healthy: tuple[str, ...],
    unhealthy: tuple[str, ...],
) -> None:
    result = aggregate(hosts)
    assert result.phase == phase
    assert result.healthy_node_ids == healthy
    assert result.unhealthy_node_ids == unhealthy


@pytest.mark.parametrize(
    "hosts",
    [
        pytest.param({}, id="no-hosts"),
        pytest.param({"a": Host(H.HEALTHY)}, id="healthy"),
        pytest.param({"a": Host(H.ERROR, live=False)}, id="stale-error"),
    ],
)
def test_deleting_pool_is_deleting_whatever_the_hosts(hosts: Mapping[str, Host]) -> None:
    assert aggregate(hosts, deleting=True).phase == PoolPhase.DELETING


# --------------------------------------------------------------------------------------------
# Capacity.

GIB = 1024**3
CAPACITY_CASES = [
    # Shared: the freshest healthy host's numbers, not the first one map iteration met.
    pytest.param(
        BackendType.NFS,
        {
            "a": Host(H.HEALTHY, total=100, used=10, available=90, changed_at=10.0),
            "b": Host(H.HEALTHY, total=200, used=20, available=180, changed_at=20.0),
            "c": Host(H.HEALTHY, total=150, used=15, available=135, changed_at=15.0),
        },
        Capacity(200, 20, 180),
        id="shared-freshest-healthy",
    ),
    # Shared, equal changed_at: the smallest node id wins (deterministic).
    pytest.param(
        BackendType.CEPH_RBD,
        {
            "b": Host(H.HEALTHY, total=200, used=20, available=180, changed_at=5.0),
            "a": Host(H.HEALTHY, total=100, used=10, available=90, changed_at=5.0),
        },
        Capacity(100, 10, 90),
        id="shared-tie-smallest-node-id",
    ),
    # Shared: a fresher but DEGRADED host is not the source.
    pytest.param(
        BackendType.CEPH_CEPHFS,
        {
            "a": Host(H.HEALTHY, total=100, used=10, available=90, changed_at=1.0),
            "b": Host(H.DEGRADED, total=999, used=999, available=0, changed_at=9.0),
        },
        Capacity(100, 10, 90),
        id="shared-fresher-degraded-ignored",
    ),
    # iSCSI is shared (upstream summed it, defect 18): one LUN however many hosts log in.
    pytest.param(
        BackendType.ISCSI,
        {
            "a": Host(H.HEALTHY, total=100, used=10, available=90, changed_at=1.0),
            "b": Host(H.HEALTHY, total=100, used=11, available=89, changed_at=2.0),
        },
        Capacity(100, 11, 89),
        id="iscsi-is-shared-not-summed",
    ),
    # Local: sum over healthy hosts.
    pytest.param(
        BackendType.LOCAL_DIR,
        {
            "a": Host(H.HEALTHY, total=100, used=10, available=90),
            "b": Host(H.HEALTHY, total=50, used=5, available=45),
        },
        Capacity(150, 15, 135),
        id="local-sum",
    ),
    pytest.param(
        BackendType.LOCAL_LVM,
        {
            "a": Host(H.HEALTHY, total=100, used=10, available=90),
            "b": Host(H.HEALTHY, total=50, used=5, available=45),
        },
        Capacity(150, 15, 135),
        id="local-lvm-sum",
    ),
    # Local: degraded, error, unmounted and unknown hosts add nothing.
    pytest.param(
        BackendType.LOCAL_DIR,
        {
            "a": Host(H.HEALTHY, total=100, used=10, available=90),
            "b": Host(H.DEGRADED, total=50, used=50, available=0),
            "c": Host(H.ERROR, total=70, used=7, available=63),
            "d": Host(H.UNMOUNTED, total=80, used=8, available=72),
            "e": Host(H.UNKNOWN, total=90, used=9, available=81),
        },
        Capacity(100, 10, 90),
        id="local-unhealthy-add-nothing",
    ),
    # Stale and unassigned HEALTHY hosts add nothing (upstream counted both).
    pytest.param(
        BackendType.LOCAL_DIR,
        {
            "a": Host(H.HEALTHY, total=100, used=10, available=90),
            "b": Host(H.HEALTHY, live=False, total=50, used=5, available=45),
            "c": Host(H.HEALTHY, assigned=False, total=70, used=7, available=63),
        },
        Capacity(100, 10, 90),
        id="local-stale-and-unassigned-add-nothing",
    ),
    pytest.param(
        BackendType.NFS,
        {
            "a": Host(H.HEALTHY, total=100, used=10, available=90, changed_at=1.0),
            "b": Host(H.HEALTHY, live=False, total=7, used=7, available=0, changed_at=9.0),
            "c": Host(H.HEALTHY, assigned=False, total=8, used=8, available=0, changed_at=9.0),
        },
        Capacity(100, 10, 90),
        id="shared-stale-and-unassigned-never-source",
    ),
    # No healthy host: zeros (upstream kept the previous, possibly stale, capacity).
    pytest.param(
        BackendType.LOCAL_DIR,
        {"a": Host(H.ERROR, total=100, used=10, available=90)},
        Capacity(),
        id="local-no-healthy-zeros",
    ),
    pytest.param(
        BackendType.NFS,
        {"a": Host(H.HEALTHY, live=False, total=100, used=10, available=90)},
        Capacity(),
        id="shared-only-stale-zeros",
    ),
    pytest.param(BackendType.NFS, {}, Capacity(), id="no-hosts-zeros"),
    # Sums saturate at the wire's uint64: two hosts of 2^64-1 bytes each stay encodable.
    pytest.param(
        BackendType.LOCAL_DIR,
        {
            "a": Host(H.HEALTHY, total=2**64 - 1, used=2**64 - 1, available=0),
            "b": Host(H.HEALTHY, total=2**64 - 1, used=0, available=2**64 - 1),
        },
        Capacity(2**64 - 1, 2**64 - 1, 2**64 - 1),
        id="local-sums-saturate-at-uint64",
    ),
]


@pytest.mark.parametrize(("backend", "hosts", "capacity"), CAPACITY_CASES)
def test_capacity(backend: BackendType, hosts: Mapping[str, Host], capacity: Capacity) -> None:
    assert aggregate(hosts, backend=backend).capacity == capacity


@pytest.mark.parametrize("order", [["a", "b"], ["b", "a"]])
def test_shared_capacity_tie_does_not_follow_mapping_order(order: list[str]) -> None:
    hosts = {
        "a": Host(H.HEALTHY, total=100, used=1, available=99, changed_at=5.0),
        "b": Host(H.HEALTHY, total=200, used=2, available=198, changed_at=5.0),
    }
    ordered = {name: hosts[name] for name in order}
    assert aggregate(ordered, backend=BackendType.NFS).capacity == Capacity(100, 1, 99)


# --------------------------------------------------------------------------------------------
# Volume count.

VOLUME_CASES = [
    # Shared: from the same host the capacity came from (the freshest healthy one).
    pytest.param(
        BackendType.NFS,
        {
            "a": Host(H.HEALTHY, volumes=3, changed_at=1.0),
            "b": Host(H.HEALTHY, volumes=5, changed_at=2.0),
            "c": Host(H.DEGRADED, volumes=9, changed_at=3.0),
        },
        5,
        id="shared-from-freshest-healthy",
    ),
    # Shared, no healthy host: the largest among assigned live hosts.
    pytest.param(
        BackendType.NFS,
        {
            "a": Host(H.DEGRADED, volumes=3),
            "b": Host(H.ERROR, volumes=4),
            "c": Host(H.DEGRADED, volumes=9, live=False),
            "d": Host(H.DEGRADED, volumes=8, assigned=False),
        },
        4,
        id="shared-no-healthy-max-live-assigned",
    ),
    # Local: the sum over assigned live hosts, degraded ones included (their volumes exist).
    pytest.param(
        BackendType.LOCAL_DIR,
        {
            "a": Host(H.HEALTHY, volumes=3),
            "b": Host(H.DEGRADED, volumes=4),
            "c": Host(H.HEALTHY, volumes=100, live=False),
            "d": Host(H.HEALTHY, volumes=200, assigned=False),
            "e": Host(None),
        },
        7,
        id="local-sum-live-assigned",
    ),
    pytest.param(BackendType.LOCAL_DIR, {}, 0, id="no-hosts-zero"),
]


@pytest.mark.parametrize(("backend", "hosts", "volumes"), VOLUME_CASES)
def test_volume_count(backend: BackendType, hosts: Mapping[str, Host], volumes: int) -> None:
    assert aggregate(hosts, backend=backend).volume_count == volumes


# --------------------------------------------------------------------------------------------
# Error message.

MESSAGE_CASES = [
    pytest.param({"a": Host(H.HEALTHY)}, "", id="ready-empty"),
    pytest.param(
        {
            "node-a": Host(H.HEALTHY),
            "node-c": Host(H.HEALTHY, live=False),
            "node-b": Host(H.ERROR, error="disk on fire"),
        },
        "2 of 3 hosts unhealthy: node-b ERROR: disk on fire; node-c stale (no heartbeat)",
        id="degraded-sorted-with-stale",
    ),
    pytest.param(
        {"node-a": Host(None)},
        "1 of 1 host unhealthy: node-a UNMOUNTED: pool not reported by host",
        id="unreported-host",
    ),
    pytest.param(
        {"node-a": Host(H.HEALTHY), "node-b": Host(H.DEGRADED)},
        "1 of 2 hosts unhealthy: node-b DEGRADED",
        id="no-host-error-text",
    ),
    pytest.param(
        {"node-a": Host(H.HEALTHY), "node-z": Host(H.ERROR, assigned=False, error="x")},
        "",
        id="unassigned-not-mentioned",
    ),
    pytest.param({}, aggregation.NO_HOST_ASSIGNED_MESSAGE, id="pending"),
]


@pytest.mark.parametrize(("hosts", "message"), MESSAGE_CASES)
def test_error_message(hosts: Mapping[str, Host], message: str) -> None:
    assert aggregate(hosts).error_message == message


def test_error_message_lists_at_most_ten_hosts_and_counts_the_rest() -> None:
    hosts = {f"n{i:02d}": Host(H.ERROR) for i in range(12)}
    message = aggregate(hosts).error_message
    assert message.startswith("12 of 12 hosts unhealthy: n00 ERROR; n01 ERROR;")
    assert "n09 ERROR; and 2 more" in message
    assert "n10" not in message


def test_error_message_cuts_long_host_errors() -> None:
    message = aggregate({"a": Host(H.ERROR, error="x" * 1000)}).error_message
    assert message == "1 of 1 host unhealthy: a ERROR: " + "x" * 197 + "..."


def test_deleting_pool_with_unhealthy_host_explains_it() -> None:
    result = aggregate({"a": Host(H.ERROR, error="gone")}, deleting=True)
    assert result.error_message == "1 of 1 host unhealthy: a ERROR: gone"


# --------------------------------------------------------------------------------------------
# Rows.


def test_rows_cover_assigned_and_reporting_hosts_sorted_and_flagged() -> None:
    result = aggregate(
        {
            "c": Host(H.HEALTHY, assigned=False, total=5),
            "a": Host(H.HEALTHY, live=False, total=7, changed_at=3.0),
            "b": Host(None),
        }
    )
    assert [row.node_id for row in result.rows] == ["a", "b", "c"]
    a, b, c = result.rows
    # The stale row keeps its last report for the operator.
    assert (a.assigned, a.stale, a.report.health, a.report.total_bytes, a.changed_at) == (
        True,
        True,
        H.HEALTHY,
        7,
        3.0,
    )
    # The unreported assigned host gets a synthesised UNMOUNTED row.
    assert (b.assigned, b.stale, b.changed_at) == (True, False, 0.0)
    assert b.report == PoolReport(
        pool_id=POOL, health=H.UNMOUNTED, error_message="pool not reported by host"
    )
    # The unassigned host is kept and flagged.
    assert (c.assigned, c.stale, c.report.health) == (False, False, H.HEALTHY)


def test_rows_are_keyed_by_the_statuses_key() -> None:
    pool, statuses, live = build_inputs(hosts={"a": Host(H.HEALTHY)})
    statuses = {NodeId("a"): replace(statuses[NodeId("a")], node_id=NodeId("other"))}
    result = aggregation.aggregate_pool(pool=pool, statuses=statuses, hosts=live, now=0.0)
    assert [row.node_id for row in result.rows] == ["a"]
    assert result.phase == PoolPhase.READY


@pytest.mark.parametrize(
    ("backend", "shared"),
    [
        pytest.param(BackendType.NFS, True, id="nfs"),
        pytest.param(BackendType.CEPH_RBD, True, id="ceph-rbd"),
        pytest.param(BackendType.CEPH_CEPHFS, True, id="cephfs"),
        pytest.param(BackendType.ISCSI, True, id="iscsi"),
        pytest.param(BackendType.LOCAL_DIR, False, id="local-dir"),
        pytest.param(BackendType.LOCAL_LVM, False, id="local-lvm"),
    ],
)
def test_is_shared(backend: BackendType, shared: bool) -> None:
    assert aggregation.is_shared(backend) is shared


# --------------------------------------------------------------------------------------------
# Properties.

NAMES = [f"n{i}" for i in range(6)]
host_strategy = st.builds(
    Host,
    health=st.none() | st.sampled_from(Health),
    assigned=st.booleans(),
    live=st.booleans(),
    total=st.integers(0, 10**6),
    used=st.integers(0, 10**6),
    available=st.integers(0, 10**6),
    volumes=st.integers(0, 50),
    # Few distinct times so ties (and so the tie-break) are common.
    changed_at=st.sampled_from([1.0, 2.0, 3.0]),
    error=st.sampled_from(["", "boom"]),
)


def normalise(hosts: Mapping[str, Host]) -> dict[str, Host]:
    """An unassigned host without a status has no row at all: drop it."""
    return {n: h for n, h in hosts.items() if h.assigned or h.health is not None}


hosts_strategy = st.dictionaries(st.sampled_from(NAMES), host_strategy, max_size=6).map(normalise)
backend_strategy = st.sampled_from(BackendType)
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

PHASE_RANK = {
    PoolPhase.READY: 0,
    PoolPhase.DEGRADED: 1,
    PoolPhase.ERROR: 2,
    PoolPhase.UNKNOWN: 2,
}


def is_counted(host: Host) -> bool:
    return host.assigned and host.live and host.health == Health.HEALTHY


@PROPERTY_SETTINGS
@given(hosts=hosts_strategy, backend=backend_strategy, seed=st.integers(0, 2**32 - 1))
def test_property_result_does_not_depend_on_host_order(
    hosts: dict[str, Host], backend: BackendType, seed: int
) -> None:
    pool, statuses, live = build_inputs(hosts=hosts, backend=backend)
    expected = aggregation.aggregate_pool(pool=pool, statuses=statuses, hosts=live, now=0.0)
    rng = random.Random(seed)
    keys = list(statuses)
    rng.shuffle(keys)
    assigned = list(pool.assigned_node_ids)
    rng.shuffle(assigned)
    shuffled_pool = replace(pool, assigned_node_ids=tuple(assigned))
    shuffled = {key: statuses[key] for key in keys}
    result = aggregation.aggregate_pool(pool=shuffled_pool, statuses=shuffled, hosts=live, now=0.0)
    assert result == expected


@PROPERTY_SETTINGS
@given(
    hosts=hosts_strategy,
    backend=backend_strategy,
    noise=st.tuples(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9)),
)
def test_property_uncounted_hosts_never_add_capacity(
    hosts: dict[str, Host], backend: BackendType, noise: tuple[int, int, int]
) -> None:
    # Change every uncounted host's numbers (and make it the freshest): capacity must not move.
    total, used, available = noise
    changed = {
        n: h
        if is_counted(h)
        else replace(h, total=total, used=used, available=available, changed_at=99.0)
        for n, h in hosts.items()
    }
    assert (
        aggregate(changed, backend=backend).capacity == aggregate(hosts, backend=backend).capacity
    )
    # And removing them entirely changes nothing either.
    counted_only = {n: h for n, h in hosts.items() if is_counted(h)}
    assert (
        aggregate(counted_only, backend=backend).capacity
        == aggregate(hosts, backend=backend).capacity
    )


@PROPERTY_SETTINGS
@given(hosts=hosts_strategy, backend=backend_strategy, new=host_strategy)
def test_property_adding_a_healthy_assigned_live_host_never_worsens_the_phase(
    hosts: dict[str, Host], backend: BackendType, new: Host
) -> None:
    before = aggregate(hosts, backend=backend).phase
    added = {**hosts, "new": replace(new, health=Health.HEALTHY, assigned=True, live=True)}
    after = aggregate(added, backend=backend).phase
    if before == PoolPhase.PENDING:
        assert after == PoolPhase.READY
    else:
        assert PHASE_RANK[after] <= PHASE_RANK[before]
        if before == PoolPhase.READY:
            assert after == PoolPhase.READY


@PROPERTY_SETTINGS
@given(
    hosts=hosts_strategy,
    backend=st.sampled_from([BackendType.LOCAL_DIR, BackendType.LOCAL_LVM]),
)
def test_property_local_capacity_is_the_sum_over_counted_rows(
    hosts: dict[str, Host], backend: BackendType
) -> None:
    result = aggregate(hosts, backend=backend)
    counted = [
        row
        for row in result.rows
        if row.assigned and not row.stale and row.report.health == Health.HEALTHY
    ]
    cap = 2**64 - 1
    assert result.capacity == Capacity(
        total_bytes=min(cap, sum(row.report.total_bytes for row in counted)),
        used_bytes=min(cap, sum(row.report.used_bytes for row in counted)),
        available_bytes=min(cap, sum(row.report.available_bytes for row in counted)),
    )
    assert tuple(row.node_id for row in counted) == result.healthy_node_ids


@PROPERTY_SETTINGS
@given(hosts=hosts_strategy, backend=st.sampled_from(sorted(SHARED_BACKENDS)))
def test_property_shared_capacity_is_one_freshest_counted_row(
    hosts: dict[str, Host], backend: BackendType
) -> None:
    result = aggregate(hosts, backend=backend)
    counted = [h for h in hosts.values() if is_counted(h)]
    if not counted:
        assert result.capacity == Capacity()
        return
    freshest = max(h.changed_at for h in counted)
    candidates = {
        Capacity(h.total, h.used, h.available) for h in counted if h.changed_at == freshest
    }
    assert result.capacity in candidates


@PROPERTY_SETTINGS
@given(hosts=hosts_strategy, backend=backend_strategy)
def test_property_assigned_hosts_are_partitioned_and_message_matches_phase(
    hosts: dict[str, Host], backend: BackendType
) -> None:
    result = aggregate(hosts, backend=backend)
    assigned = sorted(n for n, h in hosts.items() if h.assigned)
    assert not set(result.healthy_node_ids) & set(result.unhealthy_node_ids)
    assert sorted(result.healthy_node_ids + result.unhealthy_node_ids) == assigned
    assert list(result.healthy_node_ids) == sorted(result.healthy_node_ids)
    assert list(result.unhealthy_node_ids) == sorted(result.unhealthy_node_ids)
    assert [row.node_id for row in result.rows] == sorted(hosts)
    assert (result.error_message == "") == (result.phase == PoolPhase.READY)


@pytest.mark.parametrize(
    ("phase", "deleting", "shown"),
    [
        (None, False, PoolPhase.PENDING),  # not aggregated yet: never a made-up phase
        (None, True, PoolPhase.DELETING),  # deleting at once, aggregated or not
        (PoolPhase.READY, True, PoolPhase.DELETING),
        (PoolPhase.ERROR, False, PoolPhase.ERROR),
        (PoolPhase.UNKNOWN, False, PoolPhase.UNKNOWN),
        (PoolPhase.DEGRADED, False, PoolPhase.DEGRADED),
    ],
)
def test_shown_phase(phase: PoolPhase | None, deleting: bool, shown: PoolPhase) -> None:
    stored = None if phase is None else replace(aggregate({"n1": Host(H.HEALTHY)}), phase=phase)
    assert aggregation.shown_phase(stored, deleting=deleting) is shown
