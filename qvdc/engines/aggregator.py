"""Watch-driven aggregation of each pool's phase, capacity and host table.

Runs on the elected leader only. It subscribes to the cluster view's change
feed and marks *only the pools an event touched* as dirty:

* ``pools/<P>``, ``hoststatus/<P>/<N>``, ``poolstatus/<P>`` -> P;
* ``assignments/<N>/<P>`` -> P;
* ``nodestatus/<N>`` (liveness flipped) -> every pool N is assigned or has a row in.

One worker drains the dirty set: each pool is recomputed with the pure
``domain.aggregation.aggregate_pool`` and written to ``poolstatus/<P>`` only if
the result differs from what is stored. Writes are compare-and-swap on the
key's ``mod_revision``, batched into multi-op transactions; a failed compare
(another writer got there first) re-marks the pool so it is recomputed on
fresh data. A single worker means a pool is never recomputed concurrently
with itself (per-pool serialization), and batching keeps the write rate low
when many pools change together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from qvdc.domain import aggregation
from qvdc.domain.model import NodeId, PoolAggregate
from qvdc.engines.view import ClusterView
from qvdc.kits.backoff import Backoff
from qvdc.kits.timing import Clock
from qvdc.store import codec, keys
from qvdc.store.etcd import Compare, EtcdStore, KeyValue, Op, StoreError

log = logging.getLogger(__name__)

MAX_TXN_OPS = 64  # each pool costs one compare and one op


class Aggregator:
    def __init__(
        self,
        *,
        store: EtcdStore,
        view: ClusterView,
        clock: Clock,
        timeout: float,
        coalesce: float = 0.002,
        on_written: Callable[[str, PoolAggregate], None] | None = None,
    ) -> None:
        self._store = store
        self._view = view
        self._clock = clock
        self._timeout = timeout
        self._coalesce = coalesce
        self._on_written = on_written
        self._dirty: set[str] = set()
        # pool -> the value we are writing, to ignore it coming back through the watch
        # (whether that happens before or after the txn answers); the view does not decode
        # it either (expect() in _plan). Dropped when it comes back or the write fails.
        self._in_flight: dict[str, bytes] = {}
        self._wakeup = asyncio.Event()
        self._active = False
        view.subscribe(self._on_change)
        #: Counters for tests and the benchmark.
        self.recomputed = 0
        self.written = 0

    def _on_change(self, key: str, old: KeyValue | None, new: KeyValue | None) -> None:
        if not self._active:
            return
        parts = key.split("/")
        kind = parts[0]
        pool_keyed = kind in ("pools", "poolstatus") and len(parts) == 2
        if kind == "poolstatus" and pool_keyed and new is not None:
            own = self._in_flight.get(parts[1])
            if own is not None and own == new.value:
                del self._in_flight[parts[1]]
                return  # our own write coming back through the watch: nothing to redo
        if pool_keyed or (kind == "hoststatus" and len(parts) == 3):
            self._mark(parts[1])
        elif kind == "assignments" and len(parts) == 3:
            self._mark(parts[2])
        elif kind == "nodestatus" and len(parts) == 2:
            node_id = parts[1]
            for pool_id in self._pools_of_node(node_id):
                self._mark(pool_id)

    def _pools_of_node(self, node_id: str) -> set[str]:
        return set(self._view.assigned_pool_ids(node_id)).union(self._view.rows_of(node_id))

    def _mark(self, pool_id: str) -> None:
        self._dirty.add(pool_id)
        self._wakeup.set()

    def compute(self, pool_id: str) -> PoolAggregate | None:
        """The aggregate the pool should have now; None if the pool no longer exists."""
        pool = self._view.pool(pool_id)
        if pool is None:
            return None
        statuses = self._view.host_statuses(pool_id)
        candidates = set(pool.assigned_node_ids) | set(statuses)
        live = set()
        for node_id in candidates:
            state = self._view.node_state(node_id)
            if state is not None and state.live:
                live.add(NodeId(node_id))
        return aggregation.aggregate_pool(pool=pool, statuses=statuses, live_node_ids=live)

    def _plan(self, pool_id: str) -> tuple[Compare, Op, PoolAggregate | None] | None:
        """The CAS write that brings ``poolstatus/<pool_id>`` up to date, or None."""
        self.recomputed += 1
        key = keys.pool_status(pool_id)
        agg = self.compute(pool_id)
        revision = self._view.mod_revision(key)
        compare = Compare.mod_revision(key, revision)
        if agg is None:
            if self._view.cache.get(key) is None:
                return None
            return compare, Op.delete(key), None
        stored = self._view.pool_status(pool_id)
        if stored is not None and stored[0] == agg:
            return None
        updated_at = self._clock.time()
        value = codec.encode_pool_status(agg, updated_at=updated_at)
        self._view.expect(key, value, (agg, updated_at))
        self._in_flight[pool_id] = value
        return compare, Op.put(key, value), agg

    async def _flush(self, pool_ids: list[str]) -> None:
        plans = [(p, plan) for p in pool_ids if (plan := self._plan(p)) is not None]
        for start in range(0, len(plans), MAX_TXN_OPS):
            chunk = plans[start : start + MAX_TXN_OPS]
            result = await self._store.txn(
                compares=[plan[0] for _, plan in chunk],
                success=[plan[1] for _, plan in chunk],
                timeout=self._timeout,
            )
            if not result.succeeded:
                # Someone wrote one of these keys under us: recompute on fresh data.
                log.info("pool status compare failed for %d pools; recomputing", len(chunk))
                await asyncio.sleep(0.05)
                for pool_id, _ in chunk:
                    self._in_flight.pop(pool_id, None)
                    self._mark(pool_id)
                continue
            self.written += len(chunk)
            await self._view.wait_for_revision(result.revision, timeout=self._timeout)
            for pool_id, plan in chunk:
                if self._on_written is not None and plan[2] is not None:
                    self._on_written(pool_id, plan[2])

    async def run(self) -> None:
        """Aggregate until cancelled (while this replica leads)."""
        self._active = True
        backoff = Backoff(initial=0.05, maximum=2.0)
        try:
            for pool in self._view.pools():
                self._dirty.add(pool.id)
            for kv in self._view.cache.scan(keys.POOL_STATUS):
                self._dirty.add(kv.key[len(keys.POOL_STATUS) :])
            self._wakeup.set()
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                if self._coalesce:
                    await asyncio.sleep(self._coalesce)
                batch = sorted(self._dirty)
                self._dirty.clear()
                try:
                    await self._flush(batch)
                except (StoreError, TimeoutError) as exc:
                    delay = backoff.next()
                    log.warning("aggregation write failed (%s); retrying in %.2fs", exc, delay)
                    self._dirty.update(batch)
                    await asyncio.sleep(delay)
                    self._wakeup.set()
                else:
                    backoff.reset()
        finally:
            self._active = False
            self._in_flight.clear()
