"""A three-member etcd cluster loses one member (SIGKILL) under load: no node sees an error.

Three etcd processes on loopback form one cluster; the replica is told all
three endpoints (``--etcd`` repeated: it keeps the first that answers and
fails over to the next when a call finds it unavailable). The member the
replica uses is killed while three real node daemons and simulated hosts
heartbeat, with reports changing:

- no simulated heartbeat fails and no node daemon logs a warning or an error;
- an API write made after the kill succeeds (the figure: seconds from the
  kill until it did) and every acknowledged report is in etcd;
- no node is written OFFLINE.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from tests.faults import harness

TIMING = harness.Timing(interval=1.0, grace=5.0)
HOSTS = 60
NODE_TROUBLE = re.compile(r" (WARNING|ERROR|CRITICAL) ")


@pytest.mark.faults
@pytest.mark.timeout(180)
async def test_etcd_member_killed_no_node_sees_an_error(tmp_path: Path) -> None:
    async with harness.rig(tmp_path, timing=TIMING, etcd_members=3) as r:
        s = await harness.setup(r, replicas=["qvdc-a"], nodes=3, fleets={"qvdc-a": HOSTS})
        assert r.store is not None
        node_ids = [*s.node_ids.values(), *r.fleets["qvdc-a"].node_ids]
        victim = r.etcd[0]  # the first endpoint answered: the replica's connection
        async with harness.OfflineWatch(r.store) as watch:
            load = asyncio.create_task(
                r.run_fleet(replica="qvdc-a", seconds=2 + 3 * TIMING.grace, change_fraction=0.05)
            )
            await asyncio.sleep(2)
            offsets = {n: c.log_path.stat().st_size for n, c in r.nodes.items()}
            await asyncio.to_thread(victim.kill)
            killed = time.monotonic()
            api = harness.Api(r.endpoint("qvdc-a"))
            try:
                _, write_s = await harness.until(
                    lambda: api.local_pool("after-kill", [s.node_ids["node-0"]]),
                    timeout=60,
                    what="an API write after the member was killed",
                )
                tally = await load
                await harness.until(
                    lambda: harness.pool_ready(api, s.pool_id, rows=3),
                    timeout=30,
                    what="local pool READY",
                )
            finally:
                api.close()
        write_s = min(write_s, time.monotonic() - killed)
        lost = await harness.lost_reports(r.store, tally.changes)
        trouble = {
            name: [
                line
                for line in _read_from(child.log_path, offsets[name]).splitlines()
                if NODE_TROUBLE.search(line)
            ]
            for name, child in r.nodes.items()
        }
        trouble = {k: v for k, v in trouble.items() if v}
        false_offline = watch.offline_nodes(node_ids)
        harness.record(
            "etcd_member_lost",
            etcd_members=3,
            nodes=3,
            simulated_hosts=HOSTS,
            heartbeats_acked=tally.acked,
            heartbeat_errors=tally.errors,
            max_ack_s=round(tally.max_ack_s, 2),
            node_daemon_warnings=sum(len(v) for v in trouble.values()),
            api_write_after_s=round(write_s, 2),
            lost_reports=lost,
            reports_acked=len(tally.changes),
            false_offline=len(false_offline),
        )
        assert tally.errors == 0, tally.first_error
        assert not trouble, f"node daemons logged trouble: {trouble}"
        assert lost == 0
        assert tally.changes
        assert false_offline == [], f"nodes written OFFLINE: {false_offline}"


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")
