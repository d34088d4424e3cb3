"""DeletePool that waits for the hosts: the pool is DELETING until its hosts let go.

:func:`begin` (called by DeletePool) turns a pool into a deletion in progress, in one
transaction: its assignments are removed (``assignments/<node>/<pool>``: the push tells
each host at once, and the host detaches the pool), and the pool document gets a marker
(:data:`qvdc.store.codec.DELETING_KEY`) naming when the deletion began and the hosts it
waits for: those assigned and live at that moment. The aggregate shows DELETING.

:class:`PoolDeletions` finishes: a host has confirmed when its row for the pool is gone
(its heartbeats no longer list the pool, or name it in ``removed_pool_ids``, and the
intake drops the row of a pool the host is no longer assigned). Once no awaited host has
a row, or once ``timeout`` seconds passed since the deletion began, the pool's keys are
removed (the catalog's delete: pool, name, status, rows) and a ``pool.deleted`` event is
logged, a WARNING naming any host that did not confirm. Everything it needs is in etcd,
so a replica that restarts, or a new leader, finishes what another began; only the
aggregation leader finishes (``leading``), so the event is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from qvdc.domain import errors
from qvdc.domain.model import PoolRecord
from qvdc.engines.catalog import Catalog, Document
from qvdc.engines.view import ClusterView
from qvdc.kits import eventlog, timing
from qvdc.kits.timing import Clock
from qvdc.store import codec, keys
from qvdc.store.etcd import KeyValue

log = logging.getLogger(__name__)

_MARKER = codec.DELETING_KEY.encode()


def marked(document: Document, *, hosts: Sequence[str], since: float) -> Document:
    """``document`` as a deletion in progress: unassigned, with the marker."""
    doc = dict(document)
    spec = dict(doc.get("spec") or {})
    spec["assignedNodeIds"] = []
    doc["spec"] = spec
    doc[codec.DELETING_KEY] = {"since": since, "hosts": sorted(hosts)}
    return doc


def marker(record: PoolRecord) -> tuple[float, tuple[str, ...]]:
    """(when the deletion began, the hosts it waits for) of a DELETING pool."""
    raw: Any = record.document.get(codec.DELETING_KEY)
    if not isinstance(raw, Mapping):
        return 0.0, ()
    since = raw.get("since")
    hosts = raw.get("hosts")
    return (
        float(since) if isinstance(since, int | float) else 0.0,
        tuple(str(h) for h in hosts) if isinstance(hosts, list) else (),
    )


def waiting_for(view: ClusterView, record: PoolRecord) -> list[str]:
    """The awaited hosts that still have a row for the pool."""
    return [n for n in marker(record)[1] if view.host_status(record.id, n) is not None]


async def begin(
    catalog: Catalog, record: PoolRecord, *, hosts: Sequence[str], now: float
) -> PoolRecord:
    """Make ``record`` a deletion in progress waiting for ``hosts``."""

    def mark(doc: Document) -> Document:
        if codec.DELETING_KEY in doc:
            return doc  # begun meanwhile: nothing to change
        return marked(doc, hosts=hosts, since=now)

    return await catalog.update_pool(record.id, mark)


class PoolDeletions:
    def __init__(
        self,
        *,
        catalog: Catalog,
        view: ClusterView,
        clock: Clock,
        timeout: float,
        leading: Callable[[], bool],
        check_period: float = 1.0,
        sink: eventlog.Sink | None = None,
    ) -> None:
        self._catalog = catalog
        self._view = view
        self._clock = clock
        self._timeout = timeout
        self._leading = leading
        self._period = check_period
        self.sink = sink
        self._deleting: set[str] = set()
        self._wakeup = asyncio.Event()
        #: Deletions finished by this replica (a test hook).
        self.finished = 0
        view.subscribe(self._on_change)

    def _on_change(self, key: str, old: KeyValue | None, new: KeyValue | None) -> None:
        if key.startswith(keys.POOLS):
            pool_id = key[len(keys.POOLS) :]
            if new is not None and _MARKER in new.value:
                self._deleting.add(pool_id)
                self._wakeup.set()
            else:
                self._deleting.discard(pool_id)
        elif new is None and self._deleting and key.startswith(keys.HOST_STATUS):
            pool_id = key[len(keys.HOST_STATUS) :].partition("/")[0]
            if pool_id in self._deleting:
                self._wakeup.set()  # a host let go

    async def run(self) -> None:
        """Finish due deletions for ever (while this replica leads)."""
        self._deleting.update(p.id for p in self._view.pools() if p.deleting)
        while True:
            if self._leading() and self._deleting:
                await self.finish_due()
            await timing.sleep(self._period, wakeup=self._wakeup)

    async def finish_due(self) -> None:
        now = self._clock.time()
        for pool_id in sorted(self._deleting):
            record = self._view.pool(pool_id)
            if record is None or not record.deleting:
                self._deleting.discard(pool_id)
                continue
            since, _ = marker(record)
            waiting = waiting_for(self._view, record)
            if waiting and now - since < self._timeout:
                continue
            await self._finish(record, unconfirmed=waiting, waited=max(0.0, now - since))

    async def _finish(self, record: PoolRecord, *, unconfirmed: list[str], waited: float) -> None:
        try:
            await self._catalog.delete_pool(record.id, force=True)
        except errors.NotFound:
            self._deleting.discard(record.id)
            return  # finished by another replica
        except errors.DomainError as exc:
            log.warning("pool %s: removing its keys failed (%s); retrying", record.id, exc)
            return
        self._deleting.discard(record.id)
        self.finished += 1
        names = [self._hostname(n) for n in unconfirmed]
        eventlog.event_to(
            self.sink,
            log,
            "pool.deleted",
            "pool %s deleted%s",
            record.id,
            (
                f" without confirmation from host(s) {', '.join(names)} after {waited:.0f}s"
                if names
                else f" after {waited:.1f}s, every host detached it"
            ),
            level=logging.WARNING if names else logging.INFO,
            pool_id=record.id,
            waited_s=round(waited, 3),
            unconfirmed=unconfirmed,
        )

    def _hostname(self, node_id: str) -> str:
        node = self._view.node(node_id)
        return f"{node.hostname} ({node_id})" if node is not None else node_id


def live_assigned(view: ClusterView, pool_id: str) -> list[str]:
    """The pool's assigned hosts that are live: heartbeating within their grace (and not
    shown stale by the pool's aggregate, which the leader sees before OFFLINE is written)."""
    stored = view.pool_status(pool_id)
    stale = {row.node_id for row in stored[0].rows if row.stale} if stored is not None else set()
    out = []
    for node_id in view.nodes_assigned_to(pool_id):
        state = view.node_state(node_id)
        if state is not None and state.live and node_id not in stale:
            out.append(node_id)
    return sorted(out)
