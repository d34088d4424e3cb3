"""What etcd saw: every write under the controller's prefix, through one watch.

:class:`EtcdObserver` watches the whole keyspace from a revision on and records, per
event, its revision, its key family (``hoststatus``, ``poolstatus``, ``nodestatus``, ...
under the controller's ``/quantix/`` prefix; the first path segment for the keys the
controller keeps beside it, such as ``quantix-events``) and when this process saw it
(``time.monotonic()``). While lag tracking is on, it also keeps the values of
``poolstatus/`` events, decoded into host rows after the phase
(:func:`stats.rows_of_pool_status`), to time when a change became visible in
its pool's aggregate.

The whole keyspace, not just the prefix: a write beside it (an event record) moves
etcd's revision too, and :meth:`EtcdObserver.quiesce` waits for the watch to deliver
that revision. Counting by revision range makes the numbers exact: the harness waits until
etcd is quiet before and after a phase, reads etcd's revision, and counts the
events between the two. etcd's own Prometheus counters
(``etcd_mvcc_put_total`` ...) are read as a cross-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.heartbeat import stats
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore, StoreError


@dataclass(frozen=True, slots=True)
class _Event:
    revision: int
    family: str
    seen_at: float
    pool_id: str
    value: bytes | None


class EtcdObserver:
    """Counts and timestamps every write under the prefix; see the module docstring."""

    def __init__(self, *, endpoint: str, prefix: str = "/quantix/") -> None:
        self.endpoint = endpoint
        self._prefix = prefix
        self._store: EtcdStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._events: list[_Event] = []
        self.revision = 0
        self._advanced = asyncio.Event()
        self.track_values = False

    async def connect(self) -> None:
        self._store = await EtcdStore.connect(
            settings=EtcdSettings(endpoints=(self.endpoint,), prefix="/", timeout=10.0)
        )

    @property
    def store(self) -> EtcdStore:
        """The whole keyspace (keys relative to ``/``)."""
        assert self._store is not None, "connect() first"
        return self._store

    @property
    def controller_store(self) -> EtcdStore:
        """The controller's keyspace (keys relative to its prefix)."""
        return self.store.sibling(self._prefix)

    async def current_revision(self) -> int:
        return await self.store.revision()

    def start(self, from_revision: int) -> None:
        """Watch from ``from_revision + 1`` on, in the background."""
        self.revision = from_revision
        self._task = asyncio.create_task(self._follow(from_revision + 1), name="etcd-observer")

    async def _follow(self, start: int) -> None:
        while True:
            events = self.store.watch_prefix("", start_revision=start)
            try:
                async with contextlib.aclosing(events):
                    async for event in events:
                        now = time.monotonic()
                        key = "/" + event.key
                        if key.startswith(self._prefix):
                            family, _, rest = key[len(self._prefix) :].partition("/")
                        else:  # beside the prefix: its first segment
                            family, rest = event.key.partition("/")[0], ""
                        pool_id = rest if family == "poolstatus" else ""
                        keep = self.track_values and family == "poolstatus" and event.kind == "put"
                        self._events.append(
                            _Event(
                                event.mod_revision,
                                family if event.kind == "put" else family + ":delete",
                                now,
                                pool_id,
                                event.value if keep else None,
                            )
                        )
                        self.revision = max(self.revision, event.mod_revision)
                        self._advanced.set()
                        start = event.mod_revision + 1
            except StoreError:
                await asyncio.sleep(0.2)  # etcd hiccup: resume from the last revision

    async def caught_up(self, revision: int, *, timeout: float) -> None:
        """Wait until the watch has delivered everything up to ``revision``."""
        async with asyncio.timeout(timeout):
            while self.revision < revision:
                self._advanced.clear()
                await self._advanced.wait()

    async def quiesce(
        self, *, quiet: float, timeout: float, cpu: Callable[[], float] | None = None
    ) -> int:
        """Wait until etcd's revision stays put for ``quiet`` seconds and, if ``cpu`` (the
        server's CPU seconds) is given, the server is idle too (under 10 % of a core: a
        controller busy computing a large batch may write nothing for a while); return
        that revision. Gives up waiting after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last = await self.current_revision()
        stable_since = time.monotonic()
        busy = cpu() if cpu is not None else 0.0
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, quiet / 2))
            now_rev = await self.current_revision()
            now = time.monotonic()
            if cpu is not None:
                used = cpu()
                if used - busy > 0.1 * (now - stable_since):
                    busy, stable_since = used, now
                    last = now_rev
                    continue
            if now_rev != last:
                last, stable_since = now_rev, now
                if cpu is not None:
                    busy = cpu()
            elif now - stable_since >= quiet:
                break
        if self._task is not None:
            await self.caught_up(last, timeout=max(5.0, deadline - time.monotonic()))
        return last

    def counts(self, after: int, upto: int) -> Counter[str]:
        """Writes per key family with ``after < revision <= upto``."""
        return Counter(e.family for e in self._events if after < e.revision <= upto)

    def observations(self, after: int, upto: int) -> list[stats.Observation]:
        """Decoded ``poolstatus`` values seen with ``after < revision <= upto``."""
        out = []
        for e in self._events:
            if e.value is not None and after < e.revision <= upto:
                out.append(
                    stats.Observation(
                        pool_id=e.pool_id,
                        seen_at=e.seen_at,
                        rows=stats.rows_of_pool_status(e.value),
                    )
                )
        return out

    def forget(self, upto: int) -> None:
        """Drop what was recorded up to ``upto`` (keeps memory flat across phases)."""
        self._events = [e for e in self._events if e.revision > upto]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._store is not None:
            await self._store.close()
            self._store = None


def etcd_metrics(endpoint: str, names: tuple[str, ...]) -> dict[str, float]:
    """Selected samples from etcd's Prometheus ``/metrics`` (``name value`` lines; a
    histogram bucket's name includes its label, as in ``METRICS``)."""
    host, _, port = endpoint.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    out = dict.fromkeys(names, 0.0)
    for line in body.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        if name in out:
            out[name] = float(value)
    return out


SLOW_S = "0.128"
"""A WAL fsync or backend commit above this many seconds counts as an etcd stall (an
upper bound of etcd's histogram buckets; etcd itself logs applies above 100 ms)."""

METRICS = (
    "etcd_mvcc_put_total",
    "etcd_mvcc_delete_total",
    "etcd_mvcc_txn_total",
    "etcd_debugging_mvcc_total_put_size_in_bytes",
    # etcd stalls, which the aggregation lag waits behind twice (host row, then aggregate):
    "etcd_server_slow_apply_total",
    "etcd_disk_wal_fsync_duration_seconds_count",
    f'etcd_disk_wal_fsync_duration_seconds_bucket{{le="{SLOW_S}"}}',
    "etcd_disk_backend_commit_duration_seconds_count",
    f'etcd_disk_backend_commit_duration_seconds_bucket{{le="{SLOW_S}"}}',
)
