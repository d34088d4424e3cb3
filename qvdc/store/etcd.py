"""EtcdStore: the controller's only door to etcd (and the only importer of aetcd).

Why aetcd: etcd3-py was measured on this machine to silently drop watch events
under concurrent writes (2,000 puts from 50 tasks -> 160 events delivered), to
have a sync-only lease keepalive, and to run 10-40x slower (about 300 puts/s
per process against 5,000-7,000 for aetcd). See README.

Every key passed in or returned is *relative to the configured prefix*; this
module adds and strips the prefix. Every call is bounded by a timeout and maps
client errors to :class:`StoreError` subclasses at the call site.

INTERFACE CONTRACT (implemented by the store work item):

    store = await EtcdStore.connect(settings=EtcdSettings(...))
    kv = await store.get("pools/p1")                       -> KeyValue | None
    kvs, rev = await store.get_prefix("pools/")            -> (list[KeyValue] sorted by key,
                                                               header revision)
    rev = await store.put("k", b"v", lease=None)           -> revision after the put
    existed = await store.delete("k")                      -> bool
    n = await store.delete_prefix("hoststatus/p1/")        -> number deleted
    res = await store.txn(compares=[Compare.absent("poolnames/x"),
                                    Compare.mod_revision("pools/p", 7)],
                          success=[Op.put("pools/p", b"..."), Op.delete("x")], failure=[])
                                                           -> TxnResult(succeeded, revision)
    lease = await store.grant_lease(ttl=10)                -> Lease(id, ttl)
    await store.refresh_lease(lease); await store.revoke_lease(lease)
    async for ev in store.watch_prefix("hoststatus/", start_revision=rev + 1): WatchEvent
        raises Compacted(compact_revision) if start_revision was compacted,
        StoreUnavailable if the connection drops (the caller re-watches).
    rev = await store.revision()                           -> current header revision
    await store.close()

Additions to the contract (all optional for callers):

- ``EtcdStore.connect(..., page_size=10_000)``: ``get_prefix`` reads in pages of
  this many keys, all pinned to the revision of the first page, so a listing of
  a million keys is one consistent snapshot that never hits gRPC's message size
  limit. If etcd compacts that revision mid-listing, the listing restarts (a few
  times, then :class:`StoreUnavailable`).
- ``watch_prefix(..., idle_timeout=None)``: raise :class:`StoreTimeout` when the
  stream stays silent that long (etcd progress notifications are requested, so
  pick more than etcd's ``--experimental-watch-progress-notify-interval``).
- ``compact(revision)``: compact etcd's history (tests, maintenance). An already
  compacted revision is not an error.
- :class:`LeaseExpired`: ``refresh_lease`` on a lease etcd no longer has, or a put
  attached to one, raises it (the caller must grant a new lease and rewrite).
- ``WatchEvent.create_revision`` / ``WatchEvent.version`` (0 for deletes), so a
  watch-fed cache holds complete :class:`KeyValue` rows.

How it is built, and why
------------------------
aetcd's ``Client`` owns the gRPC channel and its stubs; this module calls the
stubs (``kvstub.Range``, ``kvstub.Txn``, ``leasestub.LeaseGrant``, ...) with
requests it builds itself instead of aetcd's convenience methods, because those
(1) take no per-call deadline (only one client-wide timeout), (2) cannot page a
range or pin its revision, (3) drop the header revision of a transaction, and
(4) multiplex every watch over one shared stream whose reader task ends
*silently* if the server closes the stream without an error, leaving every
watcher blocked forever. Here each ``watch_prefix`` owns one gRPC Watch stream:
a clean end of stream, a reset, or a cancel by the server all surface as
exceptions, and cancelling the stream is synchronous (no cleanup to await).

Timeouts: each call runs under ``asyncio.timeout(t)`` *and* passes ``t`` as the
gRPC deadline, ``t`` being the call's ``timeout`` or ``settings.timeout``. The
wait for the next watch event is the one await without a default limit (an
idle watch is normal); a dead peer is still detected by gRPC keepalive pings
(every 10 s, 5 s to answer) and ``idle_timeout`` is there for stricter callers.

Errors are translated where they happen: gRPC ``UNAVAILABLE``/``CANCELLED``
(channel closed), a closed channel and etcd's "too many requests" become
:class:`StoreUnavailable`; ``DEADLINE_EXCEEDED`` and our own deadline become
:class:`StoreTimeout`; a compacted watch start becomes :class:`Compacted`;
everything else etcd rejects becomes :class:`StoreError` with etcd's reason.
Exceptions that are not from the client (programming errors) pass unchanged.

Endpoints: ``connect`` probes them in order and keeps the first that answers.
A call that fails with :class:`StoreUnavailable` marks its connection failed;
with more than one endpoint the next call opens the next endpoint in turn and
closes the failed connection (its open watches then fail and their callers
re-watch, landing on the new endpoint). With one endpoint the channel stays:
gRPC reconnects by itself, with its backoff capped at 2 s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Literal, TypeVar

import aetcd
import grpc.aio  # type: ignore[import-untyped]  # aetcd's transport; only for its EOF marker
from aetcd import rpc

from qvdc.settings import EtcdSettings

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

# gRPC channel options. Keepalive pings only run while a call is open (etcd's
# server policy rejects pings without streams); they bound how long a watch on
# a dead or partitioned peer can wait. Reconnect backoff is capped at 2 s so a
# restarted etcd is used again quickly. Large messages: watch replays and big
# transactions; listings are paged anyway.
_GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

_EOF: Any = grpc.aio.EOF
"""What ``call.read()`` returns at the end of a gRPC stream."""

_LIST_RESTARTS = 3
"""How often ``get_prefix`` restarts a listing whose pinned revision got compacted."""


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """etcd cannot be reached (connection refused, stream removed, no leader)."""


class StoreTimeout(StoreUnavailable):
    """An etcd request did not finish within its timeout."""


class Compacted(StoreError):
    """A watch asked for a revision etcd has compacted away; re-list."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {compact_revision}")
        self.compact_revision = compact_revision


