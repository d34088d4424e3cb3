"""The Connect face: every RPC of the gRPC services, served by their own handlers.

:class:`ConnectApp` reads the services' grpclib handler table (``__mapping__``, the one
the gRPC server serves) and gives connectrpc one endpoint per RPC. Each endpoint hands
the decoded request to the very grpclib handler through :class:`_Call`, a stand-in for
grpclib's server stream with the parts a handler uses (``recv_message``,
``send_message``, ``deadline``, ``metadata``, ``peer``). So validation, the field
limits (:mod:`qvdc.api.limits`), the engines and the error translation
(:mod:`qvdc.api.errors`) are the gRPC face's own; a ``GRPCError`` becomes the
``ConnectError`` of the same code and message. An RPC added to a service is served on
both faces at once.

* Unary RPCs: Connect unary (``application/json``, ``application/proto``).
* Server-streaming RPCs (``application/connect+json``, ``+proto``): the handler runs in
  its own task and each message it sends is handed to connectrpc through a one-slot
  queue, so a client that stops reading stops the handler's sends (and its send timeout
  ends the call, as on gRPC); a client that goes away cancels the handler.
* Client and bidirectional streams (the node daemon's ``StreamHeartbeat``) are gRPC
  only: a Connect bidirectional stream needs HTTP/2 end to end, which upstream's
  HTTP/1.1 clients do not have. They answer UNIMPLEMENTED naming the gRPC port.
* A path under a served service that names no RPC answers UNIMPLEMENTED with
  grpclib's message (``Method not found``), not a bare 404.

A ``Connect-Timeout-Ms`` header becomes the handler's deadline, which bounds what the
call does downstream as a gRPC deadline does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any

import grpclib.const
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from grpclib.metadata import Deadline
from multidict import MultiDict

from qvdc.http import codecs
from qvdc.kits.tasks import cancel_and_wait

log = logging.getLogger(__name__)

ASGIApp = Callable[
    [Mapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

#: HTTP status of each Connect error code (the Connect protocol's table).
HTTP_STATUS = {
    Code.CANCELED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

_STREAM_TYPES = {
    Cardinality.UNARY_UNARY: StreamType.UNARY,
    Cardinality.UNARY_STREAM: StreamType.SERVER_STREAM,
}


def code_of(status: Status) -> Code:
    """The Connect code of a gRPC status (the same names; Connect spells CANCELED)."""
    return Code.CANCELED if status is Status.CANCELLED else Code[status.name]


def connect_error(exc: GRPCError) -> ConnectError:
    """A handler's ``GRPCError`` as the ``ConnectError`` of the same code and message."""
    message = exc.message if exc.message is not None else exc.status.name.lower()
    return ConnectError(code_of(exc.status), message)


class _Peer:
    """grpclib's ``Peer`` (``addr()``, ``cert()``) of a Connect client: plain HTTP, no cert."""

    __slots__ = ("_addr",)

    def __init__(self, client: str | None) -> None:
        self._addr: tuple[str, int] | None = None
        if client:
            host, _, port = client.rpartition(":")
            if port.isdigit():
                self._addr = (host, int(port))

    def addr(self) -> tuple[str, int] | None:
        return self._addr

    def cert(self) -> None:
        return None


class _Call:
    """The parts of grpclib's server ``Stream`` a handler uses, for one Connect call."""

    __slots__ = ("_outbox", "_request", "deadline", "metadata", "peer", "response")

    def __init__(
        self,
        request: Any,
        ctx: RequestContext[Any, Any],
        *,
        outbox: asyncio.Queue[Any] | None = None,
    ) -> None:
        self._request = request
        self._outbox = outbox
        timeout_ms = ctx.timeout_ms
        self.deadline = Deadline.from_timeout(timeout_ms / 1000) if timeout_ms is not None else None
        self.metadata: MultiDict[str] = MultiDict(ctx.request_headers.allitems())
        self.peer = _Peer(ctx.client_address)
        self.response: Any = None

    async def recv_message(self) -> Any:
        request, self._request = self._request, None
        return request

    async def send_message(self, message: Any) -> None:
        if self._outbox is None:
            if self.response is not None:
                raise RuntimeError("a unary handler sent a second response")
            self.response = message
        else:
            await self._outbox.put(message)


def internal(method: str, exc: BaseException | None) -> ConnectError:
    """A handler's unexpected failure: logged with its traceback, answered as on gRPC."""
    log.error("%s failed unexpectedly", method, exc_info=exc)
    return ConnectError(Code.INTERNAL, f"internal error in {method}; see the controller log")


#: Identifies and authorizes a call before its handler runs (``qvdc.http.gate.Gate``):
#: ``gate(rpc, request, authorization=..., client=...)``, raising a ``GRPCError``.
Gate = Callable[..., None]


def _admit(gate: Gate | None, path: str, request: Any, ctx: RequestContext[Any, Any]) -> None:
    if gate is not None:
        gate(
            path,
            request,
            authorization=ctx.request_headers.get("authorization"),
            client=ctx.client_address,
        )


