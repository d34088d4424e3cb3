"""Domain <-> etcd value bytes.

Values are JSON in the protobuf JSON mapping of the matching wire message
(camelCase names, enum names as strings, 64-bit integers as strings, RFC 3339
timestamps), so ``etcdctl get --prefix /quantix/`` is readable and a value can
be parsed by any protobuf library:

* ``pools/`` and ``nodes/`` hold the ``StoragePool`` / ``Node`` document the API
  produced; this module only extracts the fields the rules need.
* ``hoststatus/`` holds a ``PoolHostStatus``, ``poolstatus/`` a
  ``StoragePoolStatus`` (with our fields 50+), ``nodestatus/`` a ``NodeStatus``
  plus QvDC's liveness fields (``live``, ``ownerReplica``).

Decoding is tolerant (missing fields take proto defaults; numbers may be
strings or ints) and raises :class:`CodecError` on anything that is not a JSON
object, so one corrupt value never takes a controller down.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import sys
from collections.abc import Mapping
from typing import Any, TypeVar

from qvdc.domain import model
from qvdc.domain.model import (
    BackendType,
    Capacity,
    Health,
    HostPoolStatus,
    HostRow,
    NodeCondition,
    NodeId,
    NodePhase,
    NodeRecord,
    NodeState,
    PoolAggregate,
    PoolId,
    PoolPhase,
    PoolRecord,
    PoolReport,
)


class CodecError(ValueError):
    """A stored value cannot be decoded."""


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(doc: Mapping[str, Any]) -> bytes:
    return _dumps(doc).encode()


def loads(value: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except ValueError as exc:
        raise CodecError(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CodecError(f"expected a JSON object, got {type(doc).__name__}")
    return doc


@functools.lru_cache(maxsize=65_536)
def format_time(ts: float) -> str:
    """Unix seconds -> RFC 3339 UTC with millisecond precision ("" for 0).

    Memoised: every pool-status write formats the unchanged times of all its host rows.
    """
    if ts <= 0:
        return ""
    return (
        dt.datetime.fromtimestamp(ts, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def parse_time(text: Any) -> float:
    if not text:
        return 0.0
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise CodecError(f"bad timestamp {text!r}") from exc


def _int(doc: Mapping[str, Any], key: str) -> int:
    raw = doc.get(key, 0)
    try:
        return int(raw)
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{key}: not an integer: {raw!r}") from exc


_E = TypeVar("_E", Health, PoolPhase, NodePhase, BackendType)


def _enum(cls: type[_E], raw: Any, *, prefix: str = "") -> _E:
    if raw is None or raw == "":
        return cls(0)
    if isinstance(raw, int):
        return cls(raw)
    name = str(raw)
    if prefix and name.startswith(prefix):
        name = name[len(prefix) :]
    try:
        return cls[name]
    except KeyError as exc:
        raise CodecError(f"unknown {cls.__name__} {raw!r}") from exc


# --- pools/ -------------------------------------------------------------------


#: Key of the pool document marking a deletion in progress (DeletePool, qvdc.engines.deletion):
#: when it began and the hosts it waits for. Not a StoragePool field: readers ignore it.
DELETING_KEY = "qvdcDeleting"


def decode_pool(value: bytes) -> PoolRecord:
    doc = loads(value)
    spec = doc.get("spec") or {}
    backend = spec.get("backend") or {}
    return PoolRecord(
        id=PoolId(str(doc.get("id", ""))),
        name=str(doc.get("name", "")),
        backend=_enum(BackendType, backend.get("type")),
        assigned_node_ids=tuple(
            NodeId(intern_text(str(n))) for n in spec.get("assignedNodeIds") or ()
        ),
        deleting=DELETING_KEY in doc,
        document=doc,
    )


def encode_pool_document(document: Mapping[str, Any]) -> bytes:
    """The API's ``StoragePool`` JSON without its status (status lives in ``poolstatus/``)."""
    return dumps({k: v for k, v in document.items() if k != "status"})


# --- nodes/ -------------------------------------------------------------------


def decode_node(value: bytes) -> NodeRecord:
    doc = loads(value)
    return NodeRecord(
        id=NodeId(str(doc.get("id", ""))),
        hostname=str(doc.get("hostname", "")),
        management_ip=str(doc.get("managementIp", "")),
        labels=dict(doc.get("labels") or {}),
        registered_at=parse_time(doc.get("createdAt")),
        document=doc,
    )


def encode_node_document(document: Mapping[str, Any]) -> bytes:
    return dumps({k: v for k, v in document.items() if k != "status"})


# --- nodestatus/ --------------------------------------------------------------


def encode_node_state(state: NodeState) -> bytes:
    return dumps(
        {
            "phase": state.phase.name,
            "live": state.live,
            "lastHeartbeat": format_time(state.last_heartbeat_at),
            "ownerReplica": state.owner_replica,
            "errorMessage": state.maintenance_reason,
            "conditions": [
                {
                    "type": c.type,
                    "status": "TRUE" if c.status else "FALSE",
                    "lastTransition": format_time(c.at),
                    "reason": c.reason,
                    "message": c.message,
                }
                for c in state.conditions
            ],
        }
    )


