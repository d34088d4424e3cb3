"""List-then-watch over an etcd prefix, and the watch-fed cache every replica keeps.

Shaped like kopf's ``watching.py`` (and Kubernetes' reflector):

1. **List** the prefix: a full snapshot at etcd revision R (``Listed``).
2. **Watch** from R + 1, remembering the revision of the last event seen
   (``Changed``, in etcd's revision order).
3. When the connection breaks (:class:`StoreUnavailable`, e.g. etcd restarted),
   back off (capped, jittered) and watch again from last + 1: etcd replays what
   was missed, so nothing is lost and nothing is seen twice.
4. When etcd has compacted the revision we need (:class:`Compacted`, etcd's
   "410 Gone"), the history is gone: list again and yield a new ``Listed``; the
   consumer replaces its state wholesale.

The eternal loop is :func:`follow_prefix`, kept tiny; everything stateful lives
in :class:`WatchCache`, which applies that stream to an in-memory copy of the
prefix. The cache answers ``get``/``scan`` without touching etcd, lets a writer
wait until its own write is visible (``wait_for_revision``), and calls
``on_change(key, old, new)`` for every change it applies. On a re-list it calls
``on_change`` for every difference between the old and the new snapshot, so a
consumer driven only by ``on_change`` never misses a change across compaction.

Read-your-writes for any revision. ``wait_for_revision(R)`` is easy when R is
the revision of a write under the cache's prefix: its event arrives. But R may
come from a write elsewhere (``store.revision()``, a failed transaction's
header, another cluster sharing etcd), and then no event under the prefix ever
carries it. etcd's on-demand progress request cannot settle this on 3.4.23: its
reply may overtake events still queued (fixed only in 3.4.24/3.5.8). So if no
event reaches R within 50 ms, the cache writes a *barrier*: an empty value at
the key equal to its own prefix (``""`` for the whole keyspace, else the prefix
ending in "/"). The barrier's revision is above R, and events arrive in
revision order, so once its event is applied the cache reflects R. Keys that
are empty or end in "/" are therefore reserved: caches never show them as data
(no data key in the layout ends in "/").

Scans must stay cheap with about a million keys (``hoststatus/<pool>/<node>``
for every pool and host), so keys are also kept in a chunked sorted list
(:class:`_SortedKeys`, the layout of ``sortedcontainers.SortedList`` in 80
lines): finding the first key of a prefix is two bisections, inserting or
removing a key moves at most one chunk of ~1,000 references, and a scan costs
the number of keys it returns, never the size of the cache.

Memory matters as much at that size, so a consumer that decodes a family of
keys as they change (the cluster view does, for ``hoststatus/`` and
``poolstatus/``) can tell the cache not to keep their values: ``keep_value``
returning False for a key makes the cache store it with an empty value (and
no create revision or version), while ``on_change`` still receives the full
value to decode. Otherwise every such row would be held twice: as raw JSON
here and decoded by the consumer.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import heapq
import itertools
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator

from qvdc.kits import backoff as backoffs
from qvdc.store import etcd

_log = logging.getLogger(__name__)

_BARRIER_AFTER = 0.05
"""Seconds ``wait_for_revision`` waits for events before it writes a barrier."""

OnChange = Callable[[str, etcd.KeyValue | None, etcd.KeyValue | None], None]
"""``on_change(key, old, new)``: ``old`` None for a new key, ``new`` None for a deleted one.

