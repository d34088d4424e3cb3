"""The controller's gRPC codec: betterproto2, with the heartbeat messages by hand.

betterproto2's generic (de)serialisation was about half of the controller's CPU
per heartbeat (benchmarks/RESULTS.md), so ``UpdateHeartbeatRequest`` is decoded
and ``UpdateHeartbeatResponse`` encoded by the code below. It produces and
consumes the very same betterproto2 message objects (the API does not change)
and the same bytes.

Decoding is strict for every message: the fast path returns only a message it read
to the last byte; anything else it meets (an unknown field, a wrong wire type, a
truncated buffer, more than :data:`~qvdc.transport.wire.MAX_ENTRIES` entries in
``storage_pools`` or ``removed_pool_ids``) goes to :func:`qvdc.transport.wire.check`,
which raises :class:`~qvdc.transport.wire.Malformed` naming the field for any malformed
input or an over-long repeated field (stopping at its first entry too many, so 4 MiB
of reports costs the event loop about a thousand reports' decoding, not 50,000),
and only well-formed bytes reach betterproto2 (which would accept a length past the
end, or a group, as a partial message). So a request decodes to exactly what
betterproto2 makes of it, or raises ``Malformed``: never a partial parse, never
another exception. The server answers ``Malformed`` with INVALID_ARGUMENT
(:mod:`qvdc.transport.bounds`). The codec also carries the server's
``max_message_bytes``, which that module checks before a message's body is read.

The private dependency is the message layout: the field numbers and types of
the three messages below, and betterproto2's ``_unknown_fields`` (bytes it keeps
for fields it does not know, appended on encoding). ``REQUEST_FIELDS``,
``REPORT_FIELDS`` and ``RESPONSE_FIELDS`` declare which field numbers this code
handles; tests/qvdc/transport/test_heartbeat_codec.py compares them with
betterproto2's field metadata, so a field added to the proto fails the tests
until it is handled here, and compares the bytes both ways with betterproto2.

The stream's request/answer pair (ListPoolFiles, ReconnectPool: fields 53 and 54 of the
response, 53 of the request) travels in messages of its own, never in a heartbeat or its
answer: the decoder reaches field 53 only after every heartbeat field, and reads the
rare answer with :func:`decode_strictly`; the encoder writes 53/54 after the heartbeat
fields, each behind one test of an attribute that is empty in every heartbeat answer.
"""

from __future__ import annotations

import struct
import weakref
from typing import Any, TypeVar

import betterproto2
from grpclib.encoding.proto import ProtoCodec

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.transport import wire

REQUEST_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 50, 51, 52, 53})
"""``UpdateHeartbeatRequest`` field numbers :func:`decode_heartbeat_request` reads."""

REPORT_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9})
"""``StoragePoolStatusReport`` field numbers the request decoder reads."""

RESPONSE_FIELDS = frozenset({1, 2, 3, 4, 5, 50, 51, 52, 53, 54})
"""``UpdateHeartbeatResponse`` field numbers :func:`encode_heartbeat_response` writes."""

_M = TypeVar("_M", bound=betterproto2.Message)

# Module globals, bound once: the loops below call them for every field.
_varint = wire.read_varint
_to_int64 = wire.to_int64
_encode_varint = wire.write_varint
_MAX_ENTRIES = wire.MAX_ENTRIES
_U64 = wire.U64
_U32 = wire.U32
_DOUBLE = struct.Struct("<d")
_HEALTH_WIRE = {int(h): h for h in compute.StoragePoolStatusReportHealthStatus}


class _Unusual(Exception):
    """The fast decoder met something it leaves to the strict path."""


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
                if len(reports) > _MAX_ENTRIES:  # refused by the strict path, at once
                    raise _Unusual("too many reports")
            elif number == 1:
                msg.node_id = data[pos:stop].decode()
            elif number == 52:
                removed.append(data[pos:stop].decode())
                if len(removed) > _MAX_ENTRIES:
                    raise _Unusual("too many removed pool ids")
            elif number == 12:
                msg.state_hash = data[pos:stop].decode()
            elif number == 53:  # a host's answer (ListPoolFiles), never in a heartbeat
                msg.list_files_result = decode_strictly(data[pos:stop], compute.ListFilesResult)
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
    """``UpdateHeartbeatRequest.parse(data)``, about 5-10 times faster, or
    :class:`~qvdc.transport.wire.Malformed` (see the module docstring)."""
    try:
        return _decode_request(data)
    except (_Unusual, wire.Malformed, IndexError, UnicodeDecodeError):
        pass  # the strict path says what is wrong, naming the field
    return decode_strictly(data, compute.UpdateHeartbeatRequest)


def decode_strictly(data: bytes, message_type: type[_M]) -> _M:
    """``message_type.parse(data)`` once :func:`qvdc.transport.wire.check` found the bytes
    well formed; :class:`~qvdc.transport.wire.Malformed` otherwise."""
    wire.check(data, message_type)
    try:
        return message_type.parse(data)
    except Exception as exc:
        raise wire.Malformed(f"not a valid {message_type.__name__} ({type(exc).__name__})") from exc


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
    # The requests to the host (53, 54) travel alone, never in a heartbeat's answer.
    if msg.list_files is not None:
        raw = bytes(msg.list_files)
        parts.append(b"\xaa\x03" + _encode_varint(len(raw)) + raw)
    if msg.reattach_pool_ids:
        for pool_id in msg.reattach_pool_ids:
            raw = pool_id.encode()
            parts.append(b"\xb2\x03" + _encode_varint(len(raw)) + raw)
    parts.append(msg._unknown_fields)
    return b"".join(parts)


class HeartbeatCodec(ProtoCodec):
    """grpclib's protobuf codec, with the heartbeat messages (de)serialised by hand.

    Messages stay betterproto2 objects on both sides of the codec; every other
    message type is encoded by betterproto2 as with grpclib's default, and decoded by
    :func:`decode_strictly`. ``max_message_bytes`` (None: unbounded) is the largest
    request message the server reads (:mod:`qvdc.transport.bounds`).
    """

    def __init__(self, *, max_message_bytes: int | None = None) -> None:
        self.max_message_bytes = max_message_bytes

    def encode(self, message: Any, message_type: Any) -> bytes:
        if message_type is compute.UpdateHeartbeatResponse and (
            type(message) is compute.UpdateHeartbeatResponse
        ):
            return encode_heartbeat_response(message)
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is compute.UpdateHeartbeatRequest:
            return decode_heartbeat_request(data)
        if not issubclass(message_type, betterproto2.Message):
            # grpclib's health and reflection services: google.protobuf messages.
            try:
                return super().decode(data, message_type)
            except Exception as exc:
                name = message_type.__name__
                raise wire.Malformed(f"not a valid {name} ({type(exc).__name__})") from exc
        return decode_strictly(data, message_type)


def server_codec(*, max_message_bytes: int | None = None) -> HeartbeatCodec:
    """The codec of the controller's gRPC server (also used by the benchmark's ceiling)."""
    return HeartbeatCodec(max_message_bytes=max_message_bytes)
