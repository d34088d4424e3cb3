"""Protobuf wire format: varints, and the strict check of a request's bytes.

Varints are read and written here only (the controller's heartbeat codec,
:mod:`qvdc.transport.heartbeat_codec`, and the benchmark's load generator use them).
Both functions are written flat (no helper calls): the codec runs them once per field
of every heartbeat.

- :func:`read_varint` refuses a varint over 64 bits (more than 10 bytes, or a 10th
  byte above 1) with :class:`Malformed`; a truncated one raises ``IndexError``.
- :func:`write_varint` never writes an over-long varint: a value above 2^64-1
  saturates to 2^64-1 and one below -2^63 to -2^63 (a saturated count is the least
  wrong number a client can be told; the controller's own sums are bounded before
  they get here).

betterproto2 parses leniently: a group wire type, a length past the end of the
buffer or a field with the wrong wire type becomes ``None``, a partial value or a
``KeyError``. :func:`check` walks a request's bytes against its message class's
field metadata first (nested messages and map entries too) and raises
:class:`Malformed` naming the field path for any of those, so what betterproto2
then parses is well formed. Unknown fields of wire types 0, 1, 2 and 5 are skipped
as protobuf requires; groups (3, 4) are refused anywhere. The private dependency is
betterproto2's class metadata (``_betterproto``: ``field_name_by_number``,
``meta_by_field_name``, ``cls_by_field``), pinned by
tests/qvdc/transport/test_wire.py.
"""

from __future__ import annotations

from typing import Any

import betterproto2

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
_I64_MIN = -(1 << 63)

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

#: Nesting depth :func:`check` follows before it gives up (the protos nest far less).
MAX_DEPTH = 64


class Malformed(ValueError):
    """Bytes that are not a well-formed encoding of the expected message.

    ``field`` is the proto field path where reading failed (empty: the message itself).
    """

    def __init__(self, reason: str, *, field: str = "") -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.reason = reason
        self.field = field


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``data[pos:]`` and the position after it.

    Raises :class:`Malformed` for a varint over 64 bits and ``IndexError`` for a
    truncated one.
    """
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        if byte < 0x80:
            return result | (byte << shift), pos
        result |= (byte & 0x7F) << shift
        shift += 7
        if shift == 63:  # the 10th byte holds the 64th bit and nothing else
            byte = data[pos]
            pos += 1
            if byte > 1:
                raise Malformed("varint over 64 bits")
            return result | (byte << 63), pos


def to_int64(value: int) -> int:
    """A decoded varint read as a signed 64-bit integer (two's complement)."""
    value &= U64
    return value - (1 << 64) if value >> 63 else value


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]


def write_varint(value: int) -> bytes:
    """The base-128 varint of ``value`` (a negative int64 as its two's complement),
    saturated to 64 bits (see the module docstring)."""
    if value < 0:
        value = (value if value >= _I64_MIN else _I64_MIN) + (1 << 64)
    if value < 0x80:
        return _SMALL_VARINTS[value]
    if value > U64:
        value = U64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# ---------------------------------------------------------------- the strict check

_SCALAR_WIRE = {
    "enum": VARINT,
    "bool": VARINT,
    "int32": VARINT,
    "int64": VARINT,
    "uint32": VARINT,
    "uint64": VARINT,
    "sint32": VARINT,
    "sint64": VARINT,
    "double": I64,
    "fixed64": I64,
    "sfixed64": I64,
    "float": I32,
    "fixed32": I32,
    "sfixed32": I32,
}
_WIRE_NAMES = {
    VARINT: "varint",
    I64: "64-bit",
    LEN: "length-delimited",
    SGROUP: "group start",
    EGROUP: "group end",
    I32: "32-bit",
}


class _Field:
    """What :func:`check` needs of one field: its name, wire type, and how to read it."""

    __slots__ = ("name", "packed", "repeated", "string", "sub", "wire")

    def __init__(
        self, *, name: str, wire: int, packed: int | None, string: bool, sub: Any, repeated: bool
    ) -> None:
        self.name = name
        self.wire = wire
        self.packed = packed  # a repeated scalar may also come packed: its element wire type
        self.string = string
        self.sub = sub  # the message class (a map's entry class) inside a LEN field
        self.repeated = repeated


_SCHEMAS: dict[Any, dict[int, _Field]] = {}


def _field(name: str, meta: betterproto2.FieldMetadata, sub: Any) -> _Field:
    kind = meta.proto_type
    if kind in _SCALAR_WIRE:
        wire = _SCALAR_WIRE[kind]
        return _Field(
            name=name,
            wire=wire,
            packed=wire if meta.repeated else None,
            string=False,
            sub=None,
            repeated=bool(meta.repeated),
        )
    if kind == "map":  # a repeated entry message (key 1, value 2)
        return _Field(name=name, wire=LEN, packed=None, string=False, sub=sub, repeated=True)
    if kind == "message":
        return _Field(
            name=name,
            wire=LEN,
            packed=None,
            string=False,
            sub=meta.unwrap() if meta.unwrap else sub,
            repeated=bool(meta.repeated),
        )
    if kind in ("string", "bytes"):
        return _Field(
            name=name,
            wire=LEN,
            packed=None,
            string=kind == "string",
            sub=None,
            repeated=bool(meta.repeated),
        )
    raise TypeError(f"unhandled proto type {kind!r} of field {name}")