class LeaseExpired(StoreError):
    """The lease is gone (expired or revoked): grant a new one and rewrite its keys."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:x} not found (expired or revoked)")
        self.lease_id = lease_id


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    key: str  # relative to the prefix
    value: bytes
    mod_revision: int
    create_revision: int
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str  # relative to the prefix
    value: bytes  # b"" for deletes
    mod_revision: int
    create_revision: int = 0  # 0 for deletes
    version: int = 0  # 0 for deletes; 1 for a put that created the key


@dataclasses.dataclass(frozen=True, slots=True)
class Compare:
    key: str
    target: Literal["mod_revision", "version", "value"]
    op: Literal["==", "!=", "<", ">"]
    operand: int | bytes

    @staticmethod
    def mod_revision(key: str, revision: int) -> Compare:
        """The key's mod_revision equals ``revision`` (0: the key is absent)."""
        return Compare(key, "mod_revision", "==", revision)

    @staticmethod
    def absent(key: str) -> Compare:
        return Compare(key, "version", "==", 0)

    @staticmethod
    def present(key: str) -> Compare:
        return Compare(key, "version", ">", 0)


@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    kind: Literal["put", "delete"]
    key: str
    value: bytes = b""
    lease: int | None = None

    @staticmethod
    def put(key: str, value: bytes, *, lease: int | None = None) -> Op:
        return Op("put", key, value, lease)

    @staticmethod
    def delete(key: str) -> Op:
        return Op("delete", key)


@dataclasses.dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int


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


