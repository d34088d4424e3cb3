"""Liveness transitions are logged once each as events (qvdc.kits.eventlog): a node going
OFFLINE (node.offline, with how long it was silent and its grace), coming back
(node.recovered, with how long it was offline) and each phase change (node.phase), and
the freeze's start and end (liveness.frozen / liveness.unfrozen), on real etcd."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from qvdc.kits import eventlog
from qvdc.store.etcd import EtcdStore
from tests.qvdc.engines.liveness_rig import GRACE, Replica, make_replica

LOGGER = "qvdc.engines.liveness"


@pytest.fixture
async def replica(store: EtcdStore) -> AsyncIterator[Replica]:
    a = await make_replica(store, "A")
    try:
        yield a
    finally:
        await a.stop_following()


def events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, object]]]:
    return [
        (getattr(r, eventlog.EVENT_ATTR), dict(getattr(r, eventlog.FIELDS_ATTR)))
        for r in caplog.records
        if r.name == LOGGER and hasattr(r, eventlog.EVENT_ATTR)
    ]


async def test_offline_recovered_and_phase_are_logged_once_each(
    store: EtcdStore, replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    a = replica
    quiet, chatty = await a.register("quiet"), await a.register("chatty")
    await a.heartbeat(quiet, chatty)
    await a.pass_(GRACE + 1.0, heard=(chatty,))
    await a.pass_(1.0, heard=(chatty,))  # nothing new: no second event
    offline = [(n, f) for n, f in events(caplog) if n == "node.offline"]
    assert [f["node_id"] for _, f in offline] == [quiet]
    assert offline[0][1]["grace_s"] == GRACE
    assert float(str(offline[0][1]["silent_s"])) > GRACE
    assert [(f["from"], f["to"]) for n, f in events(caplog) if n == "node.phase"] == [
        ("READY", "OFFLINE")
    ]
    caplog.clear()
    await a.pass_(3.0, heard=(quiet, chatty))
    got = events(caplog)
    assert [n for n, _ in got] == ["node.recovered", "node.phase"]
    recovered = got[0][1]
    assert recovered["node_id"] == quiet
    assert float(str(recovered["offline_s"])) > 0
    assert (got[1][1]["from"], got[1][1]["to"]) == ("OFFLINE", "READY")


async def test_the_freeze_is_two_events(
    store: EtcdStore, replica: Replica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    a = replica
    nodes = [await a.register(f"h{i}") for i in range(3)]
    await a.heartbeat(*nodes)
    await a.pass_(GRACE + 5.0)
    await a.pass_(5.0)
    await a.pass_(5.0, heard=(nodes[0],))
    got = events(caplog)
    assert [n for n, _ in got] == ["liveness.frozen", "liveness.unfrozen"]
    assert got[0][1] == {"nodes": 3, "grace_s": GRACE}
    assert (got[1][1]["heard"], got[1][1]["frozen"]) == (1, 3)
