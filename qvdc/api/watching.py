"""The watch RPCs: WatchNode, WatchNodes (NodeService) and WatchPools (StoragePoolService,
a QvDC addition), served from this replica's watch-fed view.

Semantics, for a client:

* **Initial state first.** ``WatchNode`` sends the node as it is now; ``WatchNodes`` an
  ``ADDED`` for every node whose labels include all of the request's ``labels``;
  ``WatchPools`` an ``ADDED`` for every pool (or only ``pool_id``) matching ``labels``,
  each as ``GetPool`` shows it: definition with secrets redacted (never a CHAP password
  or Ceph key, only their ``…_set`` markers), and the status with its per-host rows.
* **Then changes, as they happen**: ``MODIFIED`` when what the RPC would show changed,
  ``ADDED`` / ``DELETED`` when an object appears, disappears, or starts or stops matching
  the labels (a ``DELETED`` carries the id and the name only: the object is gone). The
  view follows etcd's watch (:class:`qvdc.engines.view.ClusterView`, fed by
  :mod:`qvdc.store.watching`), so a change made through any replica is seen on every
  replica's watches. Bursts are coalesced: several changes of one node or pool before
  the client has read are sent once, as it is at send time; a message equal to the last
  one sent for that object is not sent again. What a heartbeat alone changes (a node's
  ``last_heartbeat``) is not a change: it is sent with the next real one.
* **Endings.** ``WatchNode`` on an unknown id: NOT_FOUND (``node_id``); a node deleted
  while watched ends the stream with NOT_FOUND ("node … was deleted"), since a
  ``Node`` stream has no way to say DELETED and an OK end would read as "re-watch".
  ``WatchPools`` with a ``pool_id`` that is unknown: NOT_FOUND (``pool_id``); when that
  pool is deleted the stream sends its ``DELETED`` and ends OK. A bad request is refused
  (INVALID_ARGUMENT naming the field) before anything is streamed; once accepted, the
  gRPC response headers are sent at once, so a client knows the watch is established
  even when nothing matches yet (Connect sends its headers with the first message).
* **Bounded.** At most ``limits.max_watch_streams`` watch streams per replica (one more:
  RESOURCE_EXHAUSTED). Each stream keeps at most ``limits.max_watch_backlog`` changed
  objects waiting; a client further behind has its stream ended with RESOURCE_EXHAUSTED
  ("watch fell behind; re-watch"), never buffered without bound, and each send has
  ``grpc.send_timeout`` (past it UNAVAILABLE), so a slow client never slows the view or
  the other watchers: the view's listener only marks ids as changed (no I/O, no message
  built), and each stream builds and sends in its own task.
* **Resume.** No resume token is needed: when a replica stops its watches end with
  UNAVAILABLE ("re-watch"); when it dies the connection breaks. Either way the client
  re-watches, through any replica, and the initial state it receives then is the whole
  truth (``qvdcctl … --watch`` does this, with backoff, and replaces its table).

Both faces serve it: gRPC, and Connect server streaming (:mod:`qvdc.http.connect`).
Authorization is that of reads (:func:`qvdc.api.auth.access`: viewers may watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import betterproto2
import grpclib.const
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.api import limits as request_limits
from qvdc.api.errors import guarded, send_timed_out, to_grpc_error
from qvdc.api.node_service import node_message
from qvdc.api.pool_service import PoolMessages
from qvdc.api.rpc_groups import Rpc
from qvdc.domain import errors
from qvdc.domain.limits import Limits, quote
from qvdc.engines.catalog import Catalog
from qvdc.engines.view import ClusterView
from qvdc.store.etcd import KeyValue

log = logging.getLogger(__name__)

_STREAM = grpclib.const.Cardinality.UNARY_STREAM
_NODES = "nodes"
_POOLS = "pools"

#: Key families -> the family of objects a change of theirs may change.
_FAMILY = {
    "nodes": _NODES,  # nodes/<id>: the registration (labels, hostname, spec)
    "nodestatus": _NODES,  # nodestatus/<id>: phase, maintenance
    "assignments": _NODES,  # assignments/<node>/<pool>: the node's assigned pools
    "pools": _POOLS,  # pools/<id>: the definition
    "poolstatus": _POOLS,  # poolstatus/<id>: the aggregate with its per-host rows
}


class _Watch:
    """One open watch stream's mailbox: the ids changed since it last looked."""

    __slots__ = ("backlog", "ending", "family", "only", "pending", "sending", "task", "wake")

    def __init__(self, *, family: str, only: str | None, backlog: int) -> None:
        self.family = family
        self.only = only
        self.backlog = backlog
        self.pending: dict[str, None] = {}  # insertion-ordered set of changed ids
        self.wake = asyncio.Event()
        self.ending: GRPCError | None = None
        self.task = asyncio.current_task()  # the stream's handler
        self.sending = False  # a send is in flight (the client may not be reading)

    def notice(self, item: str) -> None:
        if (self.only is not None and item != self.only) or item in self.pending:
            return  # coalesced: it is built when sent, as it is then
        if len(self.pending) >= self.backlog:
            self.end(
                GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"watch fell behind (more than {self.backlog} changes waiting to be "
                    "read); re-watch",
                )
            )
            return
        self.pending[item] = None
        self.wake.set()

    def end(self, error: GRPCError) -> None:
        """End the stream with ``error``: at once, even in the middle of a send that the
        client is not taking (a partly sent message cannot be followed by another, so the
        handler is cancelled and answers ``error``)."""
        if self.ending is None:
            self.ending = error
            self.pending.clear()
            if self.sending and self.task is not None:
                self.task.cancel()
        self.wake.set()


