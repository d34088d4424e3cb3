"""Pool and host-row transitions, logged once each as events from the aggregates written.

The aggregation leader is the one writer of ``poolstatus/``, and it calls
``on_written(pool_id, aggregate)`` after each write that changed a pool; :class:`PoolEvents`
is that callback. It compares the aggregate with the last one it saw for the pool and logs
``pool.phase`` when the phase moved and ``host.health`` for each row whose health moved
(docs/operations.md, "Logs"). A capacity-only change, a retried write or another replica's
copy logs nothing, so each transition is logged once, by the leader.

The first aggregate of a pool a leader writes is its baseline, not an event: a new leader
does not know what its predecessor logged; :meth:`PoolEvents.reset` starts a new term
(``qvdc.app`` calls it when the replica becomes leader), so what it remembers from an earlier
term is not compared with. Rows that leave a pool's table are forgotten; a deleted pool
keeps a few small entries until the term ends.
"""

from __future__ import annotations

import logging

from qvdc.domain.model import Health, PoolAggregate, PoolPhase
from qvdc.kits import eventlog

log = logging.getLogger(__name__)


class PoolEvents:
    """``on_written`` callback of the aggregator: logs ``pool.phase`` and ``host.health``."""

    def __init__(self, *, logger: logging.Logger = log, sink: eventlog.Sink | None = None) -> None:
        self._log = logger
        #: Also receives each event (the event history, ``qvdc.engines.eventstore``).
        self.sink = sink
        self.reset()

    def reset(self) -> None:
        """Forget every baseline: the next aggregate of each pool is a baseline again."""
        self._phases = eventlog.Transitions()
        self._health = eventlog.Transitions()
        self._rows: dict[str, frozenset[str]] = {}

    def __call__(self, pool_id: str, aggregate: PoolAggregate) -> None:
        changed, before = self._phases.changed(pool_id, aggregate.phase)
        if changed and isinstance(before, PoolPhase):
            eventlog.event_to(
                self.sink,
                self._log,
                "pool.phase",
                "pool %s: %s -> %s%s",
                pool_id,
                before.name,
                aggregate.phase.name,
                f" ({aggregate.error_message})" if aggregate.error_message else "",
                level=logging.INFO if aggregate.phase is PoolPhase.READY else logging.WARNING,
                pool_id=pool_id,
                **{"from": before.name, "to": aggregate.phase.name},
            )
        rows = frozenset(row.node_id for row in aggregate.rows)
        for gone in self._rows.get(pool_id, frozenset()) - rows:
            self._health.forget((pool_id, gone))
        self._rows[pool_id] = rows
        for row in aggregate.rows:
            health = row.report.health
            changed, was = self._health.changed((pool_id, row.node_id), health)
            if not changed or not isinstance(was, Health):
                continue
            error = row.report.error_message
            eventlog.event_to(
                self.sink,
                self._log,
                "host.health",
                "pool %s on node %s: %s -> %s%s",
                pool_id,
                row.node_id,
                was.name,
                health.name,
                f": {error}" if error else "",
                level=logging.INFO if health is Health.HEALTHY else logging.WARNING,
                pool_id=pool_id,
                node_id=row.node_id,
                error=error,
                **{"from": was.name, "to": health.name},
            )
