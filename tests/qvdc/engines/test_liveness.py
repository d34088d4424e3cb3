"""LivenessMonitor passes: a node goes offline when its grace runs out, never earlier, and a
pass does not scan every node while none can have expired."""

from __future__ import annotations

import asyncio
from typing import Any

from qvdc.domain.model import NodeId
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.view import ClusterView
from qvdc.kits import tasks
from qvdc.kits.timing import FakeClock
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore

GRACE = 100.0


def monitor(store: EtcdStore, clock: FakeClock, *, mass_outage: float = 1.0) -> LivenessMonitor:
    return LivenessMonitor(
        store=store,
        view=ClusterView(store=store),  # not followed: these passes read no keys
        clock=clock,
        replica_id="r1",
        grace=GRACE,
        startup_grace=GRACE,
        check_period=5.0,
        mass_outage_fraction=mass_outage,
        timeout=5.0,
    )


class _CountingRecords(dict[NodeId, object]):
    """The monitor's record table, counting full scans of its values."""

    scans = 0

    def values(self) -> Any:
        type(self).scans += 1
        return super().values()


async def test_offline_exactly_when_the_grace_runs_out_and_not_before(store: EtcdStore) -> None:
    clock = FakeClock()
    mon = monitor(store, clock)
    a, b = NodeId("a"), NodeId("b")
    mon.observe(a)
    clock.advance(30)
    mon.observe(b)
    clock.advance(GRACE - 30)  # a is exactly GRACE old: still live
    mon.check()
    assert mon.is_live(a) and mon.is_live(b)
    clock.advance(0.5)
    mon.check()
    assert not mon.is_live(a) and mon.is_live(b)
    mon.observe(a)  # back: live again, with a fresh grace from now
    clock.advance(GRACE - 0.5)  # b's grace runs out first
    mon.check()
    assert mon.is_live(a) and not mon.is_live(b)
    clock.advance(1)
    mon.check()
    assert not mon.is_live(a)


async def test_passes_scan_the_nodes_only_once_one_could_have_expired(store: EtcdStore) -> None:
    clock = FakeClock()
    mon = monitor(store, clock)
    records = _CountingRecords()
    _CountingRecords.scans = 0
    mon._records = records  # type: ignore[assignment]
    for n in ("a", "b", "c"):
        mon.observe(NodeId(n))
    mon.check()
    assert _CountingRecords.scans == 1  # a first scan finds the oldest heartbeat
    for _ in range(10):  # a and c keep heartbeating, b falls silent; a pass every 5 s
        clock.advance(5)
        mon.observe(NodeId("a"))
        mon.observe(NodeId("c"))
        mon.check()
    assert _CountingRecords.scans == 1  # the oldest heartbeat was 50 s old: nothing to scan
    clock.advance(GRACE - 50 + 1)  # b is past its grace now: a scan finds it
    mon.check()
    assert _CountingRecords.scans >= 2
    assert [mon.is_live(NodeId(n)) for n in ("a", "b", "c")] == [True, False, True]
    mon.observe(NodeId("b"))  # b becoming live again lowers the bound
    clock.advance(GRACE + 1)  # every node silent since: a mass outage by the default rule
    mon.check()
    assert mon.mass_outage and all(mon.is_live(NodeId(n)) for n in ("a", "b", "c"))


async def test_the_configured_mass_outage_fraction_is_the_one_applied(store: EtcdStore) -> None:
    for fraction, outage in ((1.0, False), (0.5, True)):
        clock = FakeClock()
        mon = monitor(store, clock, mass_outage=fraction)
        for n in ("a", "b", "c"):
            mon.observe(NodeId(n))
        clock.advance(GRACE + 1)
        mon.observe(NodeId("c"))  # two of three fall silent
        mon.check()
        assert mon.mass_outage is outage, fraction
        assert mon.is_live(NodeId("a")) is outage, fraction


async def test_a_view_that_lags_behind_a_status_write_does_not_stop_the_others(
    store: EtcdStore,
) -> None:
    """The write is in etcd but the view does not see it in time (its watch is down):
    the monitor goes on with the next node instead of failing (a root task's crash
    stops the replica)."""
    for n in ("a", "b"):
        await store.put(keys.node(n), codec.encode_node_document({"id": n, "hostname": n}))
    view = ClusterView(store=store)
    following = asyncio.create_task(view.run())
    await view.wait_ready(timeout=5.0)
    await tasks.cancel_and_wait(following)  # listed, then no longer following the watch
    mon = LivenessMonitor(
        store=store,
        view=view,
        clock=FakeClock(),
        replica_id="r1",
        grace=GRACE,
        startup_grace=GRACE,
        check_period=5.0,
        mass_outage_fraction=1.0,
        timeout=0.3,
    )
    mon.observe(NodeId("a"))
    mon.observe(NodeId("b"))
    await mon._write_transitions()  # each wait for the view times out
    for n in ("a", "b"):
        kv = await store.get(keys.node_status(n))
        assert kv is not None and codec.decode_node_state(n, kv.value).live
