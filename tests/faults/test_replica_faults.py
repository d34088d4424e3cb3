"""A controller replica dies (SIGKILL) or stalls (SIGSTOP 10 s, then SIGCONT) under load.

Two replicas, three real node daemons told both (they start on replica A),
a local pool on those daemons, and simulated hosts heartbeating to replica B
with 5 % of their reports changing materially each round. The fault hits A:

- the daemons re-home to B (nodestatus owner becomes B): the re-home time is
  the figure;
- no node is ever written OFFLINE (all of them kept heartbeating, to someone);
  after a SIGSTOP the watch lasts two graces past the SIGCONT, because the
  stalled replica wakes up with stale clocks for the nodes it lost;
- every report B acknowledged is in etcd, no simulated heartbeat failed, and
  the local pool ends READY with every row fresh.

The SIGKILL run is fast enough for ``make test``; the SIGSTOP run waits two
graces and is in ``make faults``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults import harness

TIMING = harness.Timing(interval=1.0, grace=5.0)
HOSTS_B = 60
HOSTS_A = 20
"""Simulated hosts on the stalled replica (SIGSTOP only): they have no failover, so they
wait with it, and their heartbeats on its resume make it a replica with live nodes
(without them it would take its silent nodes for a mass outage of its own)."""


async def _replica_fault(tmp_path: Path, *, fault: str) -> None:
    stalled_hosts = HOSTS_A if fault == "sigstop" else 0
    fleets = {"qvdc-b": HOSTS_B} | ({"qvdc-a": stalled_hosts} if stalled_hosts else {})
    async with harness.rig(tmp_path, timing=TIMING) as r:
        s = await harness.setup(r, replicas=["qvdc-a", "qvdc-b"], nodes=3, fleets=fleets)
        assert r.store is not None
        node_ids = list(s.node_ids.values())
        await harness.until(
            lambda: _owned_by(r, node_ids, "qvdc-a"), timeout=30, what="daemons on qvdc-a"
        )
        # Every node that kept heartbeating to a live replica: the daemons (they fail
        # over) and B's simulated hosts. A's simulated hosts wait with A.
        kept_beating = [*node_ids, *r.fleets["qvdc-b"].node_ids]
        pause = 10.0 if fault == "sigstop" else 0.0
        watch_after = 2 * TIMING.grace + 3 if fault == "sigstop" else TIMING.grace + 3
        seconds = 2 + pause + watch_after + 5
        async with harness.OfflineWatch(r.store) as watch:
            loads = [
                asyncio.create_task(
                    r.run_fleet(replica=name, seconds=seconds, change_fraction=0.05)
                )
                for name in fleets
            ]
            await asyncio.sleep(2)
            started = time.monotonic()
            if fault == "sigkill":
                harness.sigkill(r.replicas["qvdc-a"])
            else:
                await asyncio.to_thread(harness.sigstop, r.replicas["qvdc-a"])
            _, rehome_s = await harness.until(
                lambda: _owned_by(r, node_ids, "qvdc-b"), timeout=60, what="re-homed to qvdc-b"
            )
            if fault == "sigstop":
                await asyncio.sleep(max(0.0, pause - (time.monotonic() - started)))
                harness.sigcont(r.replicas["qvdc-a"])
            await asyncio.sleep(watch_after)
            tallies = await asyncio.gather(*loads)
        changes = [c for t in tallies for c in t.changes]
        lost = await harness.lost_reports(r.store, changes)
        api = harness.Api(r.endpoint("qvdc-b"))
        try:
            await harness.until(
                lambda: harness.pool_ready(api, s.pool_id, rows=3),
                timeout=30,
                what="local pool READY after the fault",
            )
        finally:
            api.close()
        false_offline = watch.offline_nodes(kept_beating)
        errors = sum(t.errors for t in tallies)
        harness.record(
            f"replica_{fault}",
            pause_s=pause,
            nodes=3,
            simulated_hosts=HOSTS_B + stalled_hosts,
            stalled_simulated_hosts=stalled_hosts,
            rehome_s=round(rehome_s, 2),
            false_offline=len(false_offline),
            offline_of_stalled_hosts=len(watch.offline) - len(false_offline),
            lost_reports=lost,
            reports_acked=len(changes),
            heartbeat_errors=errors,
            heartbeats_acked=sum(t.acked for t in tallies),
            max_ack_s=round(max(t.max_ack_s for t in tallies), 2),
        )
        assert false_offline == [], f"nodes that kept heartbeating written OFFLINE: {false_offline}"
        assert errors == 0, [t.first_error for t in tallies if t.errors]
        assert lost == 0, f"{lost} acknowledged reports not in etcd"
        assert changes  # the load did change reports


async def _owned_by(r: harness.Rig, node_ids: list[str], replica: str) -> bool:
    assert r.store is not None
    return set((await harness.owners(r.store, node_ids)).values()) == {replica}


@pytest.mark.timeout(180)
async def test_replica_sigkill_rehomes_nodes_without_offline_or_loss(tmp_path: Path) -> None:
    await _replica_fault(tmp_path, fault="sigkill")


@pytest.mark.faults
@pytest.mark.timeout(240)
async def test_replica_sigstop_10s_rehomes_nodes_without_offline_or_loss(tmp_path: Path) -> None:
    await _replica_fault(tmp_path, fault="sigstop")
