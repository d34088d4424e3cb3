"""etcd goes away under load: SIGSTOPped (hung) or SIGKILLed and restarted.

One replica, three real node daemons sharing a local pool, simulated hosts
whose reports change materially (5 % a round) during the outage. For the
outage the controller cannot write; it must keep acknowledging heartbeats
(nodes must not fail over or re-register), hold the changes, and write them
once etcd is back:

- every simulated heartbeat is acknowledged (0 errors; the slowest
  acknowledgement is reported);
- every material change acknowledged during the outage is in ``hoststatus/``
  after etcd returns (the figure: seconds from the resume until the last one
  landed), and the local pool is READY again;
- no node is written OFFLINE (all kept heartbeating).

``OUTAGE_S`` is the issue's 30 s: six graces, long past every etcd request
timeout (5 s) and the leader's lease (10 s). ``make faults`` runs both.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults import harness

TIMING = harness.Timing(interval=1.0, grace=5.0)
HOSTS = 60
OUTAGE_S = 30.0


@pytest.mark.faults
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["sigstop", "sigkill"])
async def test_etcd_outage_acks_heartbeats_and_lands_changes(tmp_path: Path, fault: str) -> None:
    async with harness.rig(tmp_path, timing=TIMING) as r:
        s = await harness.setup(r, replicas=["qvdc-a"], nodes=3, fleets={"qvdc-a": HOSTS})
        assert r.store is not None
        [etcd] = r.etcd
        node_ids = [*s.node_ids.values(), *r.fleets["qvdc-a"].node_ids]
        async with harness.OfflineWatch(r.store) as watch:
            during = asyncio.create_task(
                r.run_fleet(replica="qvdc-a", seconds=2 + OUTAGE_S, change_fraction=0.05)
            )
            await asyncio.sleep(2)
            if fault == "sigstop":
                await asyncio.to_thread(harness.sigstop, etcd)
            else:
                await asyncio.to_thread(etcd.kill)
            faulted = time.monotonic()
            outage = await during  # ends when the outage does
            resumed = time.monotonic()
            if fault == "sigstop":
                harness.sigcont(etcd)
            else:
                etcd.spawn()  # same ports and data
                await asyncio.to_thread(etcd.wait_healthy)
            after = asyncio.create_task(
                r.run_fleet(replica="qvdc-a", seconds=3 * TIMING.grace, change_fraction=0.0)
            )
            in_outage = [c for c in outage.changes if faulted <= c[4] < resumed]
            await harness.until(
                lambda: _none_lost(r, outage.changes),
                timeout=60,
                what="every acknowledged change in etcd",
            )
            landed_s = time.monotonic() - resumed
            api = harness.Api(r.endpoint("qvdc-a"))
            try:
                await harness.until(
                    lambda: harness.pool_ready(api, s.pool_id, rows=3),
                    timeout=60,
                    what="local pool READY after the outage",
                )
                ready_s = time.monotonic() - resumed
            finally:
                api.close()
            tail = await after
        lost = await harness.lost_reports(r.store, outage.changes)
        false_offline = watch.offline_nodes(node_ids)
        errors = outage.errors + tail.errors
        harness.record(
            f"etcd_{fault}",
            outage_s=round(resumed - faulted, 1),
            nodes=3,
            simulated_hosts=HOSTS,
            heartbeats_acked=outage.acked + tail.acked,
            heartbeat_errors=errors,
            max_ack_s=round(max(outage.max_ack_s, tail.max_ack_s), 2),
            changes_during_outage=len(in_outage),
            lost_reports=lost,
            changes_landed_after_s=round(landed_s, 2),
            pool_ready_after_s=round(ready_s, 2),
            false_offline=len(false_offline),
        )
        assert errors == 0, outage.first_error or tail.first_error
        assert in_outage, "no report changed during the outage"
        assert lost == 0
        assert false_offline == [], f"nodes written OFFLINE: {false_offline}"


async def _none_lost(r: harness.Rig, changes: list[tuple[str, str, int, int, float]]) -> bool:
    assert r.store is not None
    return await harness.lost_reports(r.store, changes) == 0
