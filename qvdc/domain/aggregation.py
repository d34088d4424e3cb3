"""Aggregate a pool's per-host reports into one phase, one capacity and one table.

The host is the source of truth for what it has; the controller only combines. This module
is the combining rule, as one pure function of the pool definition, the per-host statuses
and the set of live nodes (docs/architecture.md, "Aggregation"). It has no clock:
staleness is decided by the liveness monitor (``staleness``) and arrives here as ``live_node_ids``.

What it fixes compared with upstream's ``AggregateCapacity`` / ``DetermineOverallPhase``
(upstream's rules and defects 10, 11, 18, 20: docs/upstream.md):

* Only **assigned, live** hosts count. A host that was unassigned (defect 10) or that
  mounted a pool it was never assigned (defect 20) keeps a row, flagged ``assigned=False``,
  but adds neither health nor capacity.
* A DEGRADED host is *not healthy* (defect 11): HEALTHY + DEGRADED is a DEGRADED pool, not
  READY; all-DEGRADED is ERROR because no host is healthy.
* A host that stopped heartbeating is stale: its last report is kept for the operator to
  read, but counts as UNKNOWN, never HEALTHY. When *every* assigned host is stale the
  controller cannot tell anything, so the phase is UNKNOWN rather than ERROR.
* An assigned host with no report at all is UNMOUNTED for that host ("pool not reported by
  host") and counts as not healthy.
* Shared-backend capacity comes from the **freshest** healthy host (latest ``changed_at``,
  ties broken by the smallest node id), not from whichever host map iteration met first.
  iSCSI is shared (defect 18; see ``model.SHARED_BACKENDS``).
* With no healthy host the capacity is zero, never a stale figure from an earlier pass.

Everything here is deterministic: rows and id lists are sorted by node id, so two replicas
computing the same inputs write byte-identical aggregates (and the aggregator's
"write only when changed" compare works).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

from qvdc.domain.model import (
    SHARED_BACKENDS,
    BackendType,
    Capacity,
    Health,
    HostPoolStatus,
    HostRow,
    NodeId,
    PoolAggregate,
    PoolPhase,
    PoolRecord,
    PoolReport,
)
from qvdc.domain.reports import UINT32_MAX, UINT64_MAX

#: Error text of the row synthesised for an assigned host that has no report for the pool.
NOT_REPORTED_MESSAGE = "pool not reported by host"

#: Error text when a pool has no assigned host.
NO_HOST_ASSIGNED_MESSAGE = "no host is assigned this pool"

#: At most this many hosts are described in a pool's error message; the rest are counted.
#: The full lists are in ``unhealthy_node_ids`` and the rows.
MAX_HOSTS_IN_MESSAGE = 10

#: A host's own error text is cut to this many characters inside the pool's message.
MAX_HOST_ERROR_CHARS = 200


def is_shared(backend: BackendType) -> bool:
    """Return True when every host of a pool with this backend sees the same storage.

    Shared pools (NFS, Ceph RBD, CephFS, iSCSI) take capacity from one host; local pools
    (LOCAL_DIR, LOCAL_LVM) add their hosts up.
    """
    return backend in SHARED_BACKENDS


def is_counted_healthy(row: HostRow) -> bool:
    """Return True when ``row`` counts as a healthy host: assigned, live and HEALTHY."""
    return row.assigned and not row.stale and row.report.health == Health.HEALTHY


def build_rows(
    *,
    pool: PoolRecord,
    statuses: Mapping[NodeId, HostPoolStatus],
    live_node_ids: AbstractSet[NodeId],
) -> tuple[HostRow, ...]:
    """Return one row per host that is assigned the pool or has a status for it, by node id.

    Cases, per host (a host is keyed by its ``statuses`` key, not ``status.node_id``):

    * assigned, with a status   -> the status's report and ``changed_at``, ``assigned=True``;
    * assigned, no status       -> a synthesised UNMOUNTED report with error
      ``NOT_REPORTED_MESSAGE`` and ``changed_at=0.0``, ``assigned=True``;
    * unassigned, with a status -> the status's report, ``assigned=False`` (kept for the
      operator, never counted);
    * in every case ``stale`` is "not in ``live_node_ids``".
    """
    assigned = frozenset(pool.assigned_node_ids)
    rows: list[HostRow] = []
    for node_id in sorted(assigned | statuses.keys()):
        status = statuses.get(node_id)
        if status is None:
            report = PoolReport(
                pool_id=pool.id, health=Health.UNMOUNTED, error_message=NOT_REPORTED_MESSAGE
            )
            changed_at = 0.0
        else:
            report = status.report
            changed_at = status.changed_at
        rows.append(
            HostRow(
                node_id=node_id,
                report=report,
                changed_at=changed_at,
                assigned=node_id in assigned,
                stale=node_id not in live_node_ids,
            )
        )
    return tuple(rows)


def determine_phase(*, deleting: bool, assigned_rows: Iterable[HostRow]) -> PoolPhase:
    """Return the pool phase from its assigned rows (unassigned rows must not be passed).

    Cases, first match wins:

    * deletion in progress                         -> DELETING;
    * no assigned host                             -> PENDING;
    * every assigned host healthy (live, HEALTHY)  -> READY;
    * at least one healthy, at least one not       -> DEGRADED;
    * none healthy and every assigned host stale   -> UNKNOWN (we cannot tell);
    * none healthy otherwise                       -> ERROR.
    """
    if deleting:
        return PoolPhase.DELETING
    rows = list(assigned_rows)
    if not rows:
        return PoolPhase.PENDING
    healthy = sum(1 for row in rows if is_counted_healthy(row))
    if healthy == len(rows):
        return PoolPhase.READY
    if healthy > 0:
        return PoolPhase.DEGRADED
    if all(row.stale for row in rows):
        return PoolPhase.UNKNOWN
    return PoolPhase.ERROR


def pick_freshest(rows: Iterable[HostRow]) -> HostRow | None:
    """Return the row with the latest ``changed_at`` (ties: smallest node id), or None if empty."""
    ordered = sorted(rows, key=lambda row: (-row.changed_at, row.node_id))
    return ordered[0] if ordered else None


def compute_capacity(*, backend: BackendType, healthy_rows: Iterable[HostRow]) -> Capacity:
    """Return the pool capacity from its counted healthy rows (assigned, live, HEALTHY).

    Cases:

    * no healthy row      -> ``Capacity()`` (all zero; never a stale earlier figure);
    * shared backend      -> the freshest healthy row's total / used / available;
    * local backend       -> the sums over the healthy rows, saturating at 2^64-1.

    ``provisioned_bytes`` is always 0: hosts do not report it.
    """
    rows = list(healthy_rows)
    if is_shared(backend):
        source = pick_freshest(rows)
        rows = [] if source is None else [source]
    if not rows:
        return Capacity()
    # Sums saturate at the wire's uint64, so a pool of many huge hosts stays encodable.
    return Capacity(
        total_bytes=min(UINT64_MAX, sum(row.report.total_bytes for row in rows)),
        used_bytes=min(UINT64_MAX, sum(row.report.used_bytes for row in rows)),
        available_bytes=min(UINT64_MAX, sum(row.report.available_bytes for row in rows)),
    )


def compute_volume_count(
    *, backend: BackendType, healthy_rows: Iterable[HostRow], live_rows: Iterable[HostRow]
) -> int:
    """Return the pool's volume count from the assigned rows.

    Cases:

    * shared backend with a healthy row -> the count of the freshest healthy row (the row the
      capacity came from, so the two figures describe the same observation);
    * shared backend, no healthy row    -> the largest count among assigned live rows (0 if
      none): every host sees the same volumes, so the largest is the least incomplete;
    * local backend                     -> the sum over assigned live rows: each host has its
      own volumes, and a degraded host's volumes still exist.
    """
    live = list(live_rows)
    if is_shared(backend):
        source = pick_freshest(healthy_rows)
        if source is not None:
            return source.report.volume_count
        return max((row.report.volume_count for row in live), default=0)
    return min(UINT32_MAX, sum(row.report.volume_count for row in live))


def describe_unhealthy_row(row: HostRow) -> str:
    """Return one host's part of the pool error message, for example ``"node-b ERROR: disk"``."""
    if row.stale:
        return f"{row.node_id} stale (no heartbeat)"
    text = f"{row.node_id} {row.report.health.name}"
    error = row.report.error_message.strip()
    if error:
        if len(error) > MAX_HOST_ERROR_CHARS:
            error = error[: MAX_HOST_ERROR_CHARS - 3] + "..."
        text += f": {error}"
    return text


