"""The one error-translation boundary between the engines and gRPC.

Handlers raise domain errors; :func:`translate` maps them to ``GRPCError``
with the matching status and a message that names the offending field.
Anything unexpected is logged once with its traceback and becomes INTERNAL;
expected conditions (etcd unreachable, deadline exceeded) are UNAVAILABLE /
DEADLINE_EXCEEDED and logged without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from qvdc.domain import errors
from qvdc.store.etcd import StoreError

log = logging.getLogger(__name__)

_STATUS: dict[type[errors.DomainError], Status] = {
    errors.InvalidArgument: Status.INVALID_ARGUMENT,
    errors.NotFound: Status.NOT_FOUND,
    errors.AlreadyExists: Status.ALREADY_EXISTS,
    errors.FailedPrecondition: Status.FAILED_PRECONDITION,
    errors.Unavailable: Status.UNAVAILABLE,
    errors.Conflict: Status.ABORTED,
}

T = TypeVar("T")


def message_of(exc: errors.DomainError) -> str:
    """The error's message, prefixed with its field unless the message already names it."""
    text = str(exc)
    field = getattr(exc, "field", None)
    if field and field not in text:
        return f"{field}: {text}"
    return text


def to_grpc_error(exc: BaseException, *, method: str) -> GRPCError:
    for cls in type(exc).__mro__:
        status = _STATUS.get(cls)
        if status is not None:
            assert isinstance(exc, errors.DomainError)
            return GRPCError(status, message_of(exc))
    if isinstance(exc, StoreError):
        log.info("%s: etcd unavailable: %s", method, exc)
        return GRPCError(Status.UNAVAILABLE, f"controller storage unavailable: {exc}")
    if isinstance(exc, TimeoutError):
        log.info("%s: timed out", method)
        return GRPCError(Status.UNAVAILABLE, "controller storage did not answer in time; retry")
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
    method: str, handler: Callable[[Any], Awaitable[Any]]
) -> Callable[[Any], Awaitable[None]]:
    """A grpclib unary-unary handler around ``handler(request) -> response``."""

    async def serve(stream: Any) -> None:
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "empty request stream")
        response = await guarded(method, lambda: handler(request))
        await stream.send_message(response)

    return serve
