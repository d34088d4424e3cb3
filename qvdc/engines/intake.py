"""Heartbeat intake: the controller's hot path.

A heartbeat costs a dict update for liveness and, per pool report, one
comparison against the last report written for that host and pool. Only a
*material* change (``qvdc.kits.materiality``: health, mount path, error,
volume count, or capacity moved by more than 1 % / 1 GiB) is written to
``hoststatus/<pool>/<node>``, through the group committer. Freshness does not
come from rewriting unchanged rows; it comes from node liveness.

Report handling, by case:

* the report names a known pool id -> compared and maybe written;
* it names a pool by *name* (upstream agents report auto-discovered pools that
  way) -> resolved to the id, then as above (upstream then overwrote it with
  UNMOUNTED in the same heartbeat; we do not);
* it names no known pool -> ignored and counted (``unknown_reports``);
* a FULL heartbeat (unary, or the first on a stream) that omits an assigned
  pool -> that host's row becomes UNMOUNTED "pool not reported by host";
* a full heartbeat that omits an *unassigned* pool the host had a row for ->
  the row is deleted (the host let go of it);
* a DELTA heartbeat lists changed reports only; pools it does not list are
  unchanged; ``removed_pool_ids`` are handled like omissions in a full one;
* a report whose capacities contradict each other or overflow uint64
  (:func:`qvdc.domain.reports.checked`) -> an ERROR row naming the contradiction;
* a report whose row would exceed the committer's ``max_op_bytes``, or whose write
  etcd refused (``GroupCommitter.on_refused``) -> the row becomes ERROR with a message
  saying why, never the host's last accepted report, and no other host waits on it.

What counts as material is ``materiality_rule`` (default
:func:`qvdc.kits.materiality.is_material_change`); the benchmark's naive
baseline passes one that says yes to every report, as upstream writes them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from qvdc.domain import errors, reports
from qvdc.domain.model import Health, HostPoolStatus, NodeId, PoolId, PoolReport
from qvdc.engines.committer import GroupCommitter
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.view import ClusterView
from qvdc.kits import materiality
from qvdc.kits.materiality import ReportLike
from qvdc.kits.nested import discard_nested
from qvdc.kits.timing import Clock
from qvdc.settings import HeartbeatSettings
from qvdc.store import codec, keys
from qvdc.store.etcd import KeyValue

log = logging.getLogger(__name__)

NOT_REPORTED = "pool not reported by host"

_MAX_CACHED_ASSIGNMENTS = 1_000_000


class IncomingReport(ReportLike, Protocol):
    """A pool report as a heartbeat carries it: a PoolReport or the wire message."""

    @property
    def pool_id(self) -> str: ...


class MaterialityRule(Protocol):
    """Whether ``new`` differs enough from ``old`` (None: nothing written yet) to be written."""

    def __call__(
        self, old: ReportLike | None, new: ReportLike, *, fraction: float, min_bytes: int
    ) -> bool: ...


ReportConverter = Callable[[Any, PoolId], PoolReport]
"""``to_report(report, pool_id)``: the PoolReport of an incoming report, under ``pool_id``."""


def _as_pool_report(report: Any, pool_id: PoolId) -> PoolReport:
    """The default converter: incoming reports already are PoolReports."""
    assert isinstance(report, PoolReport), f"pass to_report= for {type(report).__name__}"
    return report if report.pool_id == pool_id else replace(report, pool_id=pool_id)


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a node must have mounted: pool ids (sorted) and the mod revisions of their
    definitions. Two assignments are equal exactly when the set or a definition differs
    (one is cached per node: ids and revisions are the view's own objects, shared)."""

    pool_ids: tuple[PoolId, ...]
    revisions: tuple[int, ...]


def _refused(status: HostPoolStatus, reason: str) -> HostPoolStatus:
    """``status`` as an ERROR row saying its report was refused, and why."""
    report = PoolReport(
        pool_id=status.report.pool_id,
        health=Health.ERROR,
        error_message=f"report refused by the store: {reason}",
    )
    return replace(status, report=report)