``new`` always carries the value; ``old`` is what the cache kept (an empty value
for keys whose values it does not keep, see ``keep_value``)."""


def _stripped(kv: etcd.KeyValue) -> etcd.KeyValue:
    """``kv`` as a cache that does not keep its value stores it: key and mod_revision only."""
    return etcd.KeyValue(
        key=kv.key, value=b"", mod_revision=kv.mod_revision, create_revision=0, version=0
    )


def barrier_key(prefix: str) -> str:
    """The barrier key of a cache on ``prefix``: the prefix itself, as a "directory"."""
    return prefix if prefix == "" or prefix.endswith("/") else prefix + "/"


def is_barrier_key(key: str) -> bool:
    """Whether ``key`` is reserved for barriers (empty or ending in "/"), never data."""
    return key == "" or key.endswith("/")


@dataclasses.dataclass(frozen=True)
class Listed:
    """A full snapshot of the prefix at ``revision`` (sorted by key); replaces earlier state."""

    items: list[etcd.KeyValue]
    revision: int


@dataclasses.dataclass(frozen=True)
class Changed:
    """One change after the last ``Listed``, in revision order."""

    event: etcd.WatchEvent


async def follow_prefix(
    store: etcd.EtcdStore,
    prefix: str,
    *,
    backoff_initial: float = 0.1,
    backoff_max: float = 5.0,
    idle_timeout: float | None = None,
) -> AsyncGenerator[Listed | Changed, None]:
    """Yield ``Listed`` then ``Changed`` events forever; re-list on compaction.

    Connection failures are retried after a capped backoff, resuming from the
    last revision seen. Other store errors propagate. ``idle_timeout`` is passed
    to ``watch_prefix`` (re-watch after that much silence).
    """
    backoff = backoffs.Backoff(initial=backoff_initial, maximum=backoff_max)
    last: int | None = None  # None: list (again) before watching
    while True:
        try:
            if last is None:
                items, last = await store.get_prefix(prefix)
                backoff.reset()
                yield Listed(items=items, revision=last)
            events = store.watch_prefix(prefix, start_revision=last + 1, idle_timeout=idle_timeout)
            async with contextlib.aclosing(events):
                async for event in events:
                    last = event.mod_revision
                    backoff.reset()
                    yield Changed(event=event)
            raise etcd.StoreUnavailable(f"watch of {prefix!r} ended")
        except etcd.Compacted as exc:
            _log.info("watch %r: %s; listing again", prefix, exc)
            last = None
        except etcd.StoreUnavailable as exc:
            delay = backoff.next()
            _log.warning("watch %r: %s; resuming after %.2f s", prefix, exc, delay)
            await asyncio.sleep(delay)


class WatchCache:
    """An in-memory copy of one etcd prefix, fed by :func:`follow_prefix`.

    Keys are the store's keys (relative to the store prefix, including this
    cache's ``prefix``). Run :meth:`run` as a supervised task; read with
    :meth:`get` and :meth:`scan`. ``on_change`` runs synchronously inside the
    apply step, after the cache is updated; if it raises, :meth:`run` fails
    (loudly, via its task guard) with the cache already consistent.
    ``keep_value(key)`` False: store that key without its value (see the module
    docstring); ``get`` and ``scan`` then return it with ``value == b""``.
    """

    def __init__(
        self,
        store: etcd.EtcdStore,
        prefix: str,
        *,
        on_change: OnChange | None = None,
        keep_value: Callable[[str], bool] | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._on_change = on_change
        self._keep_value = keep_value
        self._backoff = (backoff_initial, backoff_max)
        self._items: dict[str, etcd.KeyValue] = {}
        self._keys = _SortedKeys()
        self._revision = 0
        self._ready = asyncio.Event()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # heap by revision
        self._waiter_ids = itertools.count()

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def revision(self) -> int:
        """The last applied etcd revision (0 before the first listing)."""
        return self._revision

    @property
    def ready(self) -> bool:
        """Whether the first listing has been applied."""
        return self._ready.is_set()

    def __len__(self) -> int:
        return len(self._items)

    async def run(self) -> None:
        """Follow the prefix forever (until cancelled)."""
        initial, maximum = self._backoff
        stream = follow_prefix(
            self._store, self._prefix, backoff_initial=initial, backoff_max=maximum
        )
        async with contextlib.aclosing(stream):
            async for item in stream:
                if isinstance(item, Listed):
                    self._apply_listing(item)
                else:
                    self._apply_event(item.event)

    async def wait_ready(self, *, timeout: float) -> None:
        """Return once the first listing is applied; StoreTimeout after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            raise etcd.StoreTimeout(
                f"watch cache {self._prefix!r} not listed within {timeout} s"
            ) from None

    async def wait_for_revision(self, revision: int, *, timeout: float) -> None:
        """Return once the cache reflects etcd at ``revision`` or later (read-your-writes).

        Any etcd revision works, also one whose write was outside this prefix
        (e.g. ``await store.revision()``): if no event reaches it soon, the cache
        writes its barrier key (see the module docstring) and returns once that
        event is applied. StoreTimeout after ``timeout`` s.
        """
        if self._revision >= revision:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (revision, next(self._waiter_ids), future))
        try:
            async with asyncio.timeout(timeout):
                done, _ = await asyncio.wait({future}, timeout=_BARRIER_AFTER)
                if not done:
                    await self._write_barrier()
                await future
        except TimeoutError:
            raise etcd.StoreTimeout(
                f"watch cache {self._prefix!r} at revision {self._revision} "
                f"did not reach {revision} within {timeout} s"
            ) from None
        finally:
            future.cancel()  # no-op when done; a cancelled entry is dropped when reached

    async def _write_barrier(self) -> None:
        """Write the barrier key: its event, once applied, proves every earlier one was.

        A failure is logged; the waiter keeps waiting for events until its timeout.
        """
        try:
            revision = await self._store.put(barrier_key(self._prefix), b"")
        except etcd.StoreError as exc:
            _log.warning("watch cache %r: barrier write failed: %s", self._prefix, exc)
        else:
            _log.debug("watch cache %r: barrier at revision %d", self._prefix, revision)

    def get(self, key: str) -> etcd.KeyValue | None:
        """The cached value of ``key``, or None."""
        return self._items.get(key)

    def scan(self, prefix: str) -> list[etcd.KeyValue]:
        """Cached values of every key starting with ``prefix``, sorted by key."""
        items = self._items
        return [items[key] for key in self._keys.with_prefix(prefix)]

    # ------------------------------------------------------------ applying

    def _apply_listing(self, listed: Listed) -> None:
        """Replace the whole state; report every difference to on_change."""
        old = self._items
        full = {kv.key: kv for kv in listed.items if not is_barrier_key(kv.key)}
        keep = self._keep_value
        if keep is None:
            self._items = full
        else:
            self._items = {k: kv if keep(k) else _stripped(kv) for k, kv in full.items()}
        self._keys = _SortedKeys(sorted(full))
        self._revision = listed.revision
        self._ready.set()
        if self._on_change is not None:
            for key, before, after in _diff(old, full):
                self._on_change(key, before, after)
        self._release_waiters()

    def _apply_event(self, event: etcd.WatchEvent) -> None:
        """Apply one change. Cases: barrier key, put of a new key, put of a known key, delete."""
        key = event.key
        if is_barrier_key(key):  # advances the revision (below), never visible as data
            self._revision = max(self._revision, event.mod_revision)
            self._release_waiters()
            return
        before = self._items.get(key)
        after: etcd.KeyValue | None
        if event.kind == "delete":
            after = None
            if before is not None:
                del self._items[key]
                self._keys.remove(key)
        else:
            after = etcd.KeyValue(
                key=key,
                value=event.value,
                mod_revision=event.mod_revision,
                create_revision=event.create_revision,
                version=event.version,
            )
            keep = self._keep_value
            self._items[key] = after if keep is None or keep(key) else _stripped(after)
            if before is None:
                self._keys.add(key)
        self._revision = max(self._revision, event.mod_revision)
        if self._on_change is not None and (before is not None or after is not None):
            self._on_change(key, before, after)
        self._release_waiters()

    def _release_waiters(self) -> None:
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._revision:
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)


