"""Every node goes silent at once: the freeze is visible, and no pool is READY on stale data.

One replica, three real node daemons sharing a local pool, and simulated hosts
with NFS pools. Then, at once, the daemons are SIGSTOPped and the simulated
hosts stop heartbeating. The controller may freeze node transitions (it
cannot tell a dead fleet from its own cut-off network), but past the grace:

- every host row is stale and no pool is READY (the figure: how long after
  the stop the last pool left READY);
- it stays so (watched for two more graces);
- the freeze is visible: every node carries the condition ``LivenessFrozen`` =
  True in its status, and the controller logs it.

``make faults`` runs it (it waits several graces).
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from protos.limiquantix.storage import v1 as storage
from tests.faults import harness

TIMING = harness.Timing(interval=1.0, grace=8.0)
"""A liveness pass is grace / 4 = 2 s, longer than the 1 s over which the hosts' last
heartbeats spread: they all go silent within one pass, which is what "at once" means."""
HOSTS = 30
FREEZE_LOGGED = re.compile(r"(?i)frozen|freeze|outage")
FROZEN = "LivenessFrozen"
"""The node condition a freeze sets on every node it holds (docs/failure-semantics.md)."""
READY = storage.StoragePoolStatusPhase.READY


@pytest.mark.faults
@pytest.mark.timeout(240)
async def test_all_nodes_silent_no_pool_ready_on_stale_data(tmp_path: Path) -> None:
    async with harness.rig(tmp_path, timing=TIMING) as r:
        s = await harness.setup(r, replicas=["qvdc-a"], nodes=3, fleets={"qvdc-a": HOSTS})
        node_ids = [*s.node_ids.values(), *r.fleets["qvdc-a"].node_ids]
        api = harness.Api(r.endpoint("qvdc-a"))
        try:
            await harness.until(
                lambda: _all_ready(api),
                timeout=60,
                what="every pool READY before the fault",
            )
            tally = await r.run_fleet(replica="qvdc-a", seconds=3, change_fraction=0.0)
            for node in r.nodes.values():  # the simulated hosts just stopped
                harness.sigstop(node)
            stopped = time.monotonic()
            # Watch for the grace plus three more: note when every pool first shows
            # not-READY with every row stale, and every pool seen READY or fresh after it.
            stale_s: float | None = None
            ready_after: set[str] = set()
            frozen_seen = False
            pools: list[storage.StoragePool] = []
            while time.monotonic() - stopped < 4 * TIMING.grace:
                pools = await api.all_pools()
                good = [_not_ready_and_all_stale(p) for p in pools]
                if stale_s is None and all(good):
                    stale_s = time.monotonic() - stopped
                if stale_s is not None and not frozen_seen:
                    frozen_seen = await _frozen(r, node_ids)
                if stale_s is not None or time.monotonic() - stopped > 2 * TIMING.grace:
                    ready_after |= {p.name for p, ok in zip(pools, good, strict=True) if not ok}
                await asyncio.sleep(0.25)
        finally:
            api.close()
        log = r.replicas["qvdc-a"].log_path.read_text(errors="replace")
        phases = sorted(
            f"{p.name}: {p.status.phase.name}, "
            f"{sum(h.stale for h in p.status.host_statuses)}/{len(p.status.host_statuses)} stale"
            for p in pools
        )
        harness.record(
            "all_nodes_silent",
            nodes=3,
            simulated_hosts=HOSTS,
            pools=len(pools),
            grace_s=TIMING.grace,
            stale_visible_after_s=None if stale_s is None else round(stale_s, 2),
            pools_ready_on_stale_data=len(ready_after),
            phases_after=",".join(sorted({p.status.phase.name for p in pools})),
            freeze_condition_on_every_node=frozen_seen,
            freeze_logged=bool(FREEZE_LOGGED.search(log)),
            heartbeat_errors_before=tally.errors,
        )
        assert tally.errors == 0, tally.first_error
        assert stale_s is not None, f"pools still READY or fresh after the grace: {phases}"
        assert not ready_after, f"READY or fresh rows on stale data: {sorted(ready_after)}"
        assert frozen_seen, f"no {FROZEN}=True condition on every node during the freeze"
        assert FREEZE_LOGGED.search(log), "the freeze is not logged"


def _not_ready_and_all_stale(pool: storage.StoragePool) -> bool:
    rows = pool.status.host_statuses
    return pool.status.phase != READY and bool(rows) and all(row.stale for row in rows)


async def _all_ready(api: harness.Api) -> list[storage.StoragePool] | None:
    pools = await api.all_pools()
    return pools if pools and all(p.status.phase == READY for p in pools) else None


async def _frozen(r: harness.Rig, node_ids: list[str]) -> bool:
    """Every node's latest LivenessFrozen condition says True."""
    assert r.store is not None
    for node_id in node_ids:
        state = await harness.node_state(r.store, node_id)
        if state is None:
            return False
        latest = [c for c in state.conditions if c.type == FROZEN]
        if not latest or not latest[-1].status:
            return False
    return True
