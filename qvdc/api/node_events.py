"""ListNodeEvents and StreamEvents: the event history (``qvdc.engines.eventstore``).

**ListNodeEvents** (node_id, types, limit): the node's kept events, newest first, as
``NodeEvent`` (id = the event id also in the log line, reason = the event name such as
``node.offline``, type NORMAL / WARNING / ERROR from the level it was logged at, ERROR
for a transition *to* ERROR). ``limit`` 0 means :data:`DEFAULT_LIMIT`; at most
:data:`MAX_LIMIT`; negative or over it is INVALID_ARGUMENT naming ``limit``. ``types``
keeps only those types. An unknown node is NOT_FOUND (a removed node's events may stay
until their retention ends, but are not listed). etcd unreachable: UNAVAILABLE.

**StreamEvents** (node_id, types): every event written from now on, as ``SystemEvent``
(source ``qvdc``, resource_id the pool for pool events else the node, metadata with
``event``, ``node_id``, ``hostname``, ``pool_id``, ``pool_name``, ``replica`` and the
event's fields),
followed from etcd's watch. The first message is a marker, not an event: type
SERVICE_STARTED, empty id, ``metadata.marker = "subscribed"``, sent once the watch is
set up, so a client knows from when it sees everything. ``node_id`` keeps the events
naming that node (its node.* and host.health events); ``types`` keeps those
SystemEvent types. A caller that falls ``events.subscriber_queue`` events behind, or
more callers than ``events.max_subscribers``, get RESOURCE_EXHAUSTED; one that does not
read a message within the send timeout gets UNAVAILABLE. The others are never slowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import grpclib.server
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from qvdc.api import convert
from qvdc.api import limits as request_limits
from qvdc.api.errors import guarded, send_timed_out, to_grpc_error
from qvdc.api.rpc_groups import Rpc
from qvdc.domain import errors
from qvdc.domain.limits import Limits
from qvdc.engines.catalog import Catalog
from qvdc.engines.eventstore import EventStore, StoredEvent, TooManySubscribers
from qvdc.engines.view import ClusterView
from qvdc.store.etcd import StoreError

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

_NodeType = compute.NodeEventEventType
_SysType = compute.SystemEventEventType
_Severity = compute.SystemEventSeverity
_BAD_STATES = frozenset({"ERROR", "FAILED"})
_GOOD_STATES = frozenset({"READY", "HEALTHY"})
#: Events with a SystemEvent type of their own.
_NAMED = {
    "pool.created": _SysType.STORAGE_POOL_CREATED,
    "pool.deleted": _SysType.STORAGE_POOL_DELETED,
    "leader.acquired": _SysType.SERVICE_STARTED,
    "leader.lost": _SysType.SERVICE_STOPPED,
    "liveness.unfrozen": _SysType.SYSTEM_RECOVERED,
}


def severity(event: StoredEvent) -> _Severity:
    if event.level >= logging.ERROR or event.fields.get("to") in _BAD_STATES:
        return _Severity.ERROR
    if event.level >= logging.WARNING:
        return _Severity.WARNING
    return _Severity.INFO


def node_event(event: StoredEvent) -> compute.NodeEvent:
    level = severity(event)
    kind = (
        _NodeType.ERROR
        if level is _Severity.ERROR
        else _NodeType.WARNING
        if level is _Severity.WARNING
        else _NodeType.NORMAL
    )
    return compute.NodeEvent(
        id=event.id,
        node_id=event.node_id,
        type=kind,
        reason=event.name,
        message=event.message,
        timestamp=convert.timestamp(event.at),
    )


def system_type(event: StoredEvent) -> _SysType:
    """The SystemEvent type of an event: recoveries SYSTEM_RECOVERED, transitions to an
    error ERROR_OCCURRED, the other transitions WARNING_ISSUED."""
    special = _NAMED.get(event.name)
    if special is not None:
        return special
    if event.name == "node.recovered" or event.fields.get("to") in _GOOD_STATES:
        return _SysType.SYSTEM_RECOVERED
    if severity(event) is _Severity.ERROR:
        return _SysType.ERROR_OCCURRED
    return _SysType.WARNING_ISSUED


def system_event(event: StoredEvent) -> compute.SystemEvent:
    metadata = dict(event.fields)
    metadata["event"] = event.name
    for name in ("node_id", "hostname", "pool_id", "pool_name", "replica"):
        value = getattr(event, name)
        if value:
            metadata[name] = value
    return compute.SystemEvent(
        id=event.id,
        timestamp=convert.timestamp(event.at),
        type=system_type(event),
        severity=severity(event),
        source="qvdc",
        message=event.message,
        resource_id=_resource(event),
        metadata=metadata,
    )


def _resource(event: StoredEvent) -> str:
    """What a SystemEvent is about: the pool for pool.*, else the node, else the replica."""
    if event.name.startswith("pool.") and event.pool_id:
        return event.pool_id
    return event.node_id or event.pool_id or event.replica


class NodeEvents:
    """The RPC group (:mod:`qvdc.api.rpc_groups`)."""

    def __init__(
        self,
        *,
        events: EventStore,
        catalog: Catalog,
        view: ClusterView,
        send_timeout: float,
        limits: Limits,
        replica_id: str,
    ) -> None:
        self._events = events
        self._catalog = catalog
        self._view = view
        self._send_timeout = send_timeout
        self._limits = limits
        self._replica = replica_id

    def rpcs(self) -> Sequence[Rpc]:
        return [
            Rpc(
                "ListNodeEvents",
                self.list_node_events,
                compute.ListNodeEventsRequest,
                compute.ListNodeEventsResponse,
            ),
            Rpc(
                "StreamEvents",
                self.stream_events,
                compute.StreamEventsRequest,
                compute.SystemEvent,
                Cardinality.UNARY_STREAM,
            ),
        ]

    async def _require_node(self, node_id: str, *, field: str) -> None:
        if not self._view.has_node(node_id):
            await self._catalog.catch_up()
        if not self._view.has_node(node_id):
            raise errors.NotFound(f"node {node_id!r} not found", field=field)

    async def list_node_events(
        self, request: compute.ListNodeEventsRequest
    ) -> compute.ListNodeEventsResponse:
        if not request.node_id:
            raise errors.InvalidArgument("is required", field="node_id")
        if request.limit < 0:
            raise errors.InvalidArgument(
                f"must not be negative, got {request.limit}", field="limit"
            )
        if request.limit > MAX_LIMIT:
            raise errors.InvalidArgument(f"at most {MAX_LIMIT}, got {request.limit}", field="limit")
        limit = request.limit or DEFAULT_LIMIT
        await self._require_node(request.node_id, field="node_id")
        try:
            history = await self._events.node_history(request.node_id)
        except StoreError as exc:
            raise errors.Unavailable(f"the event history cannot be read: {exc}") from exc
        wanted = {int(t) for t in request.types}
        out = []
        for event in history:
            message = node_event(event)
            if wanted and int(message.type) not in wanted:
                continue
            out.append(message)
            if len(out) >= limit:
                break
        return compute.ListNodeEventsResponse(events=out)

    async def stream_events(
        self, stream: grpclib.server.Stream[compute.StreamEventsRequest, compute.SystemEvent]
    ) -> None:
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "empty request stream")

        async def check() -> None:
            request_limits.check(request, self._limits)
            if request.node_id:
                await self._require_node(request.node_id, field="node_id")

        await guarded("StreamEvents", check)
        wanted = {int(t) for t in request.types}
        node_id = request.node_id
        try:
            async with self._events.subscribe() as sub:
                marker = compute.SystemEvent(
                    type=_SysType.SERVICE_STARTED,
                    source="qvdc",
                    message=f"subscribed to the events of {node_id or 'every node and pool'} "
                    f"on replica {self._replica}",
                    resource_id=node_id,
                    metadata={"marker": "subscribed", "replica": self._replica},
                )
                await self._send(stream, marker)
                while True:
                    event = await sub.next()
                    if event is None:
                        raise self._behind()
                    if node_id and event.node_id != node_id:
                        continue
                    message = system_event(event)
                    if wanted and int(message.type) not in wanted:
                        continue
                    await self._send(stream, message)
        except TooManySubscribers as exc:
            raise GRPCError(Status.RESOURCE_EXHAUSTED, str(exc)) from None
        except StoreError as exc:
            raise to_grpc_error(
                errors.Unavailable(f"the event history cannot be followed: {exc}"),
                method="StreamEvents",
            ) from None

    async def _send(self, stream: Any, message: compute.SystemEvent) -> None:
        """Send within the send timeout. A send is never cut short for an overflow (a
        message half sent cannot be followed by a status): the overflow ends the call
        after the send, and a caller that reads nothing at all meets the send timeout."""
        try:
            async with asyncio.timeout(self._send_timeout):
                await stream.send_message(message)
        except TimeoutError:
            raise to_grpc_error(send_timed_out(self._send_timeout), method="StreamEvents") from None

    def _behind(self) -> GRPCError:
        return GRPCError(
            Status.RESOURCE_EXHAUSTED,
            f"this stream fell {self._events.settings.subscriber_queue} events behind "
            "(events.subscriber_queue) and was ended; reconnect, and read what was missed "
            "with ListNodeEvents",
        )
