"""Wire messages <-> domain values and stored documents.

Pool and node definitions are stored as the protobuf JSON of the wire message
(``to_dict()`` / ``from_dict()``), so nothing of the operator's definition is
lost (upstream dropped every backend config on the way out). Statuses are
built from the domain aggregates and the liveness state.

The bytes of the heartbeat messages are read and written by the server's codec,
:mod:`qvdc.transport.heartbeat_codec`; this module sees only the messages.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.domain.aggregation import shown_phase
from qvdc.domain.model import (
    Health,
    HostRow,
    NodeState,
    PoolAggregate,
    PoolId,
    PoolReport,
)


def timestamp(ts: float) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC) if ts > 0 else None


# --- heartbeats ----------------------------------------------------------------

_HEALTH = {int(h): h for h in Health}


def report_from_wire(r: compute.StoragePoolStatusReport) -> PoolReport:
    return PoolReport(
        pool_id=PoolId(r.pool_id),
        health=_HEALTH.get(int(r.health), Health.UNKNOWN),
        total_bytes=r.total_bytes,
        used_bytes=r.used_bytes,
        available_bytes=r.available_bytes,
        mount_path=r.mount_path,
        volume_count=r.volume_count,
        error_message=r.error_message,
    )


_KNOWN_HEALTH = frozenset(int(h) for h in Health)


def incoming_reports(
    reports: list[compute.StoragePoolStatusReport],
) -> Sequence[compute.StoragePoolStatusReport] | list[PoolReport]:
    """What the intake compares: the wire reports themselves (they have the domain's field
    names and values), unless one carries a health value the domain does not know; then all
    are converted, so that value reads as UNKNOWN exactly as :func:`report_from_wire` has it."""
    for r in reports:
        if r.health not in _KNOWN_HEALTH:
            return [report_from_wire(r) for r in reports]
    return reports


def report_for_pool(r: compute.StoragePoolStatusReport | PoolReport, pool_id: PoolId) -> PoolReport:
    """The PoolReport of an incoming report, filed under ``pool_id`` (the id it resolved to)."""
    if isinstance(r, PoolReport):
        return r if r.pool_id == pool_id else replace(r, pool_id=pool_id)
    return PoolReport(
        pool_id=pool_id,
        health=_HEALTH.get(int(r.health), Health.UNKNOWN),
        total_bytes=r.total_bytes,
        used_bytes=r.used_bytes,
        available_bytes=r.available_bytes,
        mount_path=r.mount_path,
        volume_count=r.volume_count,
        error_message=r.error_message,
    )


# --- pools -----------------------------------------------------------------------


def pool_document(pool: storage.StoragePool) -> dict[str, Any]:
    doc = pool.to_dict()
    doc.pop("status", None)
    return doc


def _row_to_wire(row: HostRow, hostname: str) -> storage.PoolHostStatus:
    r = row.report
    return storage.PoolHostStatus(
        node_id=row.node_id,
        health=storage.PoolHostStatusHealth(int(r.health)),
        mount_path=r.mount_path,
        total_bytes=r.total_bytes,
        used_bytes=r.used_bytes,
        available_bytes=r.available_bytes,
        volume_count=r.volume_count,
        error_message=r.error_message,
        last_changed=timestamp(row.changed_at),
        stale=row.stale,
        assigned=row.assigned,
        hostname=hostname,
    )


def pool_status(
    aggregate: PoolAggregate | None,
    *,
    deleting: bool,
    updated_at: float,
    hostnames: dict[str, str],
) -> storage.StoragePoolStatus:
    phase = storage.StoragePoolStatusPhase(int(shown_phase(aggregate, deleting=deleting)))
    if aggregate is None:
        # Not aggregated yet (just created, or the leader is catching up).
        return storage.StoragePoolStatus(phase=phase)
    cap = aggregate.capacity
    return storage.StoragePoolStatus(
        phase=phase,
        capacity=storage.StorageCapacity(
            total_bytes=cap.total_bytes,
            used_bytes=cap.used_bytes,
            available_bytes=cap.available_bytes,
            provisioned_bytes=cap.provisioned_bytes,
        ),
        volume_count=aggregate.volume_count,
        error_message=aggregate.error_message,
        host_statuses=[_row_to_wire(r, hostnames.get(r.node_id, "")) for r in aggregate.rows],
        healthy_node_ids=list(aggregate.healthy_node_ids),
        unhealthy_node_ids=list(aggregate.unhealthy_node_ids),
        updated_at=timestamp(updated_at),
    )


# --- nodes -------------------------------------------------------------------------


def node_status(
    state: NodeState | None, *, last_heartbeat: float | None, assigned_pool_ids: list[str]
) -> compute.NodeStatus:
    if state is None:
        return compute.NodeStatus(phase=compute.NodeStatusPhase.UNKNOWN)
    heard = last_heartbeat if last_heartbeat is not None else state.last_heartbeat_at
    return compute.NodeStatus(
        phase=compute.NodeStatusPhase(int(state.phase)),
        conditions=[
            compute.NodeCondition(
                type=c.type,
                status=(
                    compute.NodeConditionStatus.TRUE
                    if c.status
                    else compute.NodeConditionStatus.FALSE
                ),
                last_transition=timestamp(c.at),
                reason=c.reason,
                message=c.message,
            )
            for c in state.conditions
        ],
        last_heartbeat=timestamp(heard),
        error_message=state.maintenance_reason,
        assigned_pool_ids=assigned_pool_ids,
    )