def _schema(cls: Any) -> dict[int, _Field]:
    """Field number -> :class:`_Field` of a message class (a map's entry class too)."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        info = cls._betterproto
        schema = _SCHEMAS[cls] = {
            number: _field(name, info.meta_by_field_name[name], info.cls_by_field.get(name))
            for number, name in info.field_name_by_number.items()
        }
    return schema


#: Entries one repeated field (or map) of one message may have, and entries of all
#: repeated fields of a request together. Checked while the bytes are walked, before
#: betterproto2 builds an object per entry: decoding 10,000 map entries takes it about
#: 0.3 s of the event loop, which every other client would wait through. The API's
#: limits (``qvdc.api.limits``) are tighter and name the bound; these only keep the
#: decoding itself short.
MAX_ENTRIES = 1024
MAX_TOTAL_ENTRIES = 16 * 1024


def check(data: bytes, message_type: Any) -> None:
    """Raise :class:`Malformed` unless ``data`` is a well-formed ``message_type`` with at
    most :data:`MAX_ENTRIES` entries per repeated field and :data:`MAX_TOTAL_ENTRIES` in
    all."""
    _check(data, 0, len(data), message_type, 0, [MAX_TOTAL_ENTRIES])


def _check(data: bytes, pos: int, end: int, cls: Any, depth: int, budget: list[int]) -> None:
    if depth > MAX_DEPTH:
        raise Malformed(f"nested more than {MAX_DEPTH} levels deep")
    schema = _schema(cls)
    seen: dict[int, int] = {}
    while pos < end:
        number = 0
        field: _Field | None = None
        try:
            key, pos = read_varint(data, pos)
            number, wire_type = key >> 3, key & 7
            if number == 0:
                raise Malformed("field number 0")
            field = schema.get(number)
            if wire_type not in _WIRE_NAMES or wire_type in (SGROUP, EGROUP):
                raise Malformed(f"wire type {wire_type} ({_WIRE_NAMES.get(wire_type, 'invalid')})")
            if (
                field is not None
                and wire_type != field.wire
                and not (wire_type == LEN and field.packed is not None)
            ):
                raise Malformed(
                    f"wire type {wire_type} ({_WIRE_NAMES[wire_type]}), expected "
                    f"{field.wire} ({_WIRE_NAMES[field.wire]})"
                )
            if wire_type == VARINT:
                _, pos = read_varint(data, pos)
            elif wire_type == I64:
                pos += 8
            elif wire_type == I32:
                pos += 4
            else:
                n, pos = read_varint(data, pos)
                if pos + n > end:
                    raise Malformed(f"length {n} declared, {end - pos} bytes left")
                start, pos = pos, pos + n
                if field is not None and field.wire == LEN:
                    _check_len(data, start, pos, field, depth, budget)
                elif field is not None and field.packed is not None:
                    _check_packed(data, start, pos, field.packed)
            if pos > end:
                raise Malformed("truncated")
        except IndexError:
            raise Malformed("truncated", field=_path(field, number, seen)) from None
        except Malformed as exc:
            inner = _path(field, number, seen)
            path = f"{inner}.{exc.field}" if inner and exc.field else inner or exc.field
            raise Malformed(exc.reason, field=path) from None
        if field is not None and field.repeated:
            count = seen[number] = seen.get(number, 0) + 1
            budget[0] -= 1
            if count > MAX_ENTRIES or budget[0] < 0:
                bound = (
                    f"at most {MAX_ENTRIES} entries, got more"
                    if count > MAX_ENTRIES
                    else f"at most {MAX_TOTAL_ENTRIES} repeated entries in a request, got more"
                )
                raise Malformed(bound, field=field.name)


def _path(field: _Field | None, number: int, seen: dict[int, int]) -> str:
    if field is None:
        return f"field {number}" if number else ""
    if field.repeated and field.sub is not None:
        return f"{field.name}[{seen.get(number, 0)}]"
    return field.name


def _check_len(
    data: bytes, start: int, stop: int, field: _Field, depth: int, budget: list[int]
) -> None:
    if field.string:
        try:
            data[start:stop].decode()
        except UnicodeDecodeError:
            raise Malformed("invalid UTF-8") from None
    elif field.sub is not None:
        _check(data, start, stop, field.sub, depth + 1, budget)


def _check_packed(data: bytes, pos: int, end: int, wire_type: int) -> None:
    if wire_type == VARINT:
        while pos < end:
            _, pos = read_varint(data, pos)
        if pos != end:
            raise Malformed("packed varints overrun their length")
    elif (end - pos) % (8 if wire_type == I64 else 4):
        raise Malformed("packed fixed-size values do not fill their length")
