"""The connection to etcd: one gRPC channel at a time, failing over between endpoints.

``open_first`` probes the endpoints in order and keeps the first that answers.
A call that fails with :class:`StoreUnavailable` marks its connection failed;
with more than one endpoint the next ``acquire`` opens the next endpoint in
turn and closes the failed connection (its open watches then fail and their
callers re-watch, landing on the new endpoint). With one endpoint the channel
stays: gRPC reconnects by itself, with its backoff capped at 2 s here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

import aetcd
import grpc.aio  # type: ignore[import-untyped]  # aetcd's transport; only for its EOF marker
from aetcd import rpc

from qvdc.settings import EtcdSettings
from qvdc.store import records
from qvdc.store.etcd import errors

_log = logging.getLogger(__name__)

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

EOF: Any = grpc.aio.EOF
"""What ``call.read()`` returns at the end of a gRPC stream."""


@dataclasses.dataclass(eq=False)
class Connection:
    """One aetcd client (one gRPC channel) to one endpoint."""

    endpoint: str
    client: Any  # aetcd.Client (untyped)
    failed: bool = False


def _open_connection(endpoint: str) -> Connection:
    host, _, port = endpoint.rpartition(":")
    client = aetcd.Client(host=host, port=int(port), options=dict(_GRPC_OPTIONS))
    return Connection(endpoint=endpoint, client=client)


class Endpoints:
    """The current connection among ``settings.endpoints``, and the ones being closed."""

    def __init__(self, *, settings: EtcdSettings, probe_key: bytes) -> None:
        self._settings = settings
        self._probe_key = probe_key
        self._endpoints = settings.endpoints
        self._index = 0
        self._conn: Connection | None = None
        self._retired: list[Connection] = []
        self._closed = False

    async def open_first(self) -> None:
        """Keep the first endpoint that answers; StoreUnavailable naming each failure if none."""
        if not self._endpoints:
            raise records.StoreError("no etcd endpoints configured (start an EmbeddedEtcd first)")
        failures: list[str] = []
        for index, endpoint in enumerate(self._endpoints):
            conn = _open_connection(endpoint)
            try:
                await self._probe(conn)
            except records.StoreError as exc:
                failures.append(f"{endpoint}: {exc}")
                await self._close_connection(conn)
                continue
            self._conn = conn
            self._index = index
            return
        raise records.StoreUnavailable("no etcd endpoint answered: " + "; ".join(failures))

    async def _probe(self, conn: Connection) -> None:
        limit = self._settings.timeout
        with translating(conn, what="connect", limit=limit):
            async with asyncio.timeout(limit):
                await conn.client.connect()
                request = rpc.RangeRequest(key=self._probe_key, count_only=True)
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

    async def _close_connection(self, conn: Connection) -> None:
        """Close one client, bounded; a failure to close is logged, not raised."""
        try:
            async with asyncio.timeout(self._settings.timeout):
                await conn.client.close()
        except Exception as exc:  # noqa: BLE001 - best-effort close; logged, never raised
            _log.warning("closing etcd client for %s failed: %r", conn.endpoint, exc)

    async def acquire(self) -> Connection:
        """The connection for the next call; opens the next endpoint after a failure.

        The caller still awaits ``conn.client.connect()`` (no I/O: it creates the
        channel and stubs once) inside its own timeout.
        """
        if self._closed or self._conn is None:
            raise records.StoreError("etcd store is closed" if self._closed else "not connected")
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


@contextlib.contextmanager
def translating(conn: Connection, *, what: str, limit: float | None) -> Iterator[None]:
    """Map client exceptions raised inside to StoreError; others pass unchanged.

    A StoreUnavailable marks ``conn`` failed, so the next call may move to
    another endpoint.
    """
    try:
        yield
    except Exception as exc:
        error = errors.map_exception(exc, endpoint=conn.endpoint, what=what, limit=limit)
        if isinstance(error, records.StoreUnavailable):
            conn.failed = True
        if error is exc:
            raise
        raise error from exc
