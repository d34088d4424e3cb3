"""The liveness engine keeps operator phases (DRAINING, MAINTENANCE) through silence and
heartbeats: only ``live`` changes; EnableNode ends them (to OFFLINE when silent)."""

from __future__ import annotations

import pytest

from qvdc.domain.model import NodePhase
from qvdc.store.etcd import EtcdStore
from tests.qvdc.engines.liveness_rig import GRACE, make_replica, status


@pytest.mark.parametrize(
    ("drain", "phase"), [(True, NodePhase.DRAINING), (False, NodePhase.MAINTENANCE)]
)
async def test_an_operator_phase_survives_silence_and_return(
    store: EtcdStore, drain: bool, phase: NodePhase
) -> None:
    r = await make_replica(store, "r1")
    node, other = await r.register("op-1"), await r.register("op-2")
    await r.heartbeat(node, other)
    await r.catalog.set_operator_phase(node, maintenance=not drain, reason="", draining=drain)
    assert (await status(store, node)).phase == phase
    # Silent past the grace (the other node keeps talking: no mass outage).
    await r.pass_(GRACE + 1, heard=(other,))
    await r.caught_up()
    silent = await status(store, node)
    assert (silent.phase, silent.live) == (phase, False)
    assert r.view.node_state(other).phase == NodePhase.READY
    # Heard again: live, and still in the operator phase.
    await r.pass_(1, heard=(node, other))
    await r.caught_up()
    back = await status(store, node)
    assert (back.phase, back.live) == (phase, True)
    # EnableNode ends it; silent again, it goes OFFLINE like any node.
    await r.catalog.set_operator_phase(node, maintenance=False, reason="")
    assert (await status(store, node)).phase == NodePhase.READY
    await r.pass_(GRACE + 1, heard=(other,))
    await r.caught_up()
    assert (await status(store, node)).phase == NodePhase.OFFLINE
    await r.stop_following()