def build_error_message(*, phase: PoolPhase, assigned_rows: Iterable[HostRow]) -> str:
    """Return the pool's operator-facing error sentence.

    Cases:

    * READY                        -> ``""``;
    * no assigned host (PENDING)   -> ``NO_HOST_ASSIGNED_MESSAGE``;
    * some assigned host unhealthy -> ``"<n> of <a> hosts unhealthy: <host>; <host>"``, hosts
      in node-id order, at most ``MAX_HOSTS_IN_MESSAGE`` of them then ``"and <k> more"``;
    * otherwise (DELETING with every host healthy) -> ``""``.
    """
    if phase == PoolPhase.READY:
        return ""
    rows = list(assigned_rows)
    if not rows:
        return "" if phase == PoolPhase.DELETING else NO_HOST_ASSIGNED_MESSAGE
    unhealthy = sorted(
        (row for row in rows if not is_counted_healthy(row)), key=lambda row: row.node_id
    )
    if not unhealthy:
        return ""
    parts = [describe_unhealthy_row(row) for row in unhealthy[:MAX_HOSTS_IN_MESSAGE]]
    if len(unhealthy) > MAX_HOSTS_IN_MESSAGE:
        parts.append(f"and {len(unhealthy) - MAX_HOSTS_IN_MESSAGE} more")
    noun = "host" if len(rows) == 1 else "hosts"
    return f"{len(unhealthy)} of {len(rows)} {noun} unhealthy: " + "; ".join(parts)


