"""How the server reads a request message: size checked first, bytes checked strictly.

grpclib's server reads a message (``grpclib.stream.recv_message``) by reading the
5-byte gRPC prefix, then as many bytes as the prefix declares, acknowledging them
as they come, so a client that declares 4 GiB is read until it stops sending; then
it hands the bytes to the codec, and whatever the codec raises becomes UNKNOWN with
a traceback in the log. :func:`recv_message` reads the same way but:

- refuses a declared length over the codec's ``max_message_bytes``
  (``GrpcSettings.max_message_bytes``) with RESOURCE_EXHAUSTED before reading any of
  the body (the client may have sent at most the HTTP/2 window meanwhile);
- answers a body the codec finds malformed (:class:`~qvdc.transport.wire.Malformed`),
  a compressed message (the server announces no compression) or a message cut short
  by the end of the stream with INVALID_ARGUMENT;
- logs each refusal as one rate-limited INFO line (:mod:`qvdc.transport.errors`).

A codec without a ``max_message_bytes`` attribute (any server but the controller's)
gets grpclib's own function, unchanged. :func:`install` points the names
``grpclib.server.recv_message`` and ``grpclib.client.recv_message`` (what
``grpclib.server.Stream.recv_message`` and ``grpclib.client.Stream.recv_message`` call)
at :func:`recv_message`; the controller's server installs it when built
(:mod:`qvdc.transport.serving`). tests/qvdc/transport/test_serving.py pins grpclib's
function and both calls, and fails if any changes.

The client side matters where the controller asks a peer it does not trust for an
answer: :func:`bounded_channel` (upstream's agent on a host's :9090,
``qvdc.api.pool_ops``) refuses an answer declared over its bound before reading its
body, instead of buffering whatever size the peer declares.
"""

from __future__ import annotations

import logging
from typing import Any

import grpclib.client
import grpclib.server
import grpclib.stream
from grpclib.const import Status
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import GRPCError

from qvdc.transport import errors, wire

log = logging.getLogger(__name__)

_refusals = errors.RefusalLog(log)

ORIGINAL = grpclib.stream.recv_message
"""grpclib's reader, which :func:`recv_message` replaces (and calls for other codecs)."""


def _refuse(status: Status, message: str, message_type: Any) -> GRPCError:
    _refusals.refused(getattr(message_type, "__name__", "request"), status.name, message)
    return GRPCError(status, message)


async def recv_message(stream: Any, codec: Any, message_type: Any) -> Any:
    """One request message from ``stream`` (grpclib's protocol stream), decoded by
    ``codec``; None at the end of the stream. See the module docstring."""
    limit = getattr(codec, "max_message_bytes", None)
    if limit is None:
        return await ORIGINAL(stream, codec, message_type)
    try:
        meta = await stream.recv_data(5)
    except AssertionError:  # grpclib's Buffer: the stream ended inside the prefix
        raise _refuse(
            Status.INVALID_ARGUMENT, "the stream ended inside a message prefix", message_type
        ) from None
    if not meta:
        return None
    size = int.from_bytes(meta[1:5], "big")
    if size > limit:
        raise _refuse(
            Status.RESOURCE_EXHAUSTED,
            f"message of {size} bytes is over the limit of {limit} bytes",
            message_type,
        )
    if meta[0]:
        raise _refuse(
            Status.INVALID_ARGUMENT,
            "compressed messages are not accepted (no grpc-encoding is supported)",
            message_type,
        )
    try:
        body = await stream.recv_data(size)
    except AssertionError:  # grpclib's Buffer: the stream ended before ``size`` bytes
        body = b""
    if len(body) != size:
        raise _refuse(
            Status.INVALID_ARGUMENT,
            f"the stream ended inside a message of {size} declared bytes",
            message_type,
        )
    try:
        return codec.decode(body, message_type)
    except wire.Malformed as exc:
        name = getattr(message_type, "__name__", "request")
        raise _refuse(Status.INVALID_ARGUMENT, f"malformed {name}: {exc}", message_type) from None


_READERS = (grpclib.server, grpclib.client)
"""The modules whose ``recv_message`` name their streams call (server and client)."""


def installed() -> bool:
    """True if grpclib's server and client read messages with :func:`recv_message`."""
    return all(getattr(m, "recv_message", None) is recv_message for m in _READERS)


def install() -> None:
    """Make grpclib's server and client read messages with :func:`recv_message`
    (idempotent; other codecs still get grpclib's own reader).

    Raises ``RuntimeError`` if grpclib no longer reads them with the function this
    module was written against: a bound that is silently not enforced is worse than
    a server that does not start."""
    for module in _READERS:
        current = getattr(module, "recv_message", None)
        if current is not recv_message and current is not ORIGINAL:
            raise RuntimeError(
                f"{module.__name__} no longer reads messages with "
                "grpclib.stream.recv_message; qvdc.transport.bounds cannot bound their size"
            )
    for module in _READERS:
        setattr(module, "recv_message", recv_message)  # noqa: B010 - not exported


def uninstall() -> None:
    """Put grpclib's own reader back (for tests)."""
    for module in _READERS:
        setattr(module, "recv_message", ORIGINAL)  # noqa: B010 - not exported


class BoundedCodec(ProtoCodec):
    """grpclib's protobuf codec with a ``max_message_bytes``: answers read through it
    are bounded by :func:`recv_message`."""

    def __init__(self, *, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes


def bounded_channel(host: str, port: int, *, max_message_bytes: int) -> grpclib.client.Channel:
    """A plain-text channel whose answers over ``max_message_bytes`` are refused at their
    prefix with RESOURCE_EXHAUSTED ("message of N bytes is over the limit of L bytes")."""
    install()
    return grpclib.client.Channel(
        host, port, codec=BoundedCodec(max_message_bytes=max_message_bytes)
    )
