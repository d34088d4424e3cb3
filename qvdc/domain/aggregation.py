"""Aggregate a pool's per-host reports into one phase, one capacity and one table.

The host is the source of truth for what it has; the controller only combines. This module
is the combining rule, as one pure function of the pool definition, the per-host statuses,
each host's timing (``HostTiming``) and ``now`` (docs/architecture.md, "Aggregation";
docs/failure-semantics.md). It reads no clock: ``now`` is a parameter.

What it fixes compared with upstream's ``AggregateCapacity`` / ``DetermineOverallPhase``
(upstream's rules and defects 10, 11, 18, 20: docs/upstream.md):

* Only **assigned, live** hosts count. A host that was unassigned (defect 10) or that
  mounted a pool it was never assigned (defect 20) keeps a row, flagged ``assigned=False``,
  but adds neither health nor capacity.
* A DEGRADED host is *not healthy* (defect 11): HEALTHY + DEGRADED is a DEGRADED pool, not
  READY; all-DEGRADED is ERROR because no host is healthy.
* A host is stale when its liveness record says it is not live, or when the controller
  knows its last heartbeat and that is more than the host's grace old (``is_stale``). The
  second case is what keeps a pool honest while node transitions are frozen (every node
  silent at once: nobody is marked OFFLINE, but their rows still age). A stale row keeps
  its last report for the operator to read, but never counts as HEALTHY and never adds
  capacity. When *every* counted host is stale the controller cannot tell anything, so
  the phase is UNKNOWN rather than ERROR.
* An assigned host with no report at all is UNMOUNTED for that host ("pool not reported by
  host") and counts as not healthy, unless it has not yet had one heartbeat interval (and a
  little) since it was registered or the pool last changed (``HostTiming.report_due``):
  then it is *pending* (row health UNKNOWN, "waiting for the host's first report"), counts
  neither way, and a pool whose assigned hosts are all pending is PENDING, as upstream
  shows a pool no host has reported yet.
* Messages name a host by hostname and short id, ``host-a (c7d512f2)``.
* Shared-backend capacity comes from the **freshest** healthy host (latest ``changed_at``,
  ties broken by the smallest node id), not from whichever host map iteration met first.
  iSCSI is shared (defect 18; see ``model.SHARED_BACKENDS``).
* With no healthy host the capacity is zero, never a stale figure from an earlier pass.

Everything here is deterministic: rows and id lists are sorted by node id, so two replicas
computing the same inputs write byte-identical aggregates (and the aggregator's
"write only when changed" compare works).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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

#: Error text of a pending row: assigned, not reported yet, still within its first interval.
PENDING_MESSAGE = "waiting for the host's first report"

#: Error text when a pool has no assigned host.
NO_HOST_ASSIGNED_MESSAGE = "no host is assigned this pool"

#: At most this many hosts are described in a pool's error message; the rest are counted.
#: The full lists are in ``unhealthy_node_ids`` and the rows.
MAX_HOSTS_IN_MESSAGE = 10

#: A host's own error text is cut to this many characters inside the pool's message.
MAX_HOST_ERROR_CHARS = 200

#: A host is named by its hostname and this many leading characters of its id.
SHORT_ID_CHARS = 8

#: The "little" past one heartbeat interval a new host gets for its first report: a quarter
#: of the interval, at least this many seconds (a heartbeat's round trip and write).
MIN_REPORT_SLACK = 1.0


@dataclass(frozen=True, slots=True)
class HostTiming:
    """What the controller knows about one host's reports in time.

    * ``live``: the node's liveness record (``nodestatus``) says its heartbeats arrive;
    * ``heard_at``: wall time of its last heartbeat, when the replica judging it is this one
      (None: not known here; ``live`` is the owner's word and is trusted);
    * ``grace``: the node's grace (seconds a heartbeat may be old);
    * ``report_due``: until this wall time an assigned host without a report is pending
      (:func:`report_due`); ``-inf``: never pending.
    """

    live: bool = True
    heard_at: float | None = None
    grace: float = math.inf
    report_due: float = -math.inf


def report_due(*, since: float, interval: float) -> float:
    """Return the wall time until which a host that has not reported is pending.

    ``since`` is when the host could first have known it must report (the later of its
    registration and the pool's last change); it then has one ``interval`` plus a quarter of
    it (at least ``MIN_REPORT_SLACK`` seconds).
    """
    return since + interval + max(MIN_REPORT_SLACK, interval / 4)


def is_stale(*, timing: HostTiming | None, now: float) -> bool:
    """Return True when the host's reports are not to be trusted at ``now``.

    Cases:

    * no timing (no liveness record at all)                     -> stale;
    * not live (the judging replica marked it silent)           -> stale;
    * last heartbeat known and ``now - heard_at > grace``        -> stale (strictly greater,
      as the liveness rule: exactly ``grace`` old is still fresh);
    * otherwise                                                 -> fresh.
    """
    if timing is None or not timing.live:
        return True
    return timing.heard_at is not None and now - timing.heard_at > timing.grace


def stale_at(timing: HostTiming | None) -> float | None:
    """Return the wall time after which a fresh host turns stale with no event, or None.

    None when nothing but an event can change it (no known heartbeat, or not live).
    """
    if timing is None or not timing.live or timing.heard_at is None:
        return None
    return timing.heard_at + timing.grace


def is_unreported(status: HostPoolStatus | None) -> bool:
    """Return True when the host has no report of the pool: no row, or the intake's
    "pool not reported by host" row (a full heartbeat that did not list the pool)."""
    if status is None:
        return True
    report = status.report
    return report.health == Health.UNMOUNTED and report.error_message == NOT_REPORTED_MESSAGE


def is_pending(*, timing: HostTiming | None, status: HostPoolStatus | None, now: float) -> bool:
    """Return True when an assigned host has not reported the pool yet and may still.

    Pending when the host is not stale, has no report of the pool (:func:`is_unreported`)
    and ``now <= timing.report_due``.
    """
    if timing is None or is_stale(timing=timing, now=now) or not is_unreported(status):
        return False
    return now <= timing.report_due


def host_label(*, node_id: str, hostname: str) -> str:
    """Return how a message names a host: ``"host-a (c7d512f2)"``, or the id alone when the
    hostname is not known."""
    if not hostname or hostname == node_id:
        return node_id
    return f"{hostname} ({node_id[:SHORT_ID_CHARS]})"


def is_shared(backend: BackendType) -> bool:
    """Return True when every host of a pool with this backend sees the same storage.

    Shared pools (NFS, Ceph RBD, CephFS, iSCSI) take capacity from one host; local pools
    (LOCAL_DIR, LOCAL_LVM) add their hosts up.
    """
    return backend in SHARED_BACKENDS


def is_counted_healthy(row: HostRow) -> bool:
    """Return True when ``row`` counts as a healthy host: assigned, fresh, reported, HEALTHY."""
    return (
        row.assigned and not row.stale and not row.pending and row.report.health == Health.HEALTHY
    )


def build_rows(
    *,
    pool: PoolRecord,
    statuses: Mapping[NodeId, HostPoolStatus],
    hosts: Mapping[NodeId, HostTiming],
    now: float,
) -> tuple[HostRow, ...]:
    """Return one row per host that is assigned the pool or has a status for it, by node id.

    Cases, per host (a host is keyed by its ``statuses`` key, not ``status.node_id``):

    * assigned, pending (:func:`is_pending`) -> a synthesised UNKNOWN report with error
      ``PENDING_MESSAGE``, ``pending=True`` (its ``changed_at`` kept, 0.0 if no status);
    * assigned, with a status   -> the status's report and ``changed_at``, ``assigned=True``;
    * assigned, no status       -> a synthesised UNMOUNTED report with error
      ``NOT_REPORTED_MESSAGE`` and ``changed_at=0.0``, ``assigned=True``;
    * unassigned, with a status -> the status's report, ``assigned=False`` (kept for the
      operator, never counted);
    * in every case ``stale`` is :func:`is_stale` of the host's timing (absent: stale).
    """
    assigned = frozenset(pool.assigned_node_ids)
    rows: list[HostRow] = []
    for node_id in sorted(assigned | statuses.keys()):
        status = statuses.get(node_id)
        timing = hosts.get(node_id)
        changed_at = 0.0 if status is None else status.changed_at
        pending = node_id in assigned and is_pending(timing=timing, status=status, now=now)
        if pending:
            report = PoolReport(
                pool_id=pool.id, health=Health.UNKNOWN, error_message=PENDING_MESSAGE
            )
        elif status is None:
            report = PoolReport(
                pool_id=pool.id, health=Health.UNMOUNTED, error_message=NOT_REPORTED_MESSAGE
            )
        else:
            report = status.report
        rows.append(
            HostRow(
                node_id=node_id,
                report=report,
                changed_at=changed_at,
                assigned=node_id in assigned,
                stale=is_stale(timing=timing, now=now),
                pending=pending,
            )
        )
    return tuple(rows)


def determine_phase(*, deleting: bool, assigned_rows: Iterable[HostRow]) -> PoolPhase:
    """Return the pool phase from its assigned rows (unassigned rows must not be passed).

    Pending rows are left out of the count. Cases, first match wins:

    * deletion in progress                          -> DELETING;
    * no assigned host, or every one pending        -> PENDING;
    * every counted host healthy (fresh, HEALTHY)   -> READY;
    * at least one healthy, at least one not        -> DEGRADED;
    * none healthy and every counted host stale     -> UNKNOWN (we cannot tell);
    * none healthy otherwise                        -> ERROR.

    So a pool with any stale assigned row is never READY.
    """
    if deleting:
        return PoolPhase.DELETING
    rows = [row for row in assigned_rows if not row.pending]
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
    """Return the pool capacity from its counted healthy rows (assigned, fresh, HEALTHY).

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
    * shared backend, no healthy row    -> the largest count among assigned fresh rows (0 if
      none): every host sees the same volumes, so the largest is the least incomplete;
    * local backend                     -> the sum over assigned fresh rows: each host has its
      own volumes, and a degraded host's volumes still exist.
    """
    live = list(live_rows)
    if is_shared(backend):
        source = pick_freshest(healthy_rows)
        if source is not None:
            return source.report.volume_count
        return max((row.report.volume_count for row in live), default=0)
    return min(UINT32_MAX, sum(row.report.volume_count for row in live))


def describe_unhealthy_row(row: HostRow, *, hostname: str = "") -> str:
    """Return one host's part of the pool error message, for example
    ``"host-b (c7d512f2) ERROR: disk"``."""
    name = host_label(node_id=row.node_id, hostname=hostname)
    if row.stale:
        return f"{name} stale (no heartbeat)"
    text = f"{name} {row.report.health.name}"
    error = row.report.error_message.strip()
    if error:
        if len(error) > MAX_HOST_ERROR_CHARS:
            error = error[: MAX_HOST_ERROR_CHARS - 3] + "..."
        text += f": {error}"
    return text


def _listed(rows: list[HostRow], hostnames: Mapping[NodeId, str]) -> str:
    parts = [
        describe_unhealthy_row(row, hostname=hostnames.get(row.node_id, ""))
        for row in rows[:MAX_HOSTS_IN_MESSAGE]
    ]
    if len(rows) > MAX_HOSTS_IN_MESSAGE:
        parts.append(f"and {len(rows) - MAX_HOSTS_IN_MESSAGE} more")
    return "; ".join(parts)


def build_error_message(
    *,
    phase: PoolPhase,
    assigned_rows: Iterable[HostRow],
    hostnames: Mapping[NodeId, str] | None = None,
) -> str:
    """Return the pool's operator-facing error sentence.

    Hosts are named by :func:`host_label` (``hostnames``: node id -> hostname; missing: the
    id alone), in node-id order, at most ``MAX_HOSTS_IN_MESSAGE`` of them then
    ``"and <k> more"``. Cases:

    * READY                        -> ``""``;
    * no assigned host             -> ``NO_HOST_ASSIGNED_MESSAGE``;
    * every assigned host pending  -> ``"waiting for the first report of <a> hosts: <host>"``;
    * some assigned host unhealthy -> ``"<n> of <a> hosts unhealthy: <host>; <host>"``, and
      ``"; <p> waiting for a first report"`` when ``p`` hosts are pending;
    * otherwise (DELETING with every host healthy) -> ``""``.
    """
    if phase == PoolPhase.READY:
        return ""
    names = hostnames or {}
    rows = sorted(assigned_rows, key=lambda row: row.node_id)
    if not rows:
        return "" if phase == PoolPhase.DELETING else NO_HOST_ASSIGNED_MESSAGE
    pending = [row for row in rows if row.pending]
    noun = "host" if len(rows) == 1 else "hosts"
    if len(pending) == len(rows):
        labels = [
            host_label(node_id=row.node_id, hostname=names.get(row.node_id, ""))
            for row in rows[:MAX_HOSTS_IN_MESSAGE]
        ]
        if len(rows) > MAX_HOSTS_IN_MESSAGE:
            labels.append(f"and {len(rows) - MAX_HOSTS_IN_MESSAGE} more")
        return f"waiting for the first report of {len(rows)} {noun}: " + "; ".join(labels)
    unhealthy = [row for row in rows if not row.pending and not is_counted_healthy(row)]
    if not unhealthy:
        return ""
    text = f"{len(unhealthy)} of {len(rows)} {noun} unhealthy: " + _listed(unhealthy, names)
    if pending:
        text += f"; {len(pending)} waiting for a first report"
    return text


def shown_phase(aggregate: PoolAggregate | None, *, deleting: bool) -> PoolPhase:
    """The phase every reader shows for a pool (GetPool, ListPools, watches, ``/metrics``,
    the status page), from its stored aggregate, if any, and its definition:

    * deletion in progress -> DELETING at once, before the leader's aggregate says so;
    * no aggregate yet (just created, or the leader catching up) -> PENDING, as upstream
      shows a pool nobody has reported: never a phase the aggregate has not computed;
    * otherwise the aggregate's phase.
    """
    if deleting:
        return PoolPhase.DELETING
    if aggregate is None:
        return PoolPhase.PENDING
    return aggregate.phase


def aggregate_pool(
    *,
    pool: PoolRecord,
    statuses: Mapping[NodeId, HostPoolStatus],
    hosts: Mapping[NodeId, HostTiming],
    now: float,
    hostnames: Mapping[NodeId, str] | None = None,
) -> PoolAggregate:
    """Return the pool's aggregate status from its definition, host statuses and timings.

    ``statuses`` holds the last material report of every host that reported the pool (keyed
    by node id); ``hosts`` each host's :class:`HostTiming` (a host missing from it is
    stale); ``hostnames`` names hosts in the message. The result is independent of mapping
    order. Returns a ``PoolAggregate`` whose

    * ``rows`` has one row per assigned or reporting host, sorted by node id (:func:`build_rows`);
    * ``phase`` follows :func:`determine_phase` over the assigned rows;
    * ``capacity`` follows :func:`compute_capacity` over assigned, fresh, HEALTHY rows;
    * ``volume_count`` follows :func:`compute_volume_count`;
    * ``error_message`` follows :func:`build_error_message` ("" when READY);
    * ``healthy_node_ids`` / ``unhealthy_node_ids``: the assigned hosts that count as healthy
      and those that count as not healthy, sorted; pending hosts are in neither.
    """
    rows = build_rows(pool=pool, statuses=statuses, hosts=hosts, now=now)
    assigned_rows = [row for row in rows if row.assigned]
    healthy_rows = [row for row in assigned_rows if is_counted_healthy(row)]
    live_rows = [row for row in assigned_rows if not row.stale and not row.pending]
    phase = determine_phase(deleting=pool.deleting, assigned_rows=assigned_rows)
    return PoolAggregate(
        pool_id=pool.id,
        phase=phase,
        capacity=compute_capacity(backend=pool.backend, healthy_rows=healthy_rows),
        volume_count=compute_volume_count(
            backend=pool.backend, healthy_rows=healthy_rows, live_rows=live_rows
        ),
        error_message=build_error_message(
            phase=phase, assigned_rows=assigned_rows, hostnames=hostnames
        ),
        rows=rows,
        healthy_node_ids=tuple(row.node_id for row in healthy_rows),
        unhealthy_node_ids=tuple(
            row.node_id for row in assigned_rows if not row.pending and not is_counted_healthy(row)
        ),
    )
