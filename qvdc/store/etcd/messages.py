"""The store's records to etcd's request messages and back, under one key prefix.

Callers name keys relative to the configured prefix; etcd sees absolute keys.
:class:`Messages` adds the prefix on the way in and strips it on the way out,
and builds the compare and operation messages of a transaction.
"""

from __future__ import annotations

from typing import Any

from aetcd import rpc

from qvdc.store import records

_COMPARE_RESULTS: dict[str, Any] = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}
_COMPARE_TARGETS: dict[str, Any] = {
    "mod_revision": rpc.Compare.MOD,
    "version": rpc.Compare.VERSION,
    "value": rpc.Compare.VALUE,
}


def range_end(prefix: bytes) -> bytes:
    """The ``range_end`` selecting every key that starts with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # every byte is 0xff: to the end of the keyspace


class Messages:
    """Message building and decoding for one prefix."""

    __slots__ = ("prefix",)

    def __init__(self, *, prefix: bytes) -> None:
        self.prefix = prefix

    def key(self, key: str) -> bytes:
        return self.prefix + key.encode()

    def key_value(self, kv: Any) -> records.KeyValue:
        return records.KeyValue(
            key=kv.key[len(self.prefix) :].decode(),
            value=kv.value,
            mod_revision=kv.mod_revision,
            create_revision=kv.create_revision,
            version=kv.version,
        )

    def watch_event(self, event: Any) -> records.WatchEvent:
        kv = event.kv
        key = kv.key[len(self.prefix) :].decode()
        if event.type == rpc.Event.DELETE:
            return records.WatchEvent(
                kind="delete", key=key, value=b"", mod_revision=kv.mod_revision
            )
        return records.WatchEvent(
            kind="put",
            key=key,
            value=kv.value,
            mod_revision=kv.mod_revision,
            create_revision=kv.create_revision,
            version=kv.version,
        )

    def compare(self, compare: records.Compare) -> Any:
        message = rpc.Compare(
            key=self.key(compare.key),
            result=_COMPARE_RESULTS[compare.op],
            target=_COMPARE_TARGETS[compare.target],
        )
        operand = compare.operand
        if compare.target == "value":
            if not isinstance(operand, bytes):
                raise TypeError(f"a value compare needs bytes, got {operand!r}")
            message.value = operand
        else:
            if isinstance(operand, bytes):
                raise TypeError(f"a {compare.target} compare needs an int, got {operand!r}")
            setattr(message, compare.target, operand)
        return message

    def request_op(self, op: records.Op) -> Any:
        if op.kind == "put":
            put = rpc.PutRequest(key=self.key(op.key), value=op.value, lease=op.lease or 0)
            return rpc.RequestOp(request_put=put)
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self.key(op.key)))
