"""connectrpc codecs for the betterproto2 messages: ``application/proto`` and ``application/json``.

connectrpc's codec is a small protocol (``name``, ``encode``, ``decode``), so the same
message classes the gRPC face uses serve the Connect face; there is no second family of
generated classes. The binary codec is the gRPC server's own
(:func:`qvdc.transport.heartbeat_codec.server_codec`: strict decoding, the hand-written
heartbeat path); the JSON codec is :mod:`qvdc.http.protojson`, which ignores unknown
fields. Either refuses malformed bytes with INVALID_ARGUMENT and the message the gRPC face
gives (``malformed UpdateHeartbeatRequest: storage_pools[0].health: ...``), logged as one
rate-limited line like every refusal.
"""

from __future__ import annotations

import logging
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from qvdc.http import protojson
from qvdc.transport import errors, heartbeat_codec, wire

log = logging.getLogger(__name__)

_refusals = errors.RefusalLog(log)


def log_refusal(what: str, code: Code, text: str) -> None:
    """One rate-limited INFO line for a refused request (``qvdc.transport.errors``)."""
    _refusals.refused(what, code.name, text)


def malformed(message_class: type[Any], exc: wire.Malformed) -> ConnectError:
    """The refusal of a request that does not decode, worded as on the gRPC face."""
    name = getattr(message_class, "__name__", "request")
    text = f"malformed {name}: {exc}"
    log_refusal(name, Code.INVALID_ARGUMENT, text)
    return ConnectError(Code.INVALID_ARGUMENT, text)


class ProtoCodec:
    """``application/proto``: the gRPC server's codec."""

    def __init__(self) -> None:
        self._codec = heartbeat_codec.server_codec()

    def name(self) -> str:
        return "proto"

    def encode(self, message: Any) -> bytes:
        return self._codec.encode(message, type(message))

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        try:
            return self._codec.decode(bytes(data), message_class)
        except wire.Malformed as exc:
            raise malformed(message_class, exc) from None


class JsonCodec:
    """``application/json``: proto3 JSON, unknown fields ignored (:mod:`qvdc.http.protojson`)."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Any) -> bytes:
        return protojson.serialize(message)

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        try:
            return protojson.parse(data, message_class)
        except wire.Malformed as exc:
            raise malformed(message_class, exc) from None
