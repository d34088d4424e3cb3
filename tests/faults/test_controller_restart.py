"""The only controller replica restarts (SIGTERM or SIGKILL) under 1,000 simulated hosts.

One replica, three real node daemons and 1,000 simulated hosts (one NFS pool
per ten hosts), heartbeating every 2 s with 1 % of reports changing. The
replica is stopped and started again on the same port; the simulated hosts
reconnect (one full heartbeat each, as a node does after a lost stream) and
the daemons reconnect by themselves. The restarted replica has not heard
anyone yet, so it gives every node a fresh startup grace:

- no node is ever written OFFLINE (watched for two graces after the restart);
- no heartbeat fails once the hosts have reconnected, and every acknowledged
  report (before and after the restart) is in etcd after the resync;
- the figures: seconds the replica was away, and seconds the 1,000 hosts took
  to reconnect.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.faults import harness

TIMING = harness.Timing(interval=2.0, grace=10.0)
HOSTS = 1000


@pytest.mark.faults
@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_controller_restart_1000_hosts_none_offline(tmp_path: Path, how: str) -> None:
    async with harness.rig(tmp_path, timing=TIMING) as r:
        s = await harness.setup(
            r, replicas=["qvdc-a"], nodes=3, fleets={"qvdc-a": HOSTS}, pools_per_host=1
        )
        assert r.store is not None
        node_ids = [*s.node_ids.values(), *r.fleets["qvdc-a"].node_ids]
        async with harness.OfflineWatch(r.store) as watch:
            before = await r.run_fleet(replica="qvdc-a", seconds=3 * TIMING.interval,
                                       change_fraction=0.01)  # fmt: skip
            replica = r.replicas["qvdc-a"]
            stopped = time.monotonic()
            if how == "sigkill":
                harness.sigkill(replica)
            else:
                replica.proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(replica.proc.wait, 30)
            await asyncio.to_thread(replica.stop)  # closes its log
            await asyncio.to_thread(r.start_replica, "qvdc-a")
            away_s = time.monotonic() - stopped
            await r.open_fleet(replica="qvdc-a")
            reconnect_s = time.monotonic() - stopped - away_s
            after = await r.run_fleet(replica="qvdc-a", seconds=2 * TIMING.grace,
                                      change_fraction=0.01)  # fmt: skip
        lost = await harness.lost_reports(r.store, [*before.changes, *after.changes])
        api = harness.Api(r.endpoint("qvdc-a"))
        try:
            await harness.until(
                lambda: harness.pool_ready(api, s.pool_id, rows=3),
                timeout=60,
                what="local pool READY after the restart",
            )
        finally:
            api.close()
        offline = watch.offline_nodes(node_ids)
        harness.record(
            f"controller_restart_{how}",
            nodes=3,
            simulated_hosts=HOSTS,
            interval_s=TIMING.interval,
            grace_s=TIMING.grace,
            away_s=round(away_s, 2),
            reconnect_s=round(reconnect_s, 2),
            offline=len(offline),
            heartbeat_errors_after=after.errors,
            heartbeats_acked=before.acked + after.acked,
            lost_reports=lost,
            reports_acked=len(before.changes) + len(after.changes),
        )
        assert before.errors == 0, before.first_error
        assert after.errors == 0, after.first_error
        assert offline == [], f"{len(offline)} nodes written OFFLINE: {offline[:5]}"
        assert lost == 0
