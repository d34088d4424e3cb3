"""Replica presence and leader election on etcd leases.

Each replica keeps ``replicas/<id>`` alive on its own lease, so the others can
tell when it is gone (its nodes are then adopted). One replica at a time holds
``election/aggregator`` on the same lease and runs the leader-only work (the
aggregator, orphan adoption).

Cases:

* the election key is absent -> create it in a transaction (``version == 0``)
  and lead until the lease is lost or we are cancelled;
* it holds our own replica id (left on an older lease, e.g. after etcd was
  restarted or our lease was lost) -> take it over at once on the new lease
  (a value compare), instead of waiting up to a TTL for the old lease to expire;
* it is held by another replica -> follow, and campaign again when it goes;
* a keepalive fails (etcd unreachable) for longer than the TTL -> the lease is
  gone: stop leading at once (the leader work is cancelled), log one WARNING
  (no traceback: a lost lease is expected), then start over with a new lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from qvdc.engines.view import ClusterView
from qvdc.kits.backoff import Backoff
from qvdc.kits.tasks import cancel_and_wait, create_guarded_task
from qvdc.store import keys
from qvdc.store.etcd import Compare, EtcdStore, Lease, Op, StoreError

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    pass


class Election:
    def __init__(
        self,
        *,
        store: EtcdStore,
        view: ClusterView,
        replica_id: str,
        ttl: int = 10,
        timeout: float = 5.0,
    ) -> None:
        self._store = store
        self._view = view
        self.replica_id = replica_id
        self._ttl = ttl
        self._timeout = timeout
        self.is_leader = False
        self._lost = "lease keepalive ended"

    async def _keepalive(self, lease: Lease) -> None:
        """Refresh the lease every ttl/3; return once it may have expired (why: ``_lost``).

        Returns rather than raises, so the task guard does not log an expected lease loss
        as a crash with a traceback; the caller turns ``_lost`` into ``LeaseLost``.
        """
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._store.refresh_lease(lease, timeout=self._ttl / 3)
                last_ok = loop.time()
            except StoreError as exc:
                if loop.time() - last_ok >= self._ttl:
                    self._lost = f"lease {lease.id} not refreshed for {self._ttl}s ({exc})"
                    return
                log.warning("lease keepalive failed (%s); retrying", exc)

    async def run(
        self,
        *,
        lead: Callable[[], Coroutine[Any, Any, None]],
        on_lead_change: Callable[[bool], None] | None = None,
    ) -> None:
        """Stay present and campaign forever; run ``lead()`` while leading."""
        backoff = Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                lease = await self._store.grant_lease(self._ttl, timeout=self._timeout)
                await self._store.put(
                    keys.replica(self.replica_id),
                    self.replica_id.encode(),
                    lease=lease.id,
                    timeout=self._timeout,
                )
                refresher = self._keepalive(lease)
                keepalive = create_guarded_task(
                    refresher,
                    name=f"lease-keepalive-{lease.id}",
                    logger=log,
                    eternal=False,
                )
                try:
                    await self._campaign_and_lead(lease, keepalive, lead, on_lead_change)
                finally:
                    await cancel_and_wait(keepalive)
                    # A campaign that failed at once cancels the task before it first ran:
                    # close the coroutine so it is not reported as never awaited.
                    refresher.close()
                    with contextlib.suppress(StoreError, TimeoutError):
                        await asyncio.shield(self._store.revoke_lease(lease, timeout=2.0))
            except (StoreError, LeaseLost, TimeoutError) as exc:
                delay = backoff.next()
                log.warning("election: %s; starting over in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _campaign_and_lead(
        self,
        lease: Lease,
        keepalive: asyncio.Task[None],
        lead: Callable[[], Coroutine[Any, Any, None]],
        on_lead_change: Callable[[bool], None] | None,
    ) -> None:
        ours = self.replica_id.encode()
        claim = [Op.put(keys.ELECTION_AGGREGATOR, ours, lease=lease.id)]
        while True:
            result = await self._store.txn(
                compares=[Compare.absent(keys.ELECTION_AGGREGATOR)],
                success=claim,
                timeout=self._timeout,
            )
            if result.succeeded:
                break
            # Our own key on an older lease: take it over now rather than wait for it to expire.
            result = await self._store.txn(
                compares=[Compare(keys.ELECTION_AGGREGATOR, "value", "==", ours)],
                success=claim,
                timeout=self._timeout,
            )
            if result.succeeded:
                break
            if keepalive.done():
                keepalive.result()  # a crash re-raises here
                raise LeaseLost(self._lost)
            await asyncio.sleep(min(self._ttl / 3, 1.0))
        log.info("replica %s leads the aggregator", self.replica_id)
        self.is_leader = True
        if on_lead_change:
            on_lead_change(True)
        leader_work = create_guarded_task(lead(), name="leader-work", logger=log)
        try:
            done, _ = await asyncio.wait(
                {keepalive, leader_work}, return_when=asyncio.FIRST_COMPLETED
            )
            if keepalive in done:
                keepalive.result()  # a crash re-raises here
                raise LeaseLost(self._lost)
            leader_work.result()
            raise LeaseLost("leader work ended")
        finally:
            self.is_leader = False
            if on_lead_change:
                on_lead_change(False)
            await cancel_and_wait(leader_work)
