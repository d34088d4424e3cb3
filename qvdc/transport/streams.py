"""Opening and abandoning a grpclib client stream that never ends normally.

A long-lived stream (the node's heartbeat stream) is left by resetting it, never
by finishing it: leaving ``async with channel.request(...)`` normally makes a
grpclib ``Stream`` wait for the server's trailers, which such a stream never
sends. :func:`open_stream` therefore enters the call by hand and always exits it
"with an error", which resets the stream without waiting.

A server that refuses a call (NOT_FOUND, UNIMPLEMENTED) sends its status and
resets the stream; grpclib then reports only the reset (``StreamTerminatedError``)
to whoever is waiting, and recovers the status only in ``Stream.__aexit__``,
with the private ``Stream._maybe_raise``. :func:`raise_status` calls it earlier,
while the caller can still act on the status.

Private dependencies (grpclib 0.4.9, pinned): ``Stream.__aexit__`` skips waiting
when given an exception, and ``Stream._maybe_raise`` raises the ``GRPCError`` of
a status the stream received. tests/qvdc/transport/test_streams.py pins both.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import grpclib.client
import grpclib.const

_Send = TypeVar("_Send")
_Recv = TypeVar("_Recv")


class _StreamAbandoned(Exception):
    """Passed to a grpclib Stream's ``__aexit__`` to close it without waiting."""


@contextlib.asynccontextmanager
async def open_stream(
    channel: grpclib.client.Channel,
    path: str,
    *,
    cardinality: grpclib.const.Cardinality,
    request_type: type[_Send],
    reply_type: type[_Recv],
    timeout: float | None,
) -> AsyncIterator[grpclib.client.Stream[_Send, _Recv]]:
    """A call on ``channel`` (its request not sent yet), released on exit whatever the
    reason: reset (RST_STREAM) if still open, without waiting for trailers."""
    call = channel.request(path, cardinality, request_type, reply_type, timeout=timeout)
    await call.__aenter__()
    try:
        yield call
    finally:
        await call.__aexit__(_StreamAbandoned, _StreamAbandoned(), None)


def raise_status(call: grpclib.client.Stream[_Send, _Recv]) -> None:
    """Raise the server's ``GRPCError`` if the call received a status (in its headers or
    trailers); return if it did not."""
    maybe_raise = getattr(call, "_maybe_raise", None)
    if maybe_raise is not None:
        maybe_raise()
