"""Protobuf bytes for the load generator, without paying betterproto2 per message.

The generator must be cheaper than the server it measures, or it measures
itself. So a simulated host does not build a betterproto2 message per
heartbeat: its static part (node id, host facts) is encoded *once* by
betterproto2, and per heartbeat only the varying fields are appended with the
few lines of protobuf encoding below. ``tests/benchmarks`` checks that the
result is byte-for-byte what ``bytes(UpdateHeartbeatRequest(...))`` produces,
so the controller receives exactly what a betterproto2 client would send.
Varints are read and written by :mod:`qvdc.transport.wire`, their one home:
betterproto2, not the controller, is the reference both are checked against, so
sharing the code hides no disagreement with the protocol.

Responses are not decoded into messages either: :func:`scan_response` walks
the top-level fields and picks out the three the generator needs
(``sequence``, ``request_full_sync``, ``unsolicited``), skipping the rest.

:class:`RawCodec` makes grpclib pass these bytes through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grpclib.encoding.base import CodecBase

from protos.limiquantix.compute import v1 as compute
from qvdc.transport import wire as protobuf_wire

varint = protobuf_wire.write_varint
_read_varint = protobuf_wire.read_varint


class RawCodec(CodecBase):
    """A grpclib codec whose messages are already-encoded protobuf bytes."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return data


def _tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def _len_field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + varint(len(payload)) + payload


def _str_field(number: int, text: str) -> bytes:
    return _len_field(number, text.encode()) if text else b""


def _int_field(number: int, value: int) -> bytes:
    return _tag(number, 0) + varint(value) if value else b""


# Tags of the fields appended per heartbeat (all fixed by the wire contract).
_TAG_REPORT = _tag(11, 2)  # UpdateHeartbeatRequest.storage_pools
_DELTA_TRUE = _tag(50, 0) + b"\x01"  # UpdateHeartbeatRequest.delta = true
_TAG_SEQUENCE = _tag(51, 0)  # UpdateHeartbeatRequest.sequence
_TAG_HEALTH = _tag(2, 0)
_TAG_TOTAL = _tag(3, 0)
_TAG_USED = _tag(4, 0)
_TAG_AVAILABLE = _tag(5, 0)
_TAG_VOLUMES = _tag(7, 0)


@dataclass(frozen=True, slots=True)
class ReportValues:
    """The varying part of one ``StoragePoolStatusReport`` (what a host measured)."""

    health: int
    total_bytes: int
    used_bytes: int
    available_bytes: int
    volume_count: int
    error_message: str = ""
    #: Constant per pool and encoded by :class:`ReportEncoder`; here for the materiality rule.
    mount_path: str = ""


class ReportEncoder:
    """Encodes one pool's reports; the pool id and mount path are encoded once."""

    __slots__ = ("_mount", "_pool")

    def __init__(self, *, pool_id: str, mount_path: str) -> None:
        self._pool = _str_field(1, pool_id)
        self._mount = _str_field(6, mount_path)

    def encode(self, values: ReportValues) -> bytes:
        """The report as a length-delimited ``storage_pools`` (field 11) entry."""
        body = b"".join(
            (
                self._pool,
                _TAG_HEALTH + varint(values.health) if values.health else b"",
                _TAG_TOTAL + varint(values.total_bytes) if values.total_bytes else b"",
                _TAG_USED + varint(values.used_bytes) if values.used_bytes else b"",
                _TAG_AVAILABLE + varint(values.available_bytes) if values.available_bytes else b"",
                self._mount,
                _TAG_VOLUMES + varint(values.volume_count) if values.volume_count else b"",
                _str_field(8, values.error_message),
            )
        )
        return _TAG_REPORT + varint(len(body)) + body


def heartbeat_prefix(
    *,
    node_id: str,
    cpu_usage_percent: float = 12.5,
    memory_used_mib: int = 96 * 1024,
    memory_total_mib: int = 256 * 1024,
    running_vm_count: int = 24,
    disk_used_bytes: int = 400 * 1024**3,
    disk_total_bytes: int = 960 * 1024**3,
    load: tuple[float, float, float] = (3.5, 3.25, 3.0),
) -> bytes:
    """Fields 1-10 of a host's heartbeat (constant per host), encoded by betterproto2."""
    return bytes(
        compute.UpdateHeartbeatRequest(
            node_id=node_id,
            cpu_usage_percent=cpu_usage_percent,
            memory_used_mib=memory_used_mib,
            memory_total_mib=memory_total_mib,
            running_vm_count=running_vm_count,
            disk_used_bytes=disk_used_bytes,
            disk_total_bytes=disk_total_bytes,
            load_1m=load[0],
            load_5m=load[1],
            load_15m=load[2],
        )
    )


def heartbeat(prefix: bytes, reports: list[bytes], *, delta: bool, sequence: int) -> bytes:
    """A whole ``UpdateHeartbeatRequest``: prefix, encoded reports, delta flag, sequence."""
    parts = [prefix, *reports]
    if delta:
        parts.append(_DELTA_TRUE)
    if sequence:
        parts.append(_TAG_SEQUENCE + varint(sequence))
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ResponseView:
    """The fields of an ``UpdateHeartbeatResponse`` the generator acts on."""

    acknowledged: bool
    sequence: int
    request_full_sync: bool
    unsolicited: bool
    assigned_pools: int


def scan_response(data: bytes) -> ResponseView:
    """Read ``acknowledged`` (1), ``request_full_sync`` (5), ``assigned_pools`` (50, counted),
    ``sequence`` (51) and ``unsolicited`` (52); skip everything else."""
    acknowledged = full_sync = unsolicited = False
    sequence = pools = 0
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            if number == 51:
                sequence = value
            elif number == 1:
                acknowledged = bool(value)
            elif number == 5:
                full_sync = bool(value)
            elif number == 52:
                unsolicited = bool(value)
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
            if number == 50:
                pools += 1
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type} in response")
    return ResponseView(acknowledged, sequence, full_sync, unsolicited, pools)
