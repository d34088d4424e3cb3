"""Wire messages <-> domain values and stored documents, and the heartbeat codec.

Pool and node definitions are stored as the protobuf JSON of the wire message
(``to_dict()`` / ``from_dict()``), so nothing of the operator's definition is
lost (upstream dropped every backend config on the way out). Statuses are
built from the domain aggregates and the liveness state.

:class:`HeartbeatCodec` is the gRPC server's codec: betterproto2 messages in
and out, with the two heartbeat messages (de)serialised by hand (see the
comment above it for why and how it is kept equal to betterproto2).
"""

from __future__ import annotations

import datetime as dt
import struct
import weakref
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from grpclib.encoding.proto import ProtoCodec

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
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
    aggregate: PoolAggregate | None, *, updated_at: float, hostnames: dict[str, str]
) -> storage.StoragePoolStatus:
    if aggregate is None:
        # Not aggregated yet (just created, or the leader is catching up).
        return storage.StoragePoolStatus(phase=storage.StoragePoolStatusPhase.PENDING)
    cap = aggregate.capacity
    return storage.StoragePoolStatus(
        phase=storage.StoragePoolStatusPhase(int(aggregate.phase)),
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


# --- the heartbeat codec ---------------------------------------------------------
#
# Profiled at saturation (benchmarks/RESULTS.md), betterproto2's generic
# (de)serialisation was about half of the controller's CPU per heartbeat:
# ~37 us to parse an empty delta heartbeat, ~270 us with 8 full reports, ~39 us
# to serialise the 8-id acknowledgement, and ~1 ms per unary response with 8
# pool definitions. The two heartbeat messages are therefore (de)serialised by
# the hand-written code below, which produces and consumes the very same
# betterproto2 message objects (the API does not change) and the same bytes
# (tests/benchmarks/test_bench_codec.py compares both ways with betterproto2).
# Anything unusual in a request (unknown fields, unexpected wire types, a
# truncated buffer) falls back to betterproto2 itself, so edge-case behaviour
# is exactly betterproto2's.

_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1
_DOUBLE = struct.Struct("<d")
_HEALTH_WIRE = {int(h): compute.StoragePoolStatusReportHealthStatus(int(h)) for h in Health}


class _Unusual(Exception):
    """The fast decoder met something it leaves to betterproto2."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise _Unusual("varint too long")


def _to_int64(value: int) -> int:
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


def _decode_report(data: bytes, pos: int, end: int) -> compute.StoragePoolStatusReport:
    pool_id = mount_path = error_message = ""
    health = _HEALTH_WIRE[0]
    total = used = available = volumes = last_mount = 0
    while pos < end:
        key = data[pos]
        pos += 1
        if key == 0x0A or key == 0x32 or key == 0x42:  # 1, 6, 8: strings
            n = data[pos]
            pos += 1
            if n >= 0x80:
                n, pos = _varint(data, pos - 1)
            if pos + n > end:
                raise _Unusual("truncated string")
            text = data[pos : pos + n].decode()
            pos += n
            if key == 0x0A:
                pool_id = text
            elif key == 0x32:
                mount_path = text
            else:
                error_message = text
        elif key == 0x10 or key == 0x18 or key == 0x20 or key == 0x28 or key == 0x38 or key == 0x48:
            value, pos = _varint(data, pos)
            if key == 0x20:
                used = value & _U64
            elif key == 0x28:
                available = value & _U64
            elif key == 0x18:
                total = value & _U64
            elif key == 0x10:
                signed = _to_int64(value)
                health = _HEALTH_WIRE.get(signed) or compute.StoragePoolStatusReportHealthStatus(
                    signed
                )
            elif key == 0x38:
                volumes = value & _U32
            else:
                last_mount = _to_int64(value)
        else:
            raise _Unusual(f"report field key {key}")
    if pos != end:
        raise _Unusual("report overran its length")
    return compute.StoragePoolStatusReport(
        pool_id=pool_id,
        health=health,
        total_bytes=total,
        used_bytes=used,
        available_bytes=available,
        mount_path=mount_path,
        volume_count=volumes,
        error_message=error_message,
        last_mount_unix=last_mount,
    )


def _decode_request(data: bytes) -> compute.UpdateHeartbeatRequest:
    msg = compute.UpdateHeartbeatRequest()
    reports = msg.storage_pools
    removed = msg.removed_pool_ids
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            n, pos = _varint(data, pos)
            stop = pos + n
            if stop > end:
                raise _Unusual("truncated field")
            if number == 11:
                reports.append(_decode_report(data, pos, stop))
            elif number == 1:
                msg.node_id = data[pos:stop].decode()
            elif number == 52:
                removed.append(data[pos:stop].decode())
            elif number == 12:
                msg.state_hash = data[pos:stop].decode()
            else:
                raise _Unusual(f"field {number}")
            pos = stop
        elif wire_type == 0:
            value, pos = _varint(data, pos)
            if number == 51:
                msg.sequence = value & _U64
            elif number == 50:
                msg.delta = value > 0
            elif number == 3:
                msg.memory_used_mib = value & _U64
            elif number == 4:
                msg.memory_total_mib = value & _U64
            elif number == 5:
                msg.running_vm_count = value & _U32
            elif number == 6:
                msg.disk_used_bytes = value & _U64
            elif number == 7:
                msg.disk_total_bytes = value & _U64
            else:
                raise _Unusual(f"field {number}")
        elif wire_type == 1:
            if pos + 8 > end:
                raise _Unusual("truncated double")
            (value,) = _DOUBLE.unpack_from(data, pos)
            pos += 8
            if number == 2:
                msg.cpu_usage_percent = value
            elif number == 8:
                msg.load_1m = value
            elif number == 9:
                msg.load_5m = value
            elif number == 10:
                msg.load_15m = value
            else:
                raise _Unusual(f"field {number}")
        else:
            raise _Unusual(f"wire type {wire_type}")
    return msg


def decode_heartbeat_request(data: bytes) -> compute.UpdateHeartbeatRequest:
    """``UpdateHeartbeatRequest.parse(data)``, about 5-10 times faster."""
    try:
        return _decode_request(data)
    except (_Unusual, IndexError, UnicodeDecodeError):
        return compute.UpdateHeartbeatRequest.parse(data)


def _encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]
_ID_BLOCKS: dict[tuple[str, ...], bytes] = {}
_ID_BLOCKS_MAX = 200_000
# id(message) -> (weak reference, encoding); messages define __eq__, so they are unhashable.
_POOL_BYTES: dict[int, tuple[weakref.ref[storage.StoragePool], bytes]] = {}


def _ids_block(ids: list[str]) -> bytes:
    """``assigned_pool_ids`` (field 4) encoded; memoised, since a node's set rarely changes."""
    key = tuple(ids)
    block = _ID_BLOCKS.get(key)
    if block is None:
        parts = []
        for pool_id in ids:
            raw = pool_id.encode()
            parts.append(b"\x22" + _encode_varint(len(raw)) + raw)
        block = b"".join(parts)
        if len(_ID_BLOCKS) >= _ID_BLOCKS_MAX:
            _ID_BLOCKS.clear()
        _ID_BLOCKS[key] = block
    return block


def _pool_block(pool: storage.StoragePool) -> bytes:
    """One ``assigned_pools`` entry (field 50). The definitions in heartbeat responses are
    the memoised, never-mutated messages of ``PoolMessages.definition``, so their
    encoding is memoised per message object."""
    key = id(pool)
    hit = _POOL_BYTES.get(key)
    if hit is not None and hit[0]() is pool:
        return hit[1]
    raw = bytes(pool)
    block = b"\x92\x03" + _encode_varint(len(raw)) + raw

    def forget(_: object, key: int = key) -> None:
        _POOL_BYTES.pop(key, None)

    _POOL_BYTES[key] = (weakref.ref(pool, forget), block)
    return block


def encode_heartbeat_response(msg: compute.UpdateHeartbeatResponse) -> bytes:
    """``bytes(msg)``, byte for byte, about 10 times faster."""
    parts = []
    if msg.acknowledged:
        parts.append(b"\x08\x01")
    if msg.server_time_unix:
        parts.append(b"\x10" + _encode_varint(msg.server_time_unix))
    if msg.heartbeat_interval_secs:
        parts.append(b"\x18" + _encode_varint(msg.heartbeat_interval_secs))
    if msg.assigned_pool_ids:
        parts.append(_ids_block(msg.assigned_pool_ids))
    if msg.request_full_sync:
        parts.append(b"\x28\x01")
    for pool in msg.assigned_pools:
        parts.append(_pool_block(pool))
    if msg.sequence:
        parts.append(b"\x98\x03" + _encode_varint(msg.sequence))
    if msg.unsolicited:
        parts.append(b"\xa0\x03\x01")
    parts.append(msg._unknown_fields)
    return b"".join(parts)


class HeartbeatCodec(ProtoCodec):
    """grpclib's protobuf codec, with the heartbeat messages (de)serialised by hand.

    Messages stay betterproto2 objects on both sides of the codec; every other
    message type goes through betterproto2 exactly as with grpclib's default.
    """

    def encode(self, message: Any, message_type: Any) -> bytes:
        if message_type is compute.UpdateHeartbeatResponse and (
            type(message) is compute.UpdateHeartbeatResponse
        ):
            return encode_heartbeat_response(message)
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is compute.UpdateHeartbeatRequest:
            return decode_heartbeat_request(data)
        return super().decode(data, message_type)


def server_codec() -> HeartbeatCodec:
    """The codec of the controller's gRPC server (also used by the benchmark's ceiling)."""
    return HeartbeatCodec()