class HeartbeatIntake:
    def __init__(
        self,
        *,
        view: ClusterView,
        committer: GroupCommitter,
        monitor: LivenessMonitor,
        settings: HeartbeatSettings,
        clock: Clock,
        materiality_rule: MaterialityRule = materiality.is_material_change,
    ) -> None:
        self._view = view
        self._committer = committer
        self._monitor = monitor
        self._settings = settings
        self._clock = clock
        self._is_material_change = materiality_rule
        # node -> pool -> what we wrote (or queued) at hoststatus/<pool>/<node> and the
        # view has not seen yet: the cache lags the committer. Dropped once the watch brings
        # those very bytes back, so in the steady state each row is held once, decoded, by
        # the view, and this table is nearly empty.
        self._written: dict[str, dict[str, tuple[PoolReport, bytes]]] = {}
        # Per node, what assignment() last computed; dropped whenever a pool definition or
        # an assignment changes (both rare), so every heartbeat answer does not rescan them.
        self._assignments: dict[str, Assignment] = {}
        # Pool ids known to exist (view.pool() decoded them); dropped on any pool change.
        self._known_pools: set[str] = set()
        view.subscribe(self._on_change)
        committer.on_refused = self._refused_row
        #: Counters for tests and the benchmark.
        self.heartbeats = 0
        self.reports_seen = 0
        #: Reports written as material changes (the rest of reports_seen were unchanged,
        #: or unknown_reports); material_changes also counts rows written for omissions.
        self.reports_written = 0
        self.material_changes = 0
        self.unknown_reports = 0

    def _on_change(self, key: str, old: KeyValue | None, new: KeyValue | None) -> None:
        if key.startswith(keys.HOST_STATUS):
            pool_id, _, node_id = key[len(keys.HOST_STATUS) :].partition("/")
            ours = self._written.get(node_id)
            written = ours.get(pool_id) if ours is not None else None
            if written is not None and (new is None or new.value == written[1]):
                discard_nested(self._written, node_id, pool_id)
        elif key.startswith(keys.POOLS):
            self._assignments.clear()
            self._known_pools.clear()
        elif key.startswith(keys.ASSIGNMENTS):
            self._assignments.clear()

    @property
    def unconfirmed_writes(self) -> int:
        """Rows written (or queued) whose write the view has not seen come back yet."""
        return sum(len(pools) for pools in self._written.values())

    def require_node(self, node_id: str) -> None:
        if not node_id:
            raise errors.InvalidArgument("node_id is required", field="node_id")
        if not self._view.has_node(node_id):
            raise errors.NotFound(f"node '{node_id}' not found; register it first", field="node_id")

    def accept(
        self,
        *,
        node_id: str,
        reports: Sequence[IncomingReport],
        full: bool,
        removed: Iterable[str] = (),
        to_report: ReportConverter | None = None,
    ) -> None:
        """Take one heartbeat. Raises InvalidArgument/NotFound for a bad node id.

        ``reports`` are :class:`PoolReport` values, or any objects with the same fields
        (the API passes the wire reports themselves) plus ``to_report`` to turn one
        into a PoolReport for a given pool id. Only reports that changed materially
        are converted, so an unchanged report costs one comparison and no allocation.
        """
        self.require_node(node_id)
        nid = NodeId(node_id)
        self._monitor.observe(nid)
        self.heartbeats += 1
        if not reports and not full and not removed:
            return
        convert = to_report or _as_pool_report
        assigned = self.assignment(nid).pool_ids
        seen: set[str] = set()
        known = self._known_pools
        rows = self._view.rows_of(nid)
        self.reports_seen += len(reports)
        for report in reports:  # runs for every report of every full heartbeat: kept flat
            pool_id = report.pool_id
            resolved = PoolId(pool_id) if pool_id in known else self._resolve(pool_id)
            if resolved is None:
                continue
            seen.add(resolved)
            if self._is_material(rows, nid, resolved, report):
                self._write(nid, convert(report, resolved))
                self.reports_written += 1
        # A full heartbeat omits what the host no longer has; a delta one says so.
        everything = set(rows).union(assigned) if full else set(removed)
        gone = everything - seen
        for pool_id in gone:
            if pool_id in assigned:
                self._record(
                    rows,
                    nid,
                    PoolReport(
                        pool_id=PoolId(pool_id), health=Health.UNMOUNTED, error_message=NOT_REPORTED
                    ),
                )
            else:
                self._drop(nid, pool_id)

    def _resolve(self, pool_id: str) -> PoolId | None:
        """The id of the pool a report names (by id, or by name as upstream agents do)."""
        if not pool_id:
            self.unknown_reports += 1
            return None
        if pool_id in self._known_pools:
            return PoolId(pool_id)
        if self._view.pool(pool_id) is not None:
            self._known_pools.add(pool_id)
            return PoolId(pool_id)
        by_name = self._view.pool_id_by_name(pool_id)
        if by_name is not None:
            return by_name
        self.unknown_reports += 1
        return None

    def _is_material(
        self,
        rows: Mapping[str, HostPoolStatus | None],
        node_id: str,
        pool_id: str,
        report: ReportLike,
    ) -> bool:
        """Whether ``report`` differs materially from the last one written for the row:
        ours if still in flight, else the view's (``rows``: the node's rows)."""
        ours = self._written.get(node_id) if self._written else None
        written = ours.get(pool_id) if ours is not None else None
        previous: ReportLike | None
        if written is not None:
            previous = written[0]
        else:
            stored = rows.get(pool_id)
            previous = stored.report if stored is not None else None
        return self._is_material_change(
            previous,
            report,
            fraction=self._settings.material_capacity_fraction,
            min_bytes=self._settings.material_capacity_bytes,
        )

    def _record(
        self, rows: Mapping[str, HostPoolStatus | None], node_id: NodeId, report: PoolReport
    ) -> None:
        if self._is_material(rows, node_id, report.pool_id, report):
            self._write(node_id, report)

    def _write(self, node_id: NodeId, report: PoolReport) -> None:
        self.material_changes += 1
        sent = report
        report = reports.checked(report)
        # The view keeps this very object (expect()): share its strings as decoding does.
        report = replace(
            report,
            pool_id=PoolId(codec.intern_text(report.pool_id)),
            mount_path=codec.intern_text(report.mount_path),
            error_message=codec.intern_text(report.error_message),
        )
        status = HostPoolStatus(
            node_id=NodeId(codec.intern_text(node_id)), report=report, changed_at=self._clock.time()
        )
        value = codec.encode_host_status(status)
        key = keys.host_status(report.pool_id, status.node_id)
        limit = self._committer.max_op_bytes
        if len(key) + len(value) > limit:
            log.warning(
                "%s: a report of %d bytes is over the %d bytes a row may hold; "
                "recording the row as ERROR",
                key,
                len(value),
                limit,
            )
            status = _refused(status, f"its row would be {len(value)} bytes, over {limit}")
            value = codec.encode_host_status(status)
        # The report as sent, so the same refused report is not material again.
        self._written.setdefault(status.node_id, {})[report.pool_id] = (sent, value)
        self._view.expect(key, value, status)
        self._committer.submit(key, value)

    def _refused_row(self, key: str, reason: str) -> bytes | None:
        """The ERROR row written instead of a host-status write etcd refused."""
        parts = keys.split(key)
        if len(parts) != 3 or parts[0] + "/" != keys.HOST_STATUS:
            return None
        pool_id, node_id = PoolId(parts[1]), NodeId(parts[2])
        refused = HostPoolStatus(
            node_id=node_id,
            report=PoolReport(pool_id=pool_id, health=Health.ERROR),
            changed_at=self._clock.time(),
        )
        status = _refused(refused, reason)
        value = codec.encode_host_status(status)
        written = self._written.get(node_id, {}).get(pool_id)
        if written is not None:
            self._written[node_id][pool_id] = (written[0], value)
        self._view.expect(key, value, status)
        return value

    def _drop(self, node_id: NodeId, pool_id: str) -> None:
        key = keys.host_status(pool_id, node_id)
        discard_nested(self._written, node_id, pool_id)
        if self._view.cache.get(key) is not None:
            self._committer.submit(key, None)

    def assignment(self, node_id: str) -> Assignment:
        cached = self._assignments.get(node_id)
        if cached is not None:
            return cached
        pool_ids = tuple(sorted(self._view.assigned_pool_ids(node_id)))
        revisions = tuple(self._view.mod_revision(keys.pool(p)) for p in pool_ids)
        assignment = Assignment(pool_ids=pool_ids, revisions=revisions)
        if len(self._assignments) >= _MAX_CACHED_ASSIGNMENTS:
            self._assignments.clear()
        self._assignments[node_id] = assignment
        return assignment