def _range_end(prefix: bytes) -> bytes:
    """The ``range_end`` selecting every key that starts with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"  # every byte is 0xff: to the end of the keyspace


@dataclasses.dataclass(eq=False)
class _Connection:
    """One aetcd client (one gRPC channel) to one endpoint."""

    endpoint: str
    client: Any  # aetcd.Client (untyped)
    failed: bool = False


def _open_connection(endpoint: str) -> _Connection:
    host, _, port = endpoint.rpartition(":")
    client = aetcd.Client(host=host, port=int(port), options=dict(_GRPC_OPTIONS))
    return _Connection(endpoint=endpoint, client=client)


class EtcdStore:
    """See the module docstring for the contract."""

    settings: EtcdSettings

    def __init__(self, *, settings: EtcdSettings, page_size: int = 10_000) -> None:
        """Use :meth:`connect`; this only sets up an unconnected store."""
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1: {page_size}")
        self.settings = settings
        self._prefix = settings.prefix.encode()
        self._page_size = page_size
        self._endpoints = settings.endpoints
        self._index = 0
        self._conn: _Connection | None = None
        self._retired: list[_Connection] = []
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def connect(cls, *, settings: EtcdSettings, page_size: int = 10_000) -> EtcdStore:
        """Connect to the first endpoint that answers, in order.

        Raises :class:`StoreUnavailable` (naming every endpoint's failure) if none does.
        """
        store = cls(settings=settings, page_size=page_size)
        await store._open_first()
        return store

    async def _open_first(self) -> None:
        if not self._endpoints:
            raise StoreError("no etcd endpoints configured (start an EmbeddedEtcd first)")
        failures: list[str] = []
        for index, endpoint in enumerate(self._endpoints):
            conn = _open_connection(endpoint)
            try:
                await self._probe(conn)
            except StoreError as exc:
                failures.append(f"{endpoint}: {exc}")
                await self._close_connection(conn)
                continue
            self._conn = conn
            self._index = index
            return
        raise StoreUnavailable("no etcd endpoint answered: " + "; ".join(failures))

    async def _probe(self, conn: _Connection) -> None:
        limit = self.settings.timeout
        with self._translating(conn, what="connect", limit=limit):
            async with asyncio.timeout(limit):
                await conn.client.connect()
                request = rpc.RangeRequest(key=self._prefix, count_only=True)
                await conn.client.kvstub.Range(
                    request, timeout=limit, metadata=conn.client.metadata
                )

    async def close(self) -> None:
        """Close every connection (open watches fail with StoreUnavailable). Idempotent."""
        self._closed = True
        conns = [*self._retired, *([self._conn] if self._conn is not None else [])]
        self._conn = None
        self._retired.clear()
        for conn in conns:
            await self._close_connection(conn)

    async def _close_connection(self, conn: _Connection) -> None:
        """Close one client, bounded; a failure to close is logged, not raised."""
        try:
            async with asyncio.timeout(self.settings.timeout):
                await conn.client.close()
        except Exception as exc:  # noqa: BLE001 - best-effort close; logged, never raised
            _log.warning("closing etcd client for %s failed: %r", conn.endpoint, exc)

    async def _acquire(self) -> _Connection:
        """The connection for the next call; opens the next endpoint after a failure.

        The caller still awaits ``conn.client.connect()`` (no I/O: it creates the
        channel and stubs once) inside its own timeout.
        """
        if self._closed or self._conn is None:
            raise StoreError("etcd store is closed" if self._closed else "not connected")
        conn = self._conn
        # Case: the last call on this connection failed and there is another endpoint:
        # switch first (synchronously, so concurrent callers switch once), then close
        # the failed connection (bounded; close() retries whatever is left).
        if conn.failed and len(self._endpoints) > 1:
            self._index = (self._index + 1) % len(self._endpoints)
            failed, conn = conn, _open_connection(self._endpoints[self._index])
            _log.warning("etcd %s failed; switching to %s", failed.endpoint, conn.endpoint)
            self._conn = conn
            self._retired.append(failed)
            await self._close_connection(failed)
            with contextlib.suppress(ValueError):
                self._retired.remove(failed)
        return conn

    # ---------------------------------------------------------------- plumbing

    def _limit(self, timeout: float | None) -> float:
        limit = self.settings.timeout if timeout is None else timeout
        if limit <= 0:
            raise ValueError(f"timeout must be > 0: {limit}")
        return limit

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _kv(self, kv: Any) -> KeyValue:
        return KeyValue(
            key=kv.key[len(self._prefix) :].decode(),
            value=kv.value,
            mod_revision=kv.mod_revision,
            create_revision=kv.create_revision,
            version=kv.version,
        )

    @contextlib.contextmanager
    def _translating(self, conn: _Connection, *, what: str, limit: float | None) -> Iterator[None]:
        """Map client exceptions raised inside to StoreError; others pass unchanged.

        A StoreUnavailable marks ``conn`` failed, so the next call may move to
        another endpoint.
        """
        try:
            yield
        except Exception as exc:
            error = _map_exception(exc, endpoint=conn.endpoint, what=what, limit=limit)
            if isinstance(error, StoreUnavailable):
                conn.failed = True
            if error is exc:
                raise
            raise error from exc

    async def _call(
        self,
        what: str,
        call_timeout: float | None,
        invoke: Callable[[Any, Any, float], Awaitable[_T]],
    ) -> _T:
        """Run ``invoke(client, metadata, limit)`` bounded by ``limit``, translating errors."""
        limit = self._limit(call_timeout)
        conn = await self._acquire()
        with self._translating(conn, what=what, limit=limit):
            async with asyncio.timeout(limit):
                await conn.client.connect()
                result = await invoke(conn.client, conn.client.metadata, limit)
        conn.failed = False
        return result

    # ---------------------------------------------------------------- key/value

    async def get(self, key: str, *, timeout: float | None = None) -> KeyValue | None:
        """The key's current value, or None if it does not exist."""
        request = rpc.RangeRequest(key=self._key(key))

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.Range(request, timeout=limit, metadata=md)

        response = await self._call(f"get {key!r}", timeout, invoke)
        return self._kv(response.kvs[0]) if response.kvs else None

    async def get_prefix(
        self, prefix: str, *, timeout: float | None = None
    ) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix``, sorted by key, as of one revision: returns (items, revision).

        Read in pages of ``page_size`` keys pinned to the first page's revision;
        ``timeout`` bounds each page.
        """
        for _attempt in range(_LIST_RESTARTS):
            listed = await self._list_pages(prefix, timeout)
            if listed is not None:
                return listed
            _log.info("listing %r: its revision was compacted mid-way; restarting", prefix)
        raise StoreUnavailable(
            f"list {prefix!r}: etcd compacted the listing's revision {_LIST_RESTARTS} times"
        )

    async def _list_pages(
        self, prefix: str, page_timeout: float | None
    ) -> tuple[list[KeyValue], int] | None:
        """One paged listing; None if its pinned revision was compacted meanwhile."""
        start = self._key(prefix)
        end = _range_end(start)
        revision = 0  # 0: the first page reads the current revision and pins it
        items: list[KeyValue] = []
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=self._page_size, revision=revision
            )

            async def invoke(client: Any, md: Any, limit: float, request: Any = request) -> Any:
                return await client.kvstub.Range(request, timeout=limit, metadata=md)

            try:
                response = await self._call(f"list {prefix!r}", page_timeout, invoke)
            except _RevisionCompacted:
                return None
            if revision == 0:
                revision = response.header.revision
            items.extend(self._kv(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return items, revision
            start = response.kvs[-1].key + b"\0"

    async def put(
        self, key: str, value: bytes, *, lease: int | None = None, timeout: float | None = None
    ) -> int:
        """Write ``key``; returns the revision of the write. LeaseExpired if ``lease`` is gone."""
        request = rpc.PutRequest(key=self._key(key), value=value, lease=lease or 0)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.Put(request, timeout=limit, metadata=md)

        try:
            response = await self._call(f"put {key!r}", timeout, invoke)
        except _LeaseNotFound as exc:
            raise LeaseExpired(lease or 0) from exc
        return int(response.header.revision)

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Delete ``key``; returns whether it existed."""
        request = rpc.DeleteRangeRequest(key=self._key(key))

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.DeleteRange(request, timeout=limit, metadata=md)

        response = await self._call(f"delete {key!r}", timeout, invoke)
        return bool(response.deleted > 0)

    async def delete_prefix(self, prefix: str, *, timeout: float | None = None) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        key = self._key(prefix)
        request = rpc.DeleteRangeRequest(key=key, range_end=_range_end(key))

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.DeleteRange(request, timeout=limit, metadata=md)

        response = await self._call(f"delete prefix {prefix!r}", timeout, invoke)
        return int(response.deleted)

    async def txn(
        self,
        *,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
        timeout: float | None = None,
    ) -> TxnResult:
        """One etcd transaction: if every compare holds run ``success``, else ``failure``.

        Returns TxnResult(succeeded, revision); the revision is the store's
        revision after the transaction (unchanged if the branch run wrote nothing).
        etcd limits a transaction to 128 operations and rejects a key written
        twice in one branch (both StoreError).
        """
        request = rpc.TxnRequest(
            compare=[self._compare(c) for c in compares],
            success=[self._request_op(op) for op in success],
            failure=[self._request_op(op) for op in failure],
        )

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.Txn(request, timeout=limit, metadata=md)

        try:
            response = await self._call("txn", timeout, invoke)
        except _LeaseNotFound as exc:
            leases = {op.lease for op in (*success, *failure) if op.lease}
            raise LeaseExpired(min(leases) if leases else 0) from exc
        return TxnResult(succeeded=bool(response.succeeded), revision=response.header.revision)

    def _compare(self, compare: Compare) -> Any:
        message = rpc.Compare(
            key=self._key(compare.key),
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

    def _request_op(self, op: Op) -> Any:
        if op.kind == "put":
            put = rpc.PutRequest(key=self._key(op.key), value=op.value, lease=op.lease or 0)
            return rpc.RequestOp(request_put=put)
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._key(op.key)))

    async def revision(self, *, timeout: float | None = None) -> int:
        """The store's current revision (from a response header)."""
        request = rpc.RangeRequest(key=self._prefix, count_only=True)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.Range(request, timeout=limit, metadata=md)

        response = await self._call("revision", timeout, invoke)
        return int(response.header.revision)

    async def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> None:
        """Discard history before ``revision`` (etcd-wide, not only our prefix).

        A revision that is already compacted is not an error.
        """
        request = rpc.CompactionRequest(revision=revision, physical=physical)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.Compact(request, timeout=limit, metadata=md)

        try:
            await self._call(f"compact {revision}", timeout, invoke)
        except _RevisionCompacted:
            return

    # ---------------------------------------------------------------- leases

    async def grant_lease(self, ttl: int, *, timeout: float | None = None) -> Lease:
        """A new lease of ``ttl`` seconds (etcd may round a very short TTL up)."""
        request = rpc.LeaseGrantRequest(TTL=ttl, ID=0)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.leasestub.LeaseGrant(request, timeout=limit, metadata=md)

        response = await self._call("grant lease", timeout, invoke)
        if response.error:
            raise StoreError(f"grant lease: {response.error}")
        return Lease(id=response.ID, ttl=response.TTL)

    async def refresh_lease(self, lease: Lease, *, timeout: float | None = None) -> None:
        """One keepalive (the caller runs the loop, every ttl/3 or so).

        Raises LeaseExpired if etcd no longer has the lease.
        """
        request = rpc.LeaseKeepAliveRequest(ID=lease.id)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            call = client.leasestub.LeaseKeepAlive(timeout=limit, metadata=md)
            try:
                await call.write(request)
                return await call.read()
            finally:
                call.cancel()

        response = await self._call("refresh lease", timeout, invoke)
        if response is _EOF or response.TTL <= 0:
            raise LeaseExpired(lease.id)

    async def revoke_lease(self, lease: Lease, *, timeout: float | None = None) -> None:
        """Revoke the lease, deleting its keys; a lease already gone is not an error."""
        request = rpc.LeaseRevokeRequest(ID=lease.id)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.leasestub.LeaseRevoke(request, timeout=limit, metadata=md)

        try:
            await self._call("revoke lease", timeout, invoke)
        except _LeaseNotFound:
            return

    # ---------------------------------------------------------------- watch

    async def watch_prefix(
        self,
        prefix: str,
        *,
        start_revision: int,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Every change under ``prefix`` from ``start_revision`` on, in revision order.

        Raises Compacted if ``start_revision`` is compacted, StoreUnavailable when
        the stream breaks (the caller re-watches from its last revision + 1), and
        StoreTimeout after ``idle_timeout`` seconds without a message, if given.
        All events of one etcd response (so all events of one revision) are
        yielded before the next read, so a break never splits a revision.
        Close the iterator (``contextlib.aclosing``) to cancel the stream promptly.
        """
        start = self._key(prefix)
        create = rpc.WatchCreateRequest(
            key=start,
            range_end=_range_end(start),
            start_revision=start_revision,
            progress_notify=idle_timeout is not None,
        )
        what = f"watch {prefix!r} from {start_revision}"
        limit = self._limit(None)
        conn = await self._acquire()
        call: Any = None
        try:
            # Open the stream and wait for etcd to confirm the watch, bounded.
            with self._translating(conn, what=what, limit=limit):
                async with asyncio.timeout(limit):
                    await conn.client.connect()
                    stub = rpc.WatchStub(conn.client.channel)
                    call = stub.Watch(metadata=conn.client.metadata)
                    await call.write(rpc.WatchRequest(create_request=create))
                    response = await call.read()
            self._check_watch_response(response, conn=conn, what=what)
            if not response.created:
                raise StoreError(f"{what}: etcd answered the create with {response!r}")
            conn.failed = False
            # Relay events; each read waits for etcd (bounded by keepalive / idle_timeout).
            while True:
                for event in response.events:
                    yield self._event(event)
                with self._translating(conn, what=what, limit=idle_timeout):
                    async with asyncio.timeout(idle_timeout):
                        response = await call.read()
                self._check_watch_response(response, conn=conn, what=what)
        finally:
            if call is not None:
                call.cancel()

    def _check_watch_response(self, response: Any, *, conn: _Connection, what: str) -> None:
        """Raise for a watch message that ends the watch (end of stream, compaction, cancel)."""
        if response is _EOF:
            conn.failed = True
            raise StoreUnavailable(f"{what}: etcd {conn.endpoint} ended the watch stream")
        if response.compact_revision:
            raise Compacted(response.compact_revision)
        if response.canceled:
            raise StoreError(f"{what}: etcd cancelled the watch: {response.cancel_reason}")

    def _event(self, event: Any) -> WatchEvent:
        kv = event.kv
        key = kv.key[len(self._prefix) :].decode()
        if event.type == rpc.Event.DELETE:
            return WatchEvent(kind="delete", key=key, value=b"", mod_revision=kv.mod_revision)
        return WatchEvent(
            kind="put",
            key=key,
            value=kv.value,
            mod_revision=kv.mod_revision,
            create_revision=kv.create_revision,
            version=kv.version,
        )


# ---------------------------------------------------------------- error mapping


class _RevisionCompacted(StoreError):
    """A read or compaction named a compacted revision (handled inside this module)."""


class _LeaseNotFound(StoreError):
    """etcd does not know the lease (turned into LeaseExpired by the caller)."""


_UNAVAILABLE_CODES = frozenset({"UNAVAILABLE", "CANCELLED", "ABORTED"})


def _map_exception(exc: Exception, *, endpoint: str, what: str, limit: float | None) -> Exception:
    """The StoreError for a client exception; other exceptions are returned as they are."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, TimeoutError):
        return StoreTimeout(f"{what}: etcd {endpoint} did not answer within {limit} s")
    if isinstance(exc, rpc.AioRpcError):
        code = exc.code().name
        details = exc.details() or ""
        message = f"{what}: etcd {endpoint}: {code}: {details}"
        if code == "DEADLINE_EXCEEDED":
            return StoreTimeout(message)
        if code in _UNAVAILABLE_CODES or "too many requests" in details:
            return StoreUnavailable(message)
        if code == "OUT_OF_RANGE" and "compacted" in details:
            return _RevisionCompacted(message)
        if code == "NOT_FOUND" and "lease not found" in details:
            return _LeaseNotFound(message)
        return StoreError(message)
    if isinstance(exc, rpc.BaseError):  # e.g. UsageError: the channel was closed under us
        return StoreUnavailable(f"{what}: etcd {endpoint}: client unusable: {exc!r}")
    if isinstance(exc, aetcd.RevisionCompactedError):
        return Compacted(exc.compacted_revision)
    if isinstance(exc, aetcd.ConnectionTimeoutError):
        return StoreTimeout(f"{what}: etcd {endpoint}: {exc}")
    if isinstance(exc, aetcd.ConnectionFailedError):
        return StoreUnavailable(f"{what}: etcd {endpoint}: {exc}")
    if isinstance(exc, aetcd.ClientError):
        return StoreError(f"{what}: etcd {endpoint}: {exc!r}")
    return exc