@dataclass(frozen=True, slots=True)
class _Group:
    """An RPC group (:mod:`qvdc.api.rpc_groups`) of the hub's handlers."""

    entries: tuple[Rpc, ...]

    def rpcs(self) -> Sequence[Rpc]:
        return self.entries


class _Tracker:
    """What one stream told its client: per id, a digest of the last message and the
    name (for a DELETED), so unchanged objects are not sent again."""

    __slots__ = ("known",)

    def __init__(self) -> None:
        self.known: dict[str, tuple[int, str]] = {}

    def update(self, item: str, message: betterproto2.Message | None, name: str) -> int | None:
        """The update type to send for ``item`` now shown as ``message`` (None: gone or
        not matching), or None when there is nothing to send."""
        before = self.known.get(item)
        if message is None:
            if before is None:
                return None
            del self.known[item]
            return 2  # DELETED
        digest = hash(bytes(message))
        if before is not None and before[0] == digest:
            return None
        self.known[item] = (digest, name)
        return 0 if before is None else 1  # ADDED, MODIFIED

    def name(self, item: str) -> str:
        entry = self.known.get(item)
        return entry[1] if entry is not None else ""


def _matches(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())


class WatchHub:
    """Every watch stream of this replica, fed by one listener on the view."""

    def __init__(
        self,
        *,
        view: ClusterView,
        catalog: Catalog,
        heard_at: Callable[[str], float | None],
        pool_messages: Callable[[], PoolMessages],
        send_timeout: float,
        limits: Limits | None = None,
    ) -> None:
        self._view = view
        self._catalog = catalog
        self._heard_at = heard_at
        self._pool_messages = pool_messages
        self._send_timeout = send_timeout
        self._limits = Limits() if limits is None else limits
        self._watches: set[_Watch] = set()
        self._closing: GRPCError | None = None
        self._drained = asyncio.Event()  # set whenever the last watch ended
        view.subscribe(self._on_change)

    # --- the view's side: mark, never wait -----------------------------------------

    def _on_change(self, key: str, _old: KeyValue | None, _new: KeyValue | None) -> None:
        if not self._watches:
            return
        kind, _, rest = key.partition("/")
        family = _FAMILY.get(kind)
        if family is None or not rest:
            return
        item = rest.partition("/")[0] if kind == "assignments" else rest
        for watch in tuple(self._watches):  # notice() may end (not remove) a watch
            if watch.family == family:
                watch.notice(item)

    @property
    def open_streams(self) -> int:
        """Watch streams open on this replica."""
        return len(self._watches)

    async def close(self, *, timeout: float = 1.0) -> None:
        """The replica is stopping: every watch ends with UNAVAILABLE (new ones too), and
        the streams get up to ``timeout`` seconds to say so before the server closes."""
        self._closing = GRPCError(
            Status.UNAVAILABLE, "this replica is stopping; re-watch through another"
        )
        for watch in tuple(self._watches):
            watch.end(self._closing)
        if self._watches:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._drained.wait()

    # --- groups -------------------------------------------------------------------

    def node_rpcs(self) -> _Group:
        """WatchNode and WatchNodes, for ``NodeService(groups=...)``."""
        return _Group(
            (
                Rpc("WatchNode", self.watch_node, compute.WatchNodeRequest, compute.Node, _STREAM),
                Rpc(
                    "WatchNodes",
                    self.watch_nodes,
                    compute.WatchNodesRequest,
                    compute.NodeUpdate,
                    _STREAM,
                ),
            )
        )

    def pool_rpcs(self) -> _Group:
        """WatchPools, for ``StoragePoolService(groups=...)``."""
        return _Group(
            (
                Rpc(
                    "WatchPools",
                    self.watch_pools,
                    storage.WatchPoolsRequest,
                    storage.PoolUpdate,
                    _STREAM,
                ),
            )
        )

    # --- builders -------------------------------------------------------------------

    def _node(self, node_id: str, labels: Mapping[str, str]) -> tuple[compute.Node | None, str]:
        record = self._view.node(node_id)
        if record is None or not _matches(record.labels, labels):
            return None, ""
        message = node_message(
            node_id,
            record.document,
            self._view.node_state(node_id),
            view=self._view,
            heard_at=self._heard_at,
        )
        return message, record.hostname

    def _pool(
        self, pool_id: str, labels: Mapping[str, str]
    ) -> tuple[storage.StoragePool | None, str]:
        record = self._view.pool(pool_id)
        if record is None or not _matches(record.document.get("labels") or {}, labels):
            return None, ""
        return self._pool_messages().full(record), record.name

    # --- handlers -------------------------------------------------------------------

    async def watch_node(self, stream: Any) -> None:
        request: compute.WatchNodeRequest = await self._request(stream, "WatchNode")

        async def check() -> None:
            request_limits.check(request, self._limits)
            if not request.node_id:
                raise errors.InvalidArgument("node_id is required", field="node_id")
            await self._known(request.node_id, self._view.has_node, field="node_id")

        await guarded("WatchNode", check)
        node_id = request.node_id
        tracker = _Tracker()

        async def emit(item: str) -> bool:
            message, name = self._node(item, {})
            if message is None:
                raise GRPCError(Status.NOT_FOUND, f"node {quote(item)} was deleted")
            if tracker.update(item, message, name) is not None:
                await self._send(stream, message, "WatchNode")
            return False

        await self._serve(stream, "WatchNode", _NODES, [node_id], emit, only=node_id)

    async def watch_nodes(self, stream: Any) -> None:
        request: compute.WatchNodesRequest = await self._request(stream, "WatchNodes")

        async def check() -> None:
            request_limits.check(request, self._limits)

        await guarded("WatchNodes", check)
        labels = dict(request.labels)
        tracker = _Tracker()

        def initial() -> list[str]:
            return [record.id for record in self._view.nodes()]

        async def emit(item: str) -> bool:
            name = tracker.name(item)
            message, current = self._node(item, labels)
            kind = tracker.update(item, message, current)
            if kind is None:
                return False
            node = message if message is not None else compute.Node(id=item, hostname=name)
            update = compute.NodeUpdate(type=compute.NodeUpdateUpdateType(kind), node=node)
            await self._send(stream, update, "WatchNodes")
            return False

        await self._serve(stream, "WatchNodes", _NODES, initial, emit)

    async def watch_pools(self, stream: Any) -> None:
        request: storage.WatchPoolsRequest = await self._request(stream, "WatchPools")
        pool_id = request.pool_id

        async def check() -> None:
            request_limits.check(request, self._limits)
            if pool_id:
                await self._known(
                    pool_id, lambda i: self._view.pool(i) is not None, field="pool_id"
                )

        await guarded("WatchPools", check)
        labels = dict(request.labels)
        tracker = _Tracker()

        async def emit(item: str) -> bool:
            name = tracker.name(item)
            message, current = self._pool(item, labels)
            kind = tracker.update(item, message, current)
            if kind is None:
                return False
            pool = message if message is not None else storage.StoragePool(id=item, name=name)
            update = storage.PoolUpdate(type=storage.PoolUpdateUpdateType(kind), pool=pool)
            await self._send(stream, update, "WatchPools")
            # The one pool watched is gone: its DELETED was the last word.
            return bool(pool_id) and kind == 2 and self._view.pool(pool_id) is None

        def initial() -> list[str]:
            return [pool_id] if pool_id else [record.id for record in self._view.pools()]

        await self._serve(stream, "WatchPools", _POOLS, initial, emit, only=pool_id or None)

    # --- the stream loop ------------------------------------------------------------

    async def _request(self, stream: Any, method: str) -> Any:
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "empty request stream")
        if self._closing is not None:
            raise self._closing
        return request

    async def _known(self, item: str, present: Callable[[str], bool], *, field: str) -> None:
        """``item`` exists in the view, after one catch-up (written through another
        replica a moment ago), else NOT_FOUND naming ``field``."""
        if not present(item):
            await self._catalog.catch_up()
        if not present(item):
            noun = "node" if field == "node_id" else "pool"
            raise errors.NotFound(f"{noun} {quote(item)} not found", field=field)

    @staticmethod
    async def _emit(
        watch: _Watch, method: str, emit: Callable[[str], Awaitable[bool]], item: str
    ) -> bool:
        watch.sending = True  # emit() builds (no await) and sends
        try:
            return await guarded(method, functools.partial(emit, item))
        finally:
            watch.sending = False

    async def _send(self, stream: Any, message: betterproto2.Message, method: str) -> None:
        try:
            async with asyncio.timeout(self._send_timeout):
                await stream.send_message(message)
        except TimeoutError:
            raise to_grpc_error(send_timed_out(self._send_timeout), method=method) from None

    async def _serve(
        self,
        stream: Any,
        method: str,
        family: str,
        initial: Iterable[str] | Callable[[], Iterable[str]],
        emit: Callable[[str], Awaitable[bool]],
        *,
        only: str | None = None,
    ) -> None:
        limit = self._limits.max_watch_streams
        if len(self._watches) >= limit:
            raise GRPCError(
                Status.RESOURCE_EXHAUSTED,
                f"{limit} watch streams are open on this replica (limits.max_watch_streams); "
                "retry later or through another replica",
            )
        watch = _Watch(family=family, only=only, backlog=self._limits.max_watch_backlog)
        # Open before the initial state is read: no change falls between the two.
        self._watches.add(watch)
        self._drained.clear()
        try:
            items = list(initial() if callable(initial) else initial)
            headers = getattr(stream, "send_initial_metadata", None)
            if headers is not None:  # gRPC: the client knows the watch is established
                async with asyncio.timeout(self._send_timeout):
                    await headers()
            for item in items:
                if watch.ending is not None:
                    break
                watch.pending.pop(item, None)  # sent now, as it is now
                if await self._emit(watch, method, emit, item):
                    return
            while True:
                if watch.ending is not None:
                    raise watch.ending
                if not watch.pending:
                    watch.wake.clear()
                    await watch.wake.wait()
                    continue
                item = next(iter(watch.pending))
                del watch.pending[item]
                if await self._emit(watch, method, emit, item):
                    return
        except asyncio.CancelledError:
            # Ours (end() during a send), and nobody else's: answer what ended it.
            task = watch.task
            if watch.ending is not None and task is not None and task.uncancel() == 0:
                raise watch.ending from None
            raise
        finally:
            self._watches.discard(watch)
            if not self._watches:
                self._drained.set()
