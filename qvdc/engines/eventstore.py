"""The event history: node and pool transitions kept in etcd, newest N per subject.

The transitions the controller logs as events (``qvdc.kits.eventlog``: node.offline,
node.recovered, node.phase, pool.phase, host.health) are logged once each, by the replica
that made the transition (the node's judge, the aggregation leader, the API replica that
changed an operator phase). That code path hands the event to :meth:`EventStore.record`
(its ``sink``), so each is stored once too, by that replica.

Keys (relative to the event prefix, :func:`events_prefix`: beside the replica's keyspace,
not in it, so the cluster view never lists or watches the history)::

    nodes/<node_id>/<time-ordered id>       node.*, host.health (also names the pool)
    pools/<pool_id>/<time-ordered id>       pool.phase, pool.deleted
    replicas/<replica_id>/<time-ordered id> the rest: liveness.frozen / unfrozen,
                                            leader.acquired / lost (about that replica)

The time-ordered id is the wall time in microseconds (16 digits) and the event's id, so
keys sort oldest first. The value is JSON (:func:`encode` / :func:`decode`).

Bounded history, off the hot path:

* :meth:`record` only queues (``EventSettings.queue``); a full queue drops the event,
  counted (``dropped``) and logged at most every 10 s. It never blocks or raises.
* :meth:`run` writes queued events in batches, one transaction each, every key on a
  lease of ``EventSettings.retention`` seconds (one lease serves a window of about 1 %
  of the retention, so an event lives between the retention and 1 % more). A batch etcd
  refuses or does not answer is dropped, counted and logged; the writer backs off and
  goes on. An etcd outage therefore costs events, never a heartbeat or a liveness pass.
* Each subject is trimmed to its newest ``EventSettings.history`` events: the writer
  counts what it wrote per subject and reads and trims the subject once it may be over
  the bound by a tenth of it (readers cut to the bound as well, so no reader sees more).

Live delivery (:meth:`subscribe`): a replica follows the event prefix with one etcd watch
while it has subscribers (StreamEvents), from the revision current when the first one
came, and hands every new event to each subscriber's bounded queue. A subscriber whose
queue is full is marked overflowed and ends (the API answers RESOURCE_EXHAUSTED); the
others are not slowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

from qvdc.engines.view import ClusterView
from qvdc.kits import eventlog
from qvdc.kits.timing import Clock
from qvdc.settings import EventSettings
from qvdc.store import etcd
from qvdc.store.etcd import Compacted, EtcdStore, Lease, Op, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

NODES = "nodes/"
POOLS = "pools/"
REPLICAS = "replicas/"

#: Events per write transaction (etcd's default --max-txn-ops is 128).
BATCH = 64
#: Seconds between "dropped" log lines.
_DROP_LOG_EVERY = 10.0
#: Writer backoff after a failed batch, seconds (doubling up to the cap).
_BACKOFF = (0.2, 5.0)


def events_prefix(prefix: str) -> str:
    """The event prefix of a keyspace prefix: ``/quantix/`` -> ``/quantix-events/``."""
    return prefix.rstrip("/") + "-events/"


def node_events(node_id: str) -> str:
    return f"{NODES}{node_id}/"


def pool_events(pool_id: str) -> str:
    return f"{POOLS}{pool_id}/"


def replica_events(replica_id: str) -> str:
    return f"{REPLICAS}{replica_id}/"


@dataclasses.dataclass(frozen=True, slots=True)
class StoredEvent:
    """One event of the history."""

    id: str  # the event's id (eventlog.new_event_id), unique across replicas
    name: str  # node.offline, pool.phase, ...
    level: int  # logging level it was logged at
    message: str
    at: float  # wall time, seconds
    node_id: str = ""
    pool_id: str = ""
    hostname: str = ""  # the node's, when it names one
    pool_name: str = ""  # the pool's, when it names one
    replica: str = ""  # the replica that made the transition
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def subject(self) -> str:
        """The key prefix it is stored under."""
        if self.node_id:
            return node_events(self.node_id)
        return pool_events(self.pool_id) if self.pool_id else replica_events(self.replica)

    @property
    def key(self) -> str:
        return f"{self.subject}{int(self.at * 1_000_000):016d}-{self.id}"


def encode(event: StoredEvent) -> bytes:
    doc: dict[str, Any] = {
        "id": event.id,
        "name": event.name,
        "level": logging.getLevelName(event.level),
        "message": event.message,
        "at": event.at,
    }
    for name in ("node_id", "pool_id", "hostname", "pool_name", "replica"):
        value = getattr(event, name)
        if value:
            doc[name] = value
    if event.fields:
        doc["fields"] = dict(event.fields)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class Undecodable(ValueError):
    pass


def decode(value: bytes) -> StoredEvent:
    try:
        doc = json.loads(value)
        level = logging.getLevelName(doc.get("level", "INFO"))
        fields = doc.get("fields") or {}
        return StoredEvent(
            id=str(doc["id"]),
            name=str(doc["name"]),
            level=level if isinstance(level, int) else logging.INFO,
            message=str(doc.get("message", "")),
            at=float(doc["at"]),
            node_id=str(doc.get("node_id", "")),
            pool_id=str(doc.get("pool_id", "")),
            hostname=str(doc.get("hostname", "")),
            pool_name=str(doc.get("pool_name", "")),
            replica=str(doc.get("replica", "")),
            fields={str(k): str(v) for k, v in dict(fields).items()},
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise Undecodable(f"not an event: {exc}") from exc


def _text(value: object) -> str:
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    name = getattr(value, "name", None)  # enums, as the logs print them
    return name if isinstance(name, str) else str(value)


class Subscription:
    """One live reader of new events (a StreamEvents call)."""

    __slots__ = ("_queue", "overflowed")

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[StoredEvent] = asyncio.Queue(maxsize=size)
        #: The reader fell ``size`` events behind: it gets no more.
        self.overflowed = asyncio.Event()

    def _offer(self, event: StoredEvent) -> None:
        if self.overflowed.is_set():
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed.set()

    async def next(self) -> StoredEvent | None:
        """The next event, or None once the subscription overflowed."""
        if self.overflowed.is_set():
            return None
        get = asyncio.ensure_future(self._queue.get())
        over = asyncio.ensure_future(self.overflowed.wait())
        try:
            await asyncio.wait({get, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
            if not get.done():
                get.cancel()
        if self.overflowed.is_set():
            return None
        return get.result()


class TooManySubscribers(Exception):
    pass


class EventStore:
    def __init__(
        self,
        *,
        store: EtcdStore,
        view: ClusterView,
        clock: Clock,
        settings: EventSettings,
        replica_id: str,
        timeout: float,
    ) -> None:
        #: The store over the event prefix (a sibling of the replica's: same connections).
        self.store = store.sibling(events_prefix(store.settings.prefix))
        self._view = view
        self._clock = clock
        self.settings = settings
        self._replica = replica_id
        self._timeout = timeout
        self._queue: asyncio.Queue[StoredEvent] = asyncio.Queue(maxsize=settings.queue)
        # subject -> events written since it was last trimmed (plus what was there then)
        self._since_trim: dict[str, int] = {}
        self._trimmed_once: set[str] = set()  # subjects read (and trimmed) since start
        self._last_at = 0.0  # keeps this replica's keys strictly time-ordered
        self._lease: Lease | None = None
        self._lease_until = 0.0  # monotonic time after which a new lease is granted
        self._subscribers: set[Subscription] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._last_drop_log = -math.inf
        self._dropped_unlogged = 0
        #: Counters (tests, metrics): events written, dropped (queue full or etcd
        #: failed), deleted by the trim.
        self.written = 0
        self.dropped = 0
        self.trimmed = 0

    # --- recording (the sink) -------------------------------------------------------

    def record(self, event: eventlog.Event) -> None:
        """The events' sink: queue ``event`` for writing, or drop it (never blocks)."""
        fields = event.fields
        node_id = _text(fields.get("node_id"))
        pool_id = _text(fields.get("pool_id"))
        hostname = ""
        if node_id:
            record = self._view.node(node_id)
            hostname = record.hostname if record is not None else ""
        pool_name = ""
        if pool_id:
            pool = self._view.pool(pool_id)
            pool_name = pool.name if pool is not None else ""
        at = self._last_at = max(self._clock.time(), self._last_at + 1e-6)
        stored = StoredEvent(
            id=event.id,
            name=event.name,
            level=event.level,
            message=event.message,
            at=at,
            node_id=node_id,
            pool_id=pool_id,
            hostname=hostname,
            pool_name=pool_name,
            replica=self._replica,
            fields={k: _text(v) for k, v in fields.items() if k not in ("node_id", "pool_id")},
        )
        try:
            self._queue.put_nowait(stored)
        except asyncio.QueueFull:
            self._drop(1, f"the queue of {self.settings.queue} events is full")

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self._dropped_unlogged += count
        now = self._clock.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY:
            log.warning(
                "event history: dropped %d event(s) (%d in all): %s",
                self._dropped_unlogged,
                self.dropped,
                why,
            )
            self._last_drop_log = now
            self._dropped_unlogged = 0

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # --- writing -------------------------------------------------------------------

    async def run(self) -> None:
        """Write queued events forever (a root loop of the replica)."""
        backoff = _BACKOFF[0]
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            except (StoreError, TimeoutError) as exc:
                self._drop(len(batch), f"etcd did not take them: {exc}")
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF[1], backoff * 2)
                continue
            except Exception:
                log.exception("event history: a batch of %d failed", len(batch))
                self.dropped += len(batch)
                continue
            backoff = _BACKOFF[0]
            try:
                await self._trim({e.subject for e in batch})
            except (StoreError, TimeoutError) as exc:
                # Written, not yet trimmed: the subject stays marked and is trimmed at its
                # next write; readers never show more than the bound meanwhile.
                log.info("event history: trimming deferred (%s)", exc)

    async def _lease_id(self) -> int:
        now = self._clock.monotonic()
        if self._lease is None or now >= self._lease_until:
            retention = self.settings.retention
            window = max(60.0, retention / 100)
            self._lease = await self.store.grant_lease(
                math.ceil(retention + window), timeout=self._timeout
            )
            self._lease_until = now + window
        return self._lease.id

    async def _write(self, batch: list[StoredEvent]) -> None:
        for attempt in (1, 2):
            lease = await self._lease_id()
            ops = [Op.put(e.key, encode(e), lease=lease) for e in batch]
            try:
                await self.store.txn(compares=[], success=ops, timeout=self._timeout)
            except etcd.LeaseExpired:
                self._lease = None  # revoked or expired under us: a new one, once
                if attempt == 2:
                    raise
                continue
            break
        self.written += len(batch)
        for e in batch:
            self._since_trim[e.subject] = self._since_trim.get(e.subject, 0) + 1

    async def _trim(self, subjects: set[str]) -> None:
        bound = self.settings.history
        slack = max(1, bound // 10)
        for subject in subjects:
            count = self._since_trim.get(subject, 0)
            # Unknown subject (first write since start): look once; then only when over.
            if subject in self._trimmed_once and count <= bound + slack:
                continue
            kvs, _ = await self.store.get_prefix(subject, timeout=self._timeout)
            self._trimmed_once.add(subject)
            excess = [kv.key for kv in kvs[: max(0, len(kvs) - bound)]]
            for i in range(0, len(excess), 128):
                chunk = excess[i : i + 128]
                await self.store.txn(
                    compares=[], success=[Op.delete(k) for k in chunk], timeout=self._timeout
                )
                self.trimmed += len(chunk)
            self._since_trim[subject] = len(kvs) - len(excess)
        if len(self._trimmed_once) > 1_000_000:  # bounded: forgetting only costs a read
            self._trimmed_once.clear()
            self._since_trim.clear()

    # --- reading -------------------------------------------------------------------

    async def node_history(self, node_id: str) -> list[StoredEvent]:
        """The node's kept events, newest first (at most ``history``)."""
        kvs, _ = await self.store.get_prefix(node_events(node_id), timeout=self._timeout)
        events = []
        for kv in reversed(kvs):
            try:
                events.append(decode(kv.value))
            except Undecodable as exc:
                log.warning("event history: ignoring %s: %s", kv.key, exc)
            if len(events) >= self.settings.history:
                break
        return events

    # --- live delivery ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(self) -> Any:
        """A :class:`Subscription` to every event written from now on, while in the block.
        Raises :class:`TooManySubscribers` past ``max_subscribers``, and StoreError if the
        watch cannot start (etcd unreachable)."""
        if len(self._subscribers) >= self.settings.max_subscribers:
            raise TooManySubscribers(
                f"{len(self._subscribers)} event streams are open on this replica, the most "
                "it serves (events.max_subscribers)"
            )
        sub = Subscription(self.settings.subscriber_queue)
        self._subscribers.add(sub)
        try:
            if self._watcher is None or self._watcher.done():
                revision = await self.store.revision(timeout=self._timeout)
                if self._watcher is None or self._watcher.done():
                    self._watcher = asyncio.create_task(
                        self._follow(revision + 1), name="event-history-watch"
                    )
            yield sub
        finally:
            self._subscribers.discard(sub)
            if not self._subscribers and self._watcher is not None:
                watcher, self._watcher = self._watcher, None
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def _follow(self, start: int) -> None:
        """Hand every event put under the prefix from ``start`` on to the subscribers."""
        backoff = _BACKOFF[0]
        while True:
            try:
                async with contextlib.aclosing(
                    self.store.watch_prefix("", start_revision=start)
                ) as changes:
                    async for change in changes:
                        start = change.mod_revision + 1
                        backoff = _BACKOFF[0]
                        if change.kind != "put":
                            continue  # trimmed or expired
                        try:
                            event = decode(change.value)
                        except Undecodable as exc:
                            log.warning("event history: ignoring %s: %s", change.key, exc)
                            continue
                        for sub in list(self._subscribers):
                            sub._offer(event)
            except Compacted as exc:
                log.warning("event history watch: %s; following from now on", exc)
                start = exc.compact_revision
            except StoreUnavailable as exc:
                log.info("event history watch broke (%s); resuming in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF[1], backoff * 2)
            except StoreError as exc:
                log.warning("event history watch failed (%s); resuming in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF[1], backoff * 2)
            except Exception:
                # A bug, not etcd: logged with its traceback, and the subscribers are not
                # left waiting on a watch that died.
                log.exception("event history watch failed; resuming in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(_BACKOFF[1], backoff * 2)
