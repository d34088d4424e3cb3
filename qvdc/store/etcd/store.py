"""EtcdStore: the etcd API the controller uses, each call bounded and its errors mapped.

See the package docstring for the contract and the reasons behind its shape.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aetcd import rpc

from qvdc.settings import EtcdSettings
from qvdc.store import records
from qvdc.store.etcd import connections, errors, messages

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

_LIST_RESTARTS = 3
"""How often ``get_prefix`` restarts a listing whose pinned revision got compacted."""

DEFAULT_PAGE_BYTES = 8 * 1024 * 1024
"""The bytes (keys and values) a listing page aims at: well under the client's 64 MiB
receive limit (``connections``)."""

_LARGEST_KV = 1536 * 1024 + 512
"""The largest key and value etcd stores with its default ``--max-request-bytes``
(1.5 MiB): what a page's first guess assumes of every key."""


class EtcdStore:
    """See the package docstring for the contract."""

    settings: EtcdSettings

    def __init__(
        self,
        *,
        settings: EtcdSettings,
        page_size: int = 10_000,
        page_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> None:
        """Use :meth:`connect`; this only sets up an unconnected store."""
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1: {page_size}")
        if page_bytes < 1:
            raise ValueError(f"page_bytes must be >= 1: {page_bytes}")
        self.settings = settings
        self._prefix = settings.prefix.encode()
        self._messages = messages.Messages(prefix=self._prefix)
        self._page_size = page_size
        self._page_bytes = page_bytes
        self._endpoints = connections.Endpoints(settings=settings, probe_key=self._prefix)
        #: Failed etcd calls by (operation, kind) (``errors.kind_of``), the handled ones
        #: too (a listing restarted after a compaction); read by ``qvdc.metrics``.
        self.error_counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def _count_error(self, what: str, error: records.StoreError) -> None:
        self.error_counts[what.split(" ", 1)[0], errors.kind_of(error)] += 1

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    async def connect(
        cls,
        *,
        settings: EtcdSettings,
        page_size: int = 10_000,
        page_bytes: int = DEFAULT_PAGE_BYTES,
    ) -> EtcdStore:
        """Connect to the first endpoint that answers, in order.

        Raises :class:`StoreUnavailable` (naming every endpoint's failure) if none does.
        """
        store = cls(settings=settings, page_size=page_size, page_bytes=page_bytes)
        await store._endpoints.open_first()
        return store

    async def close(self) -> None:
        """Close every connection (open watches fail with StoreUnavailable). Idempotent."""
        await self._endpoints.close()

    def sibling(self, prefix: str) -> EtcdStore:
        """A store over another ``prefix`` sharing this one's connections and error
        counts (the event history lives beside the keyspace the view lists and watches,
        not inside it). Close the parent, not the sibling."""
        other = EtcdStore(
            settings=dataclasses.replace(self.settings, prefix=prefix),
            page_size=self._page_size,
            page_bytes=self._page_bytes,
        )
        other._endpoints = self._endpoints
        other.error_counts = self.error_counts
        return other

    # ---------------------------------------------------------------- plumbing

    def _limit(self, timeout: float | None) -> float:
        limit = self.settings.timeout if timeout is None else timeout
        if limit <= 0:
            raise ValueError(f"timeout must be > 0: {limit}")
        return limit

    async def _call(
        self,
        what: str,
        call_timeout: float | None,
        invoke: Callable[[Any, Any, float], Awaitable[_T]],
    ) -> _T:
        """Run ``invoke(client, metadata, limit)`` bounded by ``limit``, translating errors."""
        limit = self._limit(call_timeout)
        try:
            conn = await self._endpoints.acquire()
            with connections.translating(conn, what=what, limit=limit):
                async with asyncio.timeout(limit):
                    await conn.client.connect()
                    result = await invoke(conn.client, conn.client.metadata, limit)
        except records.StoreError as error:
            self._count_error(what, error)
            raise
        conn.failed = False
        return result

    # ---------------------------------------------------------------- key/value

    async def get(self, key: str, *, timeout: float | None = None) -> records.KeyValue | None:
        """The key's current value, or None if it does not exist."""
        request = rpc.RangeRequest(key=self._messages.key(key))

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.Range(request, timeout=limit, metadata=md)

        response = await self._call(f"get {key!r}", timeout, invoke)
        return self._messages.key_value(response.kvs[0]) if response.kvs else None

    async def get_prefix(
        self, prefix: str, *, timeout: float | None = None
    ) -> tuple[list[records.KeyValue], int]:
        """Every key under ``prefix``, sorted by key, as of one revision: returns (items, revision).

        Read in pages pinned to the first page's revision; ``timeout`` bounds each
        page. A page holds at most ``page_size`` keys and aims at ``page_bytes``: the
        first assumes etcd's largest values, each next one at most doubles its count
        and is sized by the bytes per key seen so far; a page the client still refuses
        as too large is asked again with half the keys. So any amount of state loads.
        """
        for _attempt in range(_LIST_RESTARTS):
            listed = await self._list_pages(prefix, timeout)
            if listed is not None:
                return listed
            _log.info("listing %r: its revision was compacted mid-way; restarting", prefix)
        raise records.StoreUnavailable(
            f"list {prefix!r}: etcd compacted the listing's revision {_LIST_RESTARTS} times"
        )

    async def _list_pages(
        self, prefix: str, page_timeout: float | None
    ) -> tuple[list[records.KeyValue], int] | None:
        """One paged listing; None if its pinned revision was compacted meanwhile."""
        start = self._messages.key(prefix)
        end = messages.range_end(start)
        key_value = self._messages.key_value
        revision = 0  # 0: the first page reads the current revision and pins it
        items: list[records.KeyValue] = []
        count = min(self._page_size, max(1, self._page_bytes // _LARGEST_KV))
        seen_keys = seen_bytes = 0
        while True:
            request = rpc.RangeRequest(key=start, range_end=end, limit=count, revision=revision)

            async def invoke(client: Any, md: Any, limit: float, request: Any = request) -> Any:
                return await client.kvstub.Range(request, timeout=limit, metadata=md)

            try:
                response = await self._call(f"list {prefix!r}", page_timeout, invoke)
            except errors.RevisionCompacted:
                return None
            except errors.ResponseTooLarge:
                if count == 1:
                    raise
                count //= 2
                continue
            if revision == 0:
                revision = response.header.revision
            page = [key_value(kv) for kv in response.kvs]
            items.extend(page)
            if not response.more or not page:
                return items, revision
            start = response.kvs[-1].key + b"\0"
            seen_keys += len(page)
            seen_bytes += sum(len(kv.key) + len(kv.value) for kv in response.kvs)
            fits = self._page_bytes * seen_keys // max(1, seen_bytes)
            count = max(1, min(self._page_size, 2 * count, fits))

    async def put(
        self, key: str, value: bytes, *, lease: int | None = None, timeout: float | None = None
    ) -> int:
        """Write ``key``; returns the revision of the write. LeaseExpired if ``lease`` is gone."""
        request = rpc.PutRequest(key=self._messages.key(key), value=value, lease=lease or 0)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.Put(request, timeout=limit, metadata=md)

        try:
            response = await self._call(f"put {key!r}", timeout, invoke)
        except errors.LeaseNotFound as exc:
            raise records.LeaseExpired(lease or 0) from exc
        return int(response.header.revision)

    async def delete(self, key: str, *, timeout: float | None = None) -> bool:
        """Delete ``key``; returns whether it existed."""
        request = rpc.DeleteRangeRequest(key=self._messages.key(key))

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.DeleteRange(request, timeout=limit, metadata=md)

        response = await self._call(f"delete {key!r}", timeout, invoke)
        return bool(response.deleted > 0)

    async def delete_prefix(self, prefix: str, *, timeout: float | None = None) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        key = self._messages.key(prefix)
        request = rpc.DeleteRangeRequest(key=key, range_end=messages.range_end(key))

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.DeleteRange(request, timeout=limit, metadata=md)

        response = await self._call(f"delete prefix {prefix!r}", timeout, invoke)
        return int(response.deleted)

    async def txn(
        self,
        *,
        compares: Sequence[records.Compare],
        success: Sequence[records.Op],
        failure: Sequence[records.Op] = (),
        timeout: float | None = None,
    ) -> records.TxnResult:
        """One etcd transaction: if every compare holds run ``success``, else ``failure``.

        Returns TxnResult(succeeded, revision); the revision is the store's
        revision after the transaction (unchanged if the branch run wrote nothing).
        etcd limits a transaction to 128 operations and rejects a key written
        twice in one branch (both StoreError).
        """
        build = self._messages
        request = rpc.TxnRequest(
            compare=[build.compare(c) for c in compares],
            success=[build.request_op(op) for op in success],
            failure=[build.request_op(op) for op in failure],
        )

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.kvstub.Txn(request, timeout=limit, metadata=md)

        try:
            response = await self._call("txn", timeout, invoke)
        except errors.LeaseNotFound as exc:
            leases = {op.lease for op in (*success, *failure) if op.lease}
            raise records.LeaseExpired(min(leases) if leases else 0) from exc
        return records.TxnResult(
            succeeded=bool(response.succeeded), revision=response.header.revision
        )

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
        except errors.RevisionCompacted:
            return

    # ---------------------------------------------------------------- leases

    async def grant_lease(self, ttl: int, *, timeout: float | None = None) -> records.Lease:
        """A new lease of ``ttl`` seconds (etcd may round a very short TTL up)."""
        request = rpc.LeaseGrantRequest(TTL=ttl, ID=0)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.leasestub.LeaseGrant(request, timeout=limit, metadata=md)

        response = await self._call("grant lease", timeout, invoke)
        if response.error:
            raise records.StoreError(f"grant lease: {response.error}")
        return records.Lease(id=response.ID, ttl=response.TTL)

    async def refresh_lease(self, lease: records.Lease, *, timeout: float | None = None) -> None:
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
        if response is connections.EOF or response.TTL <= 0:
            raise records.LeaseExpired(lease.id)

    async def revoke_lease(self, lease: records.Lease, *, timeout: float | None = None) -> None:
        """Revoke the lease, deleting its keys; a lease already gone is not an error."""
        request = rpc.LeaseRevokeRequest(ID=lease.id)

        async def invoke(client: Any, md: Any, limit: float) -> Any:
            return await client.leasestub.LeaseRevoke(request, timeout=limit, metadata=md)

        try:
            await self._call("revoke lease", timeout, invoke)
        except errors.LeaseNotFound:
            return

    # ---------------------------------------------------------------- watch

    async def watch_prefix(
        self,
        prefix: str,
        *,
        start_revision: int,
        idle_timeout: float | None = None,
    ) -> AsyncGenerator[records.WatchEvent, None]:
        """Every change under ``prefix`` from ``start_revision`` on, in revision order.

        Raises Compacted if ``start_revision`` is compacted, StoreUnavailable when
        the stream breaks (the caller re-watches from its last revision + 1), and
        StoreTimeout after ``idle_timeout`` seconds without a message, if given.
        All events of one etcd response (so all events of one revision) are
        yielded before the next read, so a break never splits a revision.
        Close the iterator (``contextlib.aclosing``) to cancel the stream promptly.
        """
        start = self._messages.key(prefix)
        create = rpc.WatchCreateRequest(
            key=start,
            range_end=messages.range_end(start),
            start_revision=start_revision,
            progress_notify=idle_timeout is not None,
        )
        what = f"watch {prefix!r} from {start_revision}"
        limit = self._limit(None)
        watch_event = self._messages.watch_event
        try:
            conn = await self._endpoints.acquire()
            call: Any = None
            try:
                # Open the stream and wait for etcd to confirm the watch, bounded.
                with connections.translating(conn, what=what, limit=limit):
                    async with asyncio.timeout(limit):
                        await conn.client.connect()
                        stub = rpc.WatchStub(conn.client.channel)
                        call = stub.Watch(metadata=conn.client.metadata)
                        await call.write(rpc.WatchRequest(create_request=create))
                        response = await call.read()
                _check_watch_response(response, conn=conn, what=what)
                if not response.created:
                    raise records.StoreError(f"{what}: etcd answered the create with {response!r}")
                conn.failed = False
                # Relay events; each read waits for etcd (bounded by keepalive / idle_timeout).
                while True:
                    for event in response.events:
                        yield watch_event(event)
                    with connections.translating(conn, what=what, limit=idle_timeout):
                        async with asyncio.timeout(idle_timeout):
                            response = await call.read()
                    _check_watch_response(response, conn=conn, what=what)
            finally:
                if call is not None:
                    call.cancel()
        except records.StoreError as error:
            self._count_error("watch", error)
            raise


def _check_watch_response(response: Any, *, conn: connections.Connection, what: str) -> None:
    """Raise for a watch message that ends the watch (end of stream, compaction, cancel)."""
    if response is connections.EOF:
        conn.failed = True
        raise records.StoreUnavailable(f"{what}: etcd {conn.endpoint} ended the watch stream")
    if response.compact_revision:
        raise records.Compacted(response.compact_revision)
    if response.canceled:
        raise records.StoreError(f"{what}: etcd cancelled the watch: {response.cancel_reason}")
