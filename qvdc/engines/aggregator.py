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

Time changes an aggregate without any event: a host whose last heartbeat passes its
grace turns stale (while node transitions are frozen nothing in etcd changes), and a
pending host's first interval runs out. So each computation also schedules the next
instant its inputs flip (``aggregation.stale_at``, ``HostTiming.report_due``) in a heap
of deadlines; the worker sleeps until the earliest one (or an event), and each pass
handles at most ``MAX_TIMER_WORK`` due entries. A node's entry is checked lazily: its
last heartbeat usually moved on meanwhile, and then it is only rescheduled, so the cost
is one heap operation per node per grace, never a recomputation of its pools. A node
that is stale by time but still live is rechecked every ``recheck`` seconds, since its
return (the end of a freeze) writes nothing either. What a host's timing is made of:
``_timing`` (docs/failure-semantics.md).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
from collections.abc import Callable, Iterable

from qvdc.domain import aggregation
from qvdc.domain.model import NodeId, NodeState, PoolAggregate, PoolRecord
from qvdc.engines import liveness
from qvdc.engines.view import ClusterView
from qvdc.kits.backoff import Backoff
from qvdc.kits.timing import Clock
from qvdc.store import codec, keys
from qvdc.store.etcd import Compare, EtcdStore, KeyValue, Op, StoreError

log = logging.getLogger(__name__)

MAX_TXN_OPS = 64  # each pool costs one compare and one op

#: Due timer entries handled per pass; the rest wait for the next pass.
MAX_TIMER_WORK = 10_000

#: A timer fires this long after its deadline, so the strict "more than grace" holds.
TIMER_EPSILON = 0.001

#: The longest sleep between passes while timers are pending: deadlines are wall times,
#: the loop sleeps on its monotonic clock, and a wall-clock step must not strand them.
MAX_TIMER_SLEEP = 5.0

_NODE = 0
_POOL = 1


