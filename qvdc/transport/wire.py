"""Protobuf wire-format primitives: the one home of varint reading and writing.

Used by the controller's hand-written heartbeat codec
(:mod:`qvdc.transport.heartbeat_codec`) and by the benchmark's load generator.
Both are checked byte for byte against betterproto2 in the tests, so betterproto2
stays the reference for what the bytes mean.

The functions are written flat (no helper calls): the codec runs them once per
field of every heartbeat.
"""

from __future__ import annotations

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


class Unreadable(Exception):
    """Bytes a hand-written reader does not read (here: a varint over 10 bytes)."""


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """The base-128 varint at ``data[pos:]`` and the position after it.

    Raises :class:`Unreadable` for a varint longer than 64 bits and ``IndexError`` for a
    truncated one.
    """
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 64:
            raise Unreadable("varint too long")


def to_int64(value: int) -> int:
    """A decoded varint read as a signed 64-bit integer (two's complement)."""
    value &= U64
    return value - (1 << 64) if value >> 63 else value


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]


def write_varint(value: int) -> bytes:
    """The base-128 varint of ``value`` (a negative int64 as its two's complement)."""
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
