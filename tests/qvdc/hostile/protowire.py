"""Protobuf bytes by hand, and the field tree of the generated request classes.

The hostile tests build what no well-behaved client library would write (wrong wire
types, group wire types, lengths that promise more than is sent, varints over 64
bits), so the bytes are assembled here, from the field numbers betterproto2's class
metadata gives. :func:`fields` walks a request class's fields recursively, so a field
added to a proto is fuzzed without a change here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import betterproto2

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
U64_MAX = 2**64 - 1

_VARINT_TYPES = frozenset(
    {"int32", "int64", "uint32", "uint64", "sint32", "sint64", "bool", "enum"}
)
_I64_TYPES = frozenset({"double", "fixed64", "sfixed64"})
_I32_TYPES = frozenset({"float", "fixed32", "sfixed32"})


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative ``value`` of any size (over 64 bits too)."""
    assert value >= 0
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, LEN) + varint(len(payload)) + payload


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a request, reached from the request by ``path`` (field names;
    a repeated message or map is entered through its first entry)."""

    path: tuple[str, ...]
    numbers: tuple[int, ...]
    meta: betterproto2.FieldMetadata
    python_type: Any

    @property
    def leaf(self) -> str:
        return self.path[-1]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def kind(self) -> str:
        return str(self.meta.proto_type)

    @property
    def repeated(self) -> bool:
        return bool(self.meta.repeated)

    def wire_types(self) -> frozenset[int]:
        """The wire types a conforming parser accepts for this field."""
        if self.kind in ("string", "bytes", "message", "map"):
            return frozenset({LEN})
        if self.kind in _VARINT_TYPES:
            base = VARINT
        elif self.kind in _I64_TYPES:
            base = I64
        elif self.kind in _I32_TYPES:
            base = I32
        else:
            raise AssertionError(f"unhandled proto type {self.kind!r} of {self.dotted}")
        return frozenset({base, LEN}) if self.repeated else frozenset({base})


def fields(cls: type[betterproto2.Message], *, depth: int = 6) -> Iterator[Field]:
    yield from _walk(cls, (), (), depth)


def _walk(
    cls: type[betterproto2.Message], path: tuple[str, ...], numbers: tuple[int, ...], depth: int
) -> Iterator[Field]:
    info: Any = cls._betterproto  # type: ignore[arg-type]  # betterproto2 class metadata
    for name, meta in info.meta_by_field_name.items():
        sub = info.cls_by_field.get(name)
        field = Field((*path, name), (*numbers, meta.number), meta, sub)
        yield field
        if meta.proto_type == "message" and depth > 1:
            yield from _walk(sub, field.path, field.numbers, depth - 1)


def wrap(numbers: tuple[int, ...], leaf_bytes: bytes) -> bytes:
    """``leaf_bytes`` (one encoded field of the innermost message) nested in the
    length-delimited parents ``numbers[:-1]``, outermost first."""
    data = leaf_bytes
    for number in reversed(numbers[:-1]):
        data = length_delimited(number, data)
    return data


def mutated(base: betterproto2.Message, path: tuple[str, ...], value: object) -> bytes:
    """``base`` with the field at ``path`` set to ``value``, encoded by betterproto2
    (which writes an out-of-range enum integer as it is given)."""
    message = type(base).parse(bytes(base))
    target: Any = message
    for name in path[:-1]:
        current = getattr(target, name)
        sub_cls = type(target)._betterproto.cls_by_field[name]
        if isinstance(current, list):
            if not current:
                current.append(sub_cls())
            current = current[0]
        elif current is None:
            current = sub_cls()
            setattr(target, name, current)
        target = current
    setattr(target, path[-1], value)
    return bytes(message)


# ---------------------------------------------------------------- strict reading


class Malformed(ValueError):
    """Bytes a strict protobuf reader refuses."""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A varint of at most 10 bytes whose value fits 64 bits, else :class:`Malformed`."""
    value = shift = 0
    for i in range(10):
        if pos >= len(data):
            raise Malformed("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if value > U64_MAX:
                raise Malformed(f"varint over 64 bits: {value}")
            return value, pos
        if i == 9:
            break
    raise Malformed("varint longer than 10 bytes")


def scan(data: bytes) -> dict[int, list[int | bytes]]:
    """Every field of one message: number -> values (ints for varints and fixed
    types, bytes for length-delimited), read strictly."""
    out: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = read_varint(data, pos)
        elif wire_type == LEN:
            n, pos = read_varint(data, pos)
            if pos + n > len(data):
                raise Malformed("truncated length-delimited field")
            value, pos = data[pos : pos + n], pos + n
        elif wire_type == I64:
            value, pos = int.from_bytes(data[pos : pos + 8], "little"), pos + 8
        elif wire_type == I32:
            value, pos = int.from_bytes(data[pos : pos + 4], "little"), pos + 4
        else:
            raise Malformed(f"wire type {wire_type}")
        out.setdefault(number, []).append(value)
    return out
