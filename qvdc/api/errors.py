"""The one error-translation boundary between the engines and gRPC.

Handlers and engines raise domain errors (``qvdc/domain/errors.py``; the catalog turns
etcd failures into ``Unavailable`` / ``DeadlineExceeded`` where they happen), and only
this module turns them into ``GRPCError``: :func:`to_grpc_error` maps each domain error
class to its status (``_STATUS``, one entry per class: a test enumerates them) with a
message that names the offending field. Anything else is unexpected: logged once with
its traceback and answered INTERNAL, which is kept for real bugs. A client error (a
refused request) and expected trouble (etcd unreachable, a deadline passed) are logged
as one INFO line without a traceback, rate-limited per method and status
(``qvdc.transport.errors.RefusalLog``), so no client can flood the log.

:func:`unary` also bounds what a call does downstream by the caller's deadline
(``stream.deadline``): every etcd call the catalog makes for it gets at most the time
the caller has left (:func:`qvdc.engines.catalog.bounded_by`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from qvdc.api import limits as request_limits
from qvdc.domain import errors
from qvdc.domain.limits import Limits
from qvdc.engines import catalog
from qvdc.transport import errors as transport_errors

log = logging.getLogger(__name__)

_refusals = transport_errors.RefusalLog(log)

_STATUS: dict[type[errors.DomainError], Status] = {
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.AlreadyExists: Status.ALREADY_EXISTS,
    errors.FailedPrecondition: Status.FAILED_PRECONDITION,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.DeadlineExceeded: Status.DEADLINE_EXCEEDED,
    errors.Conflict: Status.ABORTED,
}

T = TypeVar("T")


#: Characters of a status message (UTF-8 bytes: twice that) past which it is cut: a
#: message quoting client input at length would make a reply header over what the
#: client accepts, and break its connection (and every other call on it).
MESSAGE_MAX = 300


def message_of(exc: errors.DomainError) -> str:
    """The error's message, prefixed with its field unless the message already names it,
    cut to :data:`MESSAGE_MAX` characters."""
    text = str(exc)
    field = getattr(exc, "field", None)
    if field and field not in text:
        text = f"{field}: {text}"
    if len(text) > MESSAGE_MAX or len(text.encode()) > 2 * MESSAGE_MAX:
        cut = text[:MESSAGE_MAX]
        while len(cut.encode()) > 2 * MESSAGE_MAX:
            cut = cut[: len(cut) // 2]
        text = f"{cut}… ({len(text)} characters)"
    return text


def to_grpc_error(exc: BaseException, *, method: str) -> GRPCError:
    """The ``GRPCError`` a handler failure is answered with (see the module docstring)."""
    if isinstance(exc, errors.DomainError):
        for cls in type(exc).__mro__:
            status = _STATUS.get(cls)
            if status is not None:
                message = message_of(exc)
                _refusals.refused(method, status.name, message)
                return GRPCError(status, message)
    log.error("%s failed unexpectedly", method, exc_info=exc)
    return GRPCError(Status.INTERNAL, f"internal error in {method}; see the controller log")


async def guarded(method: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run a handler body, translating every failure at this one boundary."""
    try:
        return await call()
    except (GRPCError, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise to_grpc_error(exc, method=method) from exc


def unary(
    method: str,
    handler: Callable[[Any], Awaitable[Any]],
    *,
    send_timeout: float,
    limits: Limits | None = None,
) -> Callable[[Any], Awaitable[None]]:
    """A grpclib unary-unary handler around ``handler(request) -> response``.

    Every field of the request is checked against ``limits`` (:mod:`qvdc.api.limits`)
    before the handler runs. The response must be sent within ``send_timeout`` seconds: a
    client that does not read (its HTTP/2 window full) gets UNAVAILABLE rather than
    holding the stream."""
    bound = Limits() if limits is None else limits

    async def call(request: Any) -> Any:
        request_limits.check(request, bound)
        return await handler(request)

    async def serve(stream: Any) -> None:
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "empty request stream")
        deadline = stream.deadline
        with catalog.bounded_by(deadline.time_remaining() if deadline is not None else None):
            response = await guarded(method, lambda: call(request))
        try:
            async with asyncio.timeout(send_timeout):
                await stream.send_message(response)
        except TimeoutError:
            raise to_grpc_error(send_timed_out(send_timeout), method=method) from None

    return serve


def send_timed_out(send_timeout: float) -> errors.Unavailable:
    """What a send that a client does not take within ``send_timeout`` ends with."""
    return errors.Unavailable(
        f"the client did not read the response within {send_timeout:g} s; closing the call"
    )
