"""The connection to etcd: one gRPC channel at a time, failing over between endpoints.

``open_first`` probes the endpoints in order and keeps the first that answers.
A call that fails with :class:`StoreUnavailable` marks its connection failed;
with more than one endpoint the next ``acquire`` opens the next endpoint in
turn and closes the failed connection (its open watches then fail and their
callers re-watch, landing on the new endpoint). With one endpoint the channel
stays: gRPC reconnects by itself, with its backoff capped at 2 s here.

An external etcd may need TLS (``EtcdSettings.tls_ca``, with a client certificate for
its ``--client-cert-auth``) and a user (``EtcdSettings.user``, etcd's ``auth enable``).
The files are read whenever a connection is opened, so a rotated certificate or
password is used from the next connection on. aetcd authenticates once per
connection and keeps the token; when etcd no longer accepts it (auth was disabled
and enabled again, the token expired, the password changed) a call fails with
:class:`errors.AuthTokenInvalid`, a StoreUnavailable, and the next call opens a new
connection, which authenticates again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aetcd
import grpc  # type: ignore[import-untyped]  # aetcd's transport
import grpc.aio  # type: ignore[import-untyped]
from aetcd import rpc, watcher
from aetcd.client import _handle_errors

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
    reopen: bool = False
    """Open a new connection for the next call, even to the same endpoint (its
    authentication token is no longer accepted)."""


class TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd is untyped
    """aetcd's client over TLS. aetcd 1.0.0 only opens plain-text channels, so
    :meth:`connect` is aetcd's own with the channel made by ``grpc.aio.secure_channel``
    (tests/qvdc/store/test_etcd_security.py pins aetcd's original)."""

    _is_connecting: bool  # aetcd's

    def __init__(self, *, credentials: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    @_handle_errors  # type: ignore[untyped-decorator]
    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            self.channel = grpc.aio.secure_channel(
                target, self._credentials, options=self._options.items()
            )
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                request = rpc.AuthenticateRequest(name=self._username, password=self._password)
                resp = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                self.metadata = (("token", resp.token),)
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self._watcher = watcher.Watcher(
                rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise records.StoreError(f"cannot read the etcd {what} {path}: {exc.strerror}") from None


def _open_connection(endpoint: str, settings: EtcdSettings) -> Connection:
    """A client for ``endpoint``, reading the TLS and password files now (StoreError if
    one cannot be read). No I/O to etcd: ``connect()`` opens the channel."""
    host, _, port = endpoint.rpartition(":")
    options: dict[str, Any] = {
        "host": host,
        "port": int(port),
        "options": dict(_GRPC_OPTIONS),
        "timeout": settings.timeout,
    }
    if settings.user and settings.password_file is not None:
        password = _read(settings.password_file, "password file").decode().rstrip("\r\n")
        options.update(username=settings.user, password=password)
    if settings.tls_ca is None:
        return Connection(endpoint=endpoint, client=aetcd.Client(**options))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(settings.tls_ca, "CA certificate"),
        private_key=_read(settings.tls_key, "client key") if settings.tls_key else None,
        certificate_chain=_read(settings.tls_cert, "client certificate")
        if settings.tls_cert
        else None,
    )
    return Connection(endpoint=endpoint, client=TlsClient(credentials=credentials, **options))


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
            try:
                conn = _open_connection(endpoint, self._settings)
            except records.StoreError as exc:
                failures.append(f"{endpoint}: {exc}")
                continue
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
        # The same with one endpoint when the connection must be reopened.
        if conn.failed and (len(self._endpoints) > 1 or conn.reopen):
            index = (self._index + 1) % len(self._endpoints)
            fresh = _open_connection(self._endpoints[index], self._settings)
            self._index = index
            failed, conn = conn, fresh
            if failed.reopen:
                _log.warning(
                    "etcd %s refused the authentication token; reconnecting to %s",
                    failed.endpoint,
                    conn.endpoint,
                )
            else:
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

    grpc.aio answers a call open on a channel that is closed (a failed connection
    retired by :meth:`Endpoints.acquire`) with ``CancelledError``, though nobody
    cancelled the caller's task: that is StoreUnavailable too, so the caller retries
    on the new connection. A real cancellation of the task (``cancelling()``) is
    re-raised unchanged.
    """
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        conn.failed = True
        raise records.StoreUnavailable(
            f"etcd {conn.endpoint}: {what}: the connection was closed under the call"
        ) from None
    except Exception as exc:
        error = errors.map_exception(exc, endpoint=conn.endpoint, what=what, limit=limit)
        if isinstance(error, records.StoreUnavailable):
            conn.failed = True
        if isinstance(error, errors.AuthTokenInvalid):
            conn.reopen = True
        if error is exc:
            raise
        raise error from exc