def aggregate_pool(
    *,
    pool: PoolRecord,
    statuses: Mapping[NodeId, HostPoolStatus],
    live_node_ids: AbstractSet[NodeId],
) -> PoolAggregate:
    """Return the pool's aggregate status from its definition, host statuses and live nodes.

    ``statuses`` holds the last material report of every host that reported the pool (keyed
    by node id); ``live_node_ids`` the nodes whose heartbeats are within grace. The result is
    independent of mapping order. Returns a ``PoolAggregate`` whose

    * ``rows`` has one row per assigned or reporting host, sorted by node id;
    * ``phase`` follows :func:`determine_phase` over the assigned rows;
    * ``capacity`` follows :func:`compute_capacity` over assigned, live, HEALTHY rows;
    * ``volume_count`` follows :func:`compute_volume_count`;
    * ``error_message`` follows :func:`build_error_message` ("" when READY);
    * ``healthy_node_ids`` / ``unhealthy_node_ids`` partition the assigned hosts, sorted.
    """
    rows = build_rows(pool=pool, statuses=statuses, live_node_ids=live_node_ids)
    assigned_rows = [row for row in rows if row.assigned]
    healthy_rows = [row for row in assigned_rows if is_counted_healthy(row)]
    live_rows = [row for row in assigned_rows if not row.stale]
    phase = determine_phase(deleting=pool.deleting, assigned_rows=assigned_rows)
    return PoolAggregate(
        pool_id=pool.id,
        phase=phase,
        capacity=compute_capacity(backend=pool.backend, healthy_rows=healthy_rows),
        volume_count=compute_volume_count(
            backend=pool.backend, healthy_rows=healthy_rows, live_rows=live_rows
        ),
        error_message=build_error_message(phase=phase, assigned_rows=assigned_rows),
        rows=rows,
        healthy_node_ids=tuple(row.node_id for row in healthy_rows),
        unhealthy_node_ids=tuple(
            row.node_id for row in assigned_rows if not is_counted_healthy(row)
        ),
    )