def decode_node_state(node_id: str, value: bytes) -> NodeState:
    doc = loads(value)
    return NodeState(
        node_id=NodeId(node_id),
        phase=_enum(NodePhase, doc.get("phase")),
        last_heartbeat_at=parse_time(doc.get("lastHeartbeat")),
        live=bool(doc.get("live", False)),
        owner_replica=str(doc.get("ownerReplica", "")),
        maintenance_reason=str(doc.get("errorMessage", "")),
        conditions=tuple(
            NodeCondition(
                type=str(c.get("type", "")),
                status=c.get("status") == "TRUE",
                reason=str(c.get("reason", "")),
                message=str(c.get("message", "")),
                at=parse_time(c.get("lastTransition")),
            )
            for c in doc.get("conditions") or ()
        ),
    )


# --- hoststatus/ --------------------------------------------------------------


def _report_fields(report: PoolReport) -> dict[str, Any]:
    return {
        "health": report.health.name,
        "mountPath": report.mount_path,
        "totalBytes": str(report.total_bytes),
        "usedBytes": str(report.used_bytes),
        "availableBytes": str(report.available_bytes),
        "volumeCount": report.volume_count,
        "errorMessage": report.error_message,
    }


def intern_text(text: str) -> str:
    """One string object for repeated short texts (ids, a pool's mount path reported by
    every host that mounts it, repeated error messages): the controller holds one
    report per host and pool, up to a million of them."""
    return sys.intern(text) if len(text) <= 256 else text


def _report_from(pool_id: str, doc: Mapping[str, Any]) -> PoolReport:
    return PoolReport(
        pool_id=PoolId(intern_text(pool_id)),
        health=_enum(Health, doc.get("health")),
        total_bytes=_int(doc, "totalBytes"),
        used_bytes=_int(doc, "usedBytes"),
        available_bytes=_int(doc, "availableBytes"),
        mount_path=intern_text(str(doc.get("mountPath", ""))),
        volume_count=_int(doc, "volumeCount"),
        error_message=intern_text(str(doc.get("errorMessage", ""))),
    )


def encode_host_status(status: HostPoolStatus) -> bytes:
    doc = {"nodeId": status.node_id, **_report_fields(status.report)}
    doc["lastChanged"] = format_time(status.changed_at)
    return dumps(doc)


def decode_host_status(pool_id: str, node_id: str, value: bytes) -> HostPoolStatus:
    doc = loads(value)
    return HostPoolStatus(
        node_id=NodeId(intern_text(node_id)),
        report=_report_from(pool_id, doc),
        changed_at=parse_time(doc.get("lastChanged")),
    )


# --- poolstatus/ --------------------------------------------------------------


def encode_pool_status(agg: PoolAggregate, *, updated_at: float) -> bytes:
    return dumps(
        {
            "phase": agg.phase.name,
            "capacity": {
                "totalBytes": str(agg.capacity.total_bytes),
                "usedBytes": str(agg.capacity.used_bytes),
                "availableBytes": str(agg.capacity.available_bytes),
                "provisionedBytes": str(agg.capacity.provisioned_bytes),
            },
            "volumeCount": agg.volume_count,
            "errorMessage": agg.error_message,
            "hostStatuses": [
                {
                    "nodeId": row.node_id,
                    **_report_fields(row.report),
                    "lastChanged": format_time(row.changed_at),
                    "stale": row.stale,
                    "assigned": row.assigned,
                    **({"pending": True} if row.pending else {}),
                }
                for row in agg.rows
            ],
            "healthyNodeIds": list(agg.healthy_node_ids),
            "unhealthyNodeIds": list(agg.unhealthy_node_ids),
            "updatedAt": format_time(updated_at),
        }
    )


def decode_pool_status(pool_id: str, value: bytes) -> tuple[PoolAggregate, float]:
    """Returns ``(aggregate, updated_at)``."""
    doc = loads(value)
    cap = doc.get("capacity") or {}
    rows = tuple(
        HostRow(
            node_id=NodeId(intern_text(str(r.get("nodeId", "")))),
            report=_report_from(pool_id, r),
            changed_at=parse_time(r.get("lastChanged")),
            assigned=bool(r.get("assigned", False)),
            stale=bool(r.get("stale", False)),
            pending=bool(r.get("pending", False)),
        )
        for r in doc.get("hostStatuses") or ()
    )
    agg = model.PoolAggregate(
        pool_id=PoolId(pool_id),
        phase=_enum(PoolPhase, doc.get("phase")),
        capacity=Capacity(
            total_bytes=_int(cap, "totalBytes"),
            used_bytes=_int(cap, "usedBytes"),
            available_bytes=_int(cap, "availableBytes"),
            provisioned_bytes=_int(cap, "provisionedBytes"),
        ),
        volume_count=_int(doc, "volumeCount"),
        error_message=str(doc.get("errorMessage", "")),
        rows=rows,
        healthy_node_ids=tuple(NodeId(n) for n in doc.get("healthyNodeIds") or ()),
        unhealthy_node_ids=tuple(NodeId(n) for n in doc.get("unhealthyNodeIds") or ()),
    )
    return agg, parse_time(doc.get("updatedAt"))
