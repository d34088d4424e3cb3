"""One node daemon paused (SIGSTOP) past its grace under load, then resumed.

One replica, three real node daemons sharing a local pool, simulated hosts
heartbeating. node-0 is SIGSTOPped for the grace plus five seconds:

- it is written OFFLINE (not live) after its grace, and its pool row turns stale
  with the pool out of READY (DEGRADED: two fresh rows remain); the figures are
  seconds from the stop to OFFLINE, and from SIGCONT until it is live and the
  pool READY again;
- nobody else is written OFFLINE and no simulated heartbeat fails.

Fast enough for ``make test``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from protos.limiquantix.storage import v1 as storage
from qvdc.store.etcd import EtcdStore
from tests.faults import harness

TIMING = harness.Timing(interval=1.0, grace=4.0)
HOSTS = 30


@pytest.mark.timeout(180)
async def test_paused_node_goes_offline_after_its_grace_and_recovers(tmp_path: Path) -> None:
    async with harness.rig(tmp_path, timing=TIMING) as r:
        s = await harness.setup(r, replicas=["qvdc-a"], nodes=3, fleets={"qvdc-a": HOSTS})
        assert r.store is not None
        store = r.store
        paused_id = s.node_ids["node-0"]
        others = [i for h, i in s.node_ids.items() if h != "node-0"]
        others += r.fleets["qvdc-a"].node_ids
        api = harness.Api(r.endpoint("qvdc-a"))
        try:
            async with harness.OfflineWatch(store) as watch:
                load = asyncio.create_task(
                    r.run_fleet(replica="qvdc-a", seconds=TIMING.grace + 12,
                                change_fraction=0.05)
                )  # fmt: skip
                await asyncio.sleep(1)
                await asyncio.to_thread(harness.sigstop, r.nodes["node-0"])
                stopped = time.monotonic()
                _, offline_s = await harness.until(
                    lambda: _offline(store, paused_id),
                    timeout=3 * TIMING.grace + 10,
                    what="the paused node OFFLINE",
                )
                pool, _ = await harness.until(
                    lambda: _degraded_with_stale_row(api, s.pool_id, paused_id),
                    timeout=3 * TIMING.grace,
                    what="the pool DEGRADED with the paused node's row stale",
                )
                await asyncio.sleep(max(0.0, TIMING.grace + 5 - (time.monotonic() - stopped)))
                harness.sigcont(r.nodes["node-0"])
                resumed = time.monotonic()
                await harness.until(
                    lambda: _live(store, paused_id), timeout=30, what="the node live again"
                )
                live_s = time.monotonic() - resumed
                await harness.until(
                    lambda: harness.pool_ready(api, s.pool_id, rows=3),
                    timeout=30,
                    what="the pool READY again",
                )
                ready_s = time.monotonic() - resumed
                tally = await load
        finally:
            api.close()
        lost = await harness.lost_reports(store, tally.changes)
        wrong = watch.offline_nodes(others)
        harness.record(
            "node_paused",
            grace_s=TIMING.grace,
            paused_s=round(resumed - stopped, 1),
            offline_after_s=round(offline_s, 2),
            live_again_after_s=round(live_s, 2),
            pool_ready_again_after_s=round(ready_s, 2),
            others_offline=len(wrong),
            heartbeat_errors=tally.errors,
            lost_reports=lost,
        )
        assert wrong == [], f"nodes that kept heartbeating written OFFLINE: {wrong}"
        assert tally.errors == 0, tally.first_error
        assert lost == 0
        assert pool.status.phase == storage.StoragePoolStatusPhase.DEGRADED


async def _offline(store: EtcdStore, node_id: str) -> bool:
    state = await harness.node_state(store, node_id)
    return state is not None and not state.live


async def _live(store: EtcdStore, node_id: str) -> bool:
    state = await harness.node_state(store, node_id)
    return state is not None and state.live


async def _degraded_with_stale_row(
    api: harness.Api, pool_id: str, node_id: str
) -> storage.StoragePool | None:
    pool = await api.pool(pool_id)
    rows = {h.node_id: h for h in pool.status.host_statuses}
    degraded = pool.status.phase == storage.StoragePoolStatusPhase.DEGRADED
    return pool if degraded and node_id in rows and rows[node_id].stale else None