def _unary(
    path: str, func: Callable[[Any], Awaitable[None]], gate: Gate | None
) -> Callable[..., Awaitable[Any]]:
    method = path.rpartition("/")[2]

    async def call(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        stream = _Call(request, ctx)
        try:
            _admit(gate, path, request, ctx)
            await func(stream)
        except GRPCError as exc:
            raise connect_error(exc) from None
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, INTERNAL
            raise internal(method, exc) from None
        if stream.response is None:
            raise internal(method, None)
        return stream.response

    return call


def _server_stream(
    path: str, func: Callable[[Any], Awaitable[None]], gate: Gate | None
) -> Callable[..., AsyncIterator[Any]]:
    method = path.rpartition("/")[2]

    async def call(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            _admit(gate, path, request, ctx)  # binds the caller, which the task inherits
        except GRPCError as exc:
            raise connect_error(exc) from None
        outbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        stream = _Call(request, ctx, outbox=outbox)

        async def handle() -> None:
            await func(stream)

        task = asyncio.create_task(handle(), name=f"connect-{method}")
        try:
            while True:
                getter = asyncio.ensure_future(outbox.get())
                try:
                    await asyncio.wait((getter, task), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not getter.done():
                        getter.cancel()  # an item not yet taken stays queued
                if getter.done() and not getter.cancelled():
                    yield getter.result()
                elif not outbox.empty():
                    yield outbox.get_nowait()
                else:
                    task.result()  # the handler's outcome: a GRPCError ends the stream with it
                    return
        except GRPCError as exc:
            raise connect_error(exc) from None
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, INTERNAL
            raise internal(method, exc) from None
        finally:
            if not task.done():
                await cancel_and_wait(task)  # the client went away, or the stream failed

    return call


class _Application(ConnectASGIApplication[Any]):
    @property
    def path(self) -> str:
        return "/"


def _error_body(code: Code, message: str) -> bytes:
    return json.dumps({"code": code.value, "message": message}, ensure_ascii=False).encode()


async def send_error(send: Callable[[Any], Awaitable[None]], code: Code, message: str) -> None:
    """Answer a Connect unary-style error (HTTP status of ``code``, the JSON error body)."""
    body = _error_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": HTTP_STATUS[code],
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class ConnectApp:
    """An ASGI application serving the RPCs of ``services`` (grpclib servicers) over Connect.

    ``max_message_bytes`` bounds a request: a body whose ``Content-Length`` is larger is
    refused with RESOURCE_EXHAUSTED before any of it is read (the gRPC face's words), and
    connectrpc refuses one that grows past it while read (chunked or compressed).
    ``grpc_only_hint`` ends the UNIMPLEMENTED message of the streams served on gRPC only.
    ``gate`` identifies and authorizes each call before its handler (:mod:`qvdc.http.gate`).
    """

    def __init__(
        self,
        services: Collection[Any],
        *,
        max_message_bytes: int,
        grpc_only_hint: str = "",
        gate: Gate | None = None,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        endpoints: dict[str, Any] = {}
        self.grpc_only: dict[str, str] = {}
        self.prefixes: set[str] = set()
        for service in services:
            mapping: Mapping[str, grpclib.const.Handler] = service.__mapping__()
            for path, handler in mapping.items():
                _, service_name, name = path.split("/")
                self.prefixes.add(f"/{service_name}/")
                stream_type = _STREAM_TYPES.get(handler.cardinality)
                if stream_type is None:
                    self.grpc_only[path] = (
                        f"{name} is a {handler.cardinality.name.lower().replace('_', '-')} "
                        f"stream, served over gRPC only{grpc_only_hint}"
                    )
                    continue
                info = MethodInfo(
                    name=name,
                    service_name=service_name,
                    input=handler.request_type,
                    output=handler.reply_type,
                    idempotency_level=IdempotencyLevel.UNKNOWN,
                    stream_type=stream_type,
                )
                if stream_type is StreamType.UNARY:
                    endpoints[path] = Endpoint.unary(info, _unary(path, handler.func, gate))
                else:
                    endpoints[path] = Endpoint.server_stream(
                        info, _server_stream(path, handler.func, gate)
                    )
        self.endpoints: Mapping[str, Any] = endpoints
        self._app = _Application(
            service=self,
            endpoints=lambda _service: endpoints,
            read_max_bytes=max_message_bytes,
            codecs=[codecs.ProtoCodec(), codecs.JsonCodec()],
        )

    def serves(self, path: str) -> bool:
        """True if ``path`` is under one of the services (an RPC of it or not)."""
        service, _, _ = path[1:].partition("/")
        return f"/{service}/" in self.prefixes

    async def __call__(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        path = scope["path"]
        if path not in self.endpoints:
            hint = self.grpc_only.get(path)
            await send_error(send, Code.UNIMPLEMENTED, hint or "Method not found")
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit():
                size = int(value)
                if size > self.max_message_bytes:
                    limit = self.max_message_bytes
                    text = f"message of {size} bytes is over the limit of {limit} bytes"
                    codecs.log_refusal(path, Code.RESOURCE_EXHAUSTED, text)
                    await send_error(send, Code.RESOURCE_EXHAUSTED, text)
                    return
        await self._app(scope, receive, send)