def _diff(
    old: dict[str, etcd.KeyValue], new: dict[str, etcd.KeyValue]
) -> list[tuple[str, etcd.KeyValue | None, etcd.KeyValue | None]]:
    """Every (key, old, new) that differs between two snapshots, sorted by key.

    Same mod_revision means the same version of a key, so only keys whose
    mod_revision changed, appeared or disappeared are reported.
    """
    changes: list[tuple[str, etcd.KeyValue | None, etcd.KeyValue | None]] = []
    for key, after in new.items():
        before = old.get(key)
        if before is None or before.mod_revision != after.mod_revision:
            changes.append((key, before, after))
    changes.extend((key, before, None) for key, before in old.items() if key not in new)
    changes.sort(key=lambda change: change[0])
    return changes


class _SortedKeys:
    """A sorted set of strings stored as sorted chunks (bisect on the chunk maxima).

    ``add``/``remove`` cost O(log n + chunk); ``with_prefix`` costs O(log n + k).
    """

    _LOAD = 1000  # chunks are split above 2 x _LOAD keys

    def __init__(self, keys: Iterable[str] = ()) -> None:
        ordered = list(keys)  # callers pass sorted, distinct keys
        load = self._LOAD
        self._chunks: list[list[str]] = [
            ordered[i : i + load] for i in range(0, len(ordered), load)
        ]
        self._maxes: list[str] = [chunk[-1] for chunk in self._chunks]

    def __len__(self) -> int:
        return sum(len(chunk) for chunk in self._chunks)

    def add(self, key: str) -> None:
        """Insert ``key`` (which must not be present)."""
        chunks, maxes = self._chunks, self._maxes
        if not chunks:
            chunks.append([key])
            maxes.append(key)
            return
        i = min(bisect.bisect_left(maxes, key), len(chunks) - 1)
        chunk = chunks[i]
        bisect.insort(chunk, key)
        maxes[i] = chunk[-1]
        if len(chunk) > 2 * self._LOAD:
            half = len(chunk) // 2
            chunks[i : i + 1] = [chunk[:half], chunk[half:]]
            maxes[i : i + 1] = [chunk[half - 1], chunk[-1]]

    def remove(self, key: str) -> None:
        """Remove ``key``; KeyError if absent."""
        chunks, maxes = self._chunks, self._maxes
        i = bisect.bisect_left(maxes, key)
        if i < len(chunks):
            chunk = chunks[i]
            j = bisect.bisect_left(chunk, key)
            if j < len(chunk) and chunk[j] == key:
                del chunk[j]
                if chunk:
                    maxes[i] = chunk[-1]
                else:
                    del chunks[i]
                    del maxes[i]
                return
        raise KeyError(key)

    def with_prefix(self, prefix: str) -> Iterator[str]:
        """The keys starting with ``prefix``, in order."""
        chunks = self._chunks
        i = bisect.bisect_left(self._maxes, prefix)
        if i >= len(chunks):
            return
        start = bisect.bisect_left(chunks[i], prefix)
        while i < len(chunks):
            for key in itertools.islice(chunks[i], start, None):
                if not key.startswith(prefix):
                    return
                yield key
            i += 1
            start = 0