class Aggregator:
    def __init__(
        self,
        *,
        store: EtcdStore,
        view: ClusterView,
        clock: Clock,
        timeout: float,
        grace: float = math.inf,
        interval: float = 0.0,
        replica_id: str = "",
        heard_at: Callable[[str], float | None] | None = None,
        grace_of: Callable[[NodeId], float] | None = None,
        interval_of: Callable[[str], float] | None = None,
        recheck: float = 1.0,
        coalesce: float = 0.002,
        on_written: Callable[[str, PoolAggregate], None] | None = None,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        """``heard_at(node)``: wall time of the node's last heartbeat on this replica (None:
        not heard here); read only for nodes whose ``nodestatus`` names ``replica_id`` as
        owner. ``grace_of`` / ``interval_of``: a node's grace and heartbeat interval
        (default: ``grace`` and ``interval`` for every node). ``on_lag(seconds)``: for each
        pool a host-status change dirtied, once its aggregate is current in etcd (written
        or found unchanged), the seconds since the earliest such row's ``changed_at`` (the
        report's arrival at a replica): the aggregation lag (``qvdc.metrics``)."""
        self._store = store
        self._view = view
        self._clock = clock
        self._timeout = timeout
        self._replica_id = replica_id
        self._heard_at = heard_at
        self._grace_of = grace_of or (lambda _node_id: grace)
        self._interval_of = interval_of or (lambda _node_id: interval)
        self._recheck = recheck
        self._coalesce = coalesce
        self._on_written = on_written
        self._on_lag = on_lag
        # pool -> changed_at of the earliest host-status row not yet aggregated (on_lag).
        self._report_at: dict[str, float] = {}
        # (deadline wall time, sequence, _NODE or _POOL, id): see the module docstring.
        self._timers: list[tuple[float, int, int, str]] = []
        self._sequence = itertools.count()
        self._node_due: dict[str, float] = {}  # node -> its earliest queued deadline
        self._pool_due: dict[str, float] = {}
        self._node_stale: dict[str, bool] = {}  # node -> stale at its last evaluation
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
        lag_wanted = self._on_lag is not None and new is not None
        if lag_wanted and kind == "hoststatus" and len(parts) == 3:
            row = self._view.host_status(parts[1], parts[2])
            if row is not None:
                self._report_at.setdefault(parts[1], row.changed_at)
        if pool_keyed or (kind == "hoststatus" and len(parts) == 3):
            self._mark(parts[1])
        elif kind == "assignments" and len(parts) == 3:
            self._mark(parts[2])
        elif kind in ("nodestatus", "nodes") and len(parts) == 2:
            # Liveness or owner flipped, or the hostname the messages name changed.
            node_id = parts[1]
            for pool_id in self._pools_of_node(node_id):
                self._mark(pool_id)

    def _pools_of_node(self, node_id: str) -> set[str]:
        return set(self._view.assigned_pool_ids(node_id)).union(self._view.rows_of(node_id))

    def _mark(self, pool_id: str) -> None:
        self._dirty.add(pool_id)
        self._wakeup.set()

    def _timing(self, node_id: str, *, pool_changed_at: float) -> aggregation.HostTiming | None:
        """The node's timing: live from ``nodestatus``; its last heartbeat when this replica
        owns it (its word is the one etcd holds), or, when another replica owns it and has
        frozen it (``LivenessFrozen``), the last heartbeat that replica recorded then;
        pending until one interval and a little after the later of its registration and
        the pool's last change."""
        state = self._view.node_state(node_id)
        if state is None:
            return None
        heard_at = None
        if state.owner_replica == self._replica_id:
            heard_at = self._heard_at(node_id) if self._heard_at is not None else None
        elif _shown_frozen(state):
            heard_at = state.last_heartbeat_at
        record = self._view.node(node_id)
        registered_at = record.registered_at if record is not None else 0.0
        return aggregation.HostTiming(
            live=state.live,
            heard_at=heard_at,
            grace=self._grace_of(NodeId(node_id)),
            report_due=aggregation.report_due(
                since=max(registered_at, pool_changed_at), interval=self._interval_of(node_id)
            ),
        )

    def compute(self, pool_id: str) -> PoolAggregate | None:
        """The aggregate the pool should have now; None if the pool no longer exists.
        Queues the instants at which time alone would change it."""
        pool = self._view.pool(pool_id)
        if pool is None:
            return None
        statuses = self._view.host_statuses(pool_id)
        now = self._clock.time()
        changed_at = _pool_changed_at(pool)
        hosts: dict[NodeId, aggregation.HostTiming] = {}
        hostnames: dict[NodeId, str] = {}
        for node_id in set(pool.assigned_node_ids) | set(statuses):
            timing = self._timing(node_id, pool_changed_at=changed_at)
            if timing is not None:
                hosts[NodeId(node_id)] = timing
                self._track_node(node_id, timing, now=now)
            record = self._view.node(node_id)
            if record is not None:
                hostnames[NodeId(node_id)] = record.hostname
        agg = aggregation.aggregate_pool(
            pool=pool, statuses=statuses, hosts=hosts, now=now, hostnames=hostnames
        )
        pending_until = min(
            (hosts[row.node_id].report_due for row in agg.rows if row.pending), default=None
        )
        if pending_until is not None:
            self._push(_POOL, pool_id, pending_until + TIMER_EPSILON, self._pool_due)
        return agg

    # --- timers -----------------------------------------------------------------

    def _push(self, kind: int, ident: str, when: float, due: dict[str, float]) -> None:
        queued = due.get(ident)
        if queued is not None and queued <= when:
            return  # an earlier entry will look again (and requeue)
        due[ident] = when
        heapq.heappush(self._timers, (when, next(self._sequence), kind, ident))

    def _track_node(
        self, node_id: str, timing: aggregation.HostTiming, *, now: float, checked: bool = False
    ) -> None:
        """Queue the instant the node's staleness may flip without an event. Its staleness
        as last seen is set on first sight and by its own check (``checked``) only: a pool
        computed meanwhile must not hide a flip from the node's other pools."""
        stale = aggregation.is_stale(timing=timing, now=now)
        if checked:
            self._node_stale[node_id] = stale
        else:
            self._node_stale.setdefault(node_id, stale)
        if not stale:
            turns_stale = aggregation.stale_at(timing)
            if turns_stale is not None:
                self._push(_NODE, node_id, turns_stale + TIMER_EPSILON, self._node_due)
        elif timing.live:
            # Stale by time yet live: its next heartbeat writes nothing, so look again.
            self._push(_NODE, node_id, now + self._recheck, self._node_due)

    def _check_node(self, node_id: str, *, now: float) -> None:
        """A node's deadline came: recompute its pools only if its staleness flipped."""
        pools = self._pools_of_node(node_id)
        if not pools:
            self._node_stale.pop(node_id, None)  # no longer in any pool: stop tracking
            return
        timing = self._timing(node_id, pool_changed_at=0.0)
        if timing is None:
            self._node_stale.pop(node_id, None)
            return
        before = self._node_stale.get(node_id)
        self._track_node(node_id, timing, now=now, checked=True)
        if self._node_stale[node_id] != before:
            for pool_id in pools:
                self._mark(pool_id)

    def _run_timers(self) -> None:
        """Handle the due timer entries, at most ``MAX_TIMER_WORK`` of them."""
        now = self._clock.time()
        for _ in range(MAX_TIMER_WORK):
            if not self._timers or self._timers[0][0] > now:
                return
            when, _, kind, ident = heapq.heappop(self._timers)
            due = self._node_due if kind == _NODE else self._pool_due
            if due.get(ident) != when:
                continue  # superseded by an earlier entry
            del due[ident]
            if kind == _NODE:
                self._check_node(ident, now=now)
            else:
                self._mark(ident)
        if self._timers and self._timers[0][0] <= now:
            self._wakeup.set()  # more are due: next pass

    def _sleep_budget(self) -> float | None:
        """Seconds until the earliest timer (at most ``MAX_TIMER_SLEEP``); None: no timer."""
        if not self._timers:
            return None
        return min(MAX_TIMER_SLEEP, max(0.0, self._timers[0][0] - self._clock.time()))

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

    def _lagged(self, pool_ids: Iterable[str]) -> None:
        """These pools' aggregates are current in etcd: report their reports' lag."""
        if not self._report_at or self._on_lag is None:
            return
        now = self._clock.time()
        for pool_id in pool_ids:
            arrived = self._report_at.pop(pool_id, None)
            if arrived is not None:
                self._on_lag(now - arrived)

    async def _flush(self, pool_ids: list[str]) -> None:
        plans = [(p, plan) for p in pool_ids if (plan := self._plan(p)) is not None]
        if self._report_at:
            planned = {p for p, _ in plans}
            self._lagged(p for p in pool_ids if p not in planned)  # unchanged: current
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
            self._lagged(pool_id for pool_id, _ in chunk)

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
                budget = self._sleep_budget()
                try:
                    async with asyncio.timeout(budget):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass  # a deadline came
                self._wakeup.clear()
                self._run_timers()
                if not self._dirty:
                    continue
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
            self._report_at.clear()
            self._timers.clear()
            self._node_due.clear()
            self._pool_due.clear()
            self._node_stale.clear()


def _shown_frozen(state: NodeState) -> bool:
    """Whether the node's latest ``LivenessFrozen`` condition says its owner froze it."""
    for condition in reversed(state.conditions):
        if condition.type == liveness.FROZEN_CONDITION:
            return condition.status
    return False


def _pool_changed_at(pool: PoolRecord) -> float:
    """Wall time of the pool definition's last change (its ``updatedAt``; 0.0 if absent)."""
    try:
        return codec.parse_time(pool.document.get("updatedAt"))
    except codec.CodecError:
        return 0.0
