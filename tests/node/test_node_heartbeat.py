"""Heartbeat loop against a real grpclib server running a scripted NodeService.

Covers the delta protocol (full first, material deltas, removed ids, the
baseline moving only on acknowledgement), full syncs (after reconnecting,
on request, on an unsolicited request), interval adoption, unsolicited
pushes, the immediate heartbeat on a health change, and the unary fallback.
Pools come from a FakeBackend so tests can change a pool's health at will.

The module runs on looptime's virtual clock: the node, the scripted controller
and the sockets between them all live in this process, so the loop idles only
when timers are all that is left, and intervals, rpc timeouts and the tests'
deadlines are exact and cost no real time, however loaded the machine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from node import app
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from storage_backends import base, fake

GIB = 1024**3
HEALTHY = compute.StoragePoolStatusReportHealthStatus.HEALTH_HEALTHY
DEGRADED = compute.StoragePoolStatusReportHealthStatus.HEALTH_DEGRADED
ERROR = compute.StoragePoolStatusReportHealthStatus.HEALTH_ERROR

pytestmark = pytest.mark.looptime


def pools_of(request: compute.UpdateHeartbeatRequest) -> dict[str, compute.StoragePoolStatusReport]:
    return {p.pool_id: p for p in request.storage_pools}


def acked_health(node: app.NodeApp) -> dict[str, base.PoolHealth]:
    return {k: v.health for k, v in node.heartbeat.acked_reports.items()}


def all_healthy(node: app.NodeApp, *pool_ids: str) -> bool:
    """The controller has acknowledged exactly ``pool_ids``, all HEALTHY."""
    return acked_health(node) == dict.fromkeys(pool_ids, base.PoolHealth.HEALTHY)


async def start_node(
    controller: Any,
    node_settings: Callable[..., Any],
    run_app: Callable[[app.NodeApp], Awaitable[Any]],
    pool_def: Callable[..., Any],
    *pool_ids: str,
    **settings: Any,
) -> tuple[app.NodeApp, fake.FakeBackend]:
    """A running node whose controller assigns ``pool_ids`` (fake local_dir pools)."""
    backend = fake.FakeBackend(kind="local_dir")
    controller.assigned = [pool_def(pid) for pid in pool_ids]
    node = app.NodeApp(
        settings=node_settings(controller.endpoint, **settings),
        backend_factory=lambda kind: backend,
    )
    await run_app(node)
    return node, backend


async def test_first_full_then_only_material_changes(
    controller, node_settings, run_app, pool_def, eventually
):
    node, backend = await start_node(controller, node_settings, run_app, pool_def, "p1", "p2")
    await controller.wait_requests(1)
    first = controller.requests[0]
    assert (first.sequence, first.delta, first.node_id) == (1, False, "node-host-a-1")

    await eventually(
        lambda: (
            acked_health(node) == {"p1": base.PoolHealth.HEALTHY, "p2": base.PoolHealth.HEALTHY}
        ),
        what="both pools acknowledged healthy",
    )
    # A capacity wobble below the materiality threshold (1 MiB of 100 GiB) is not sent.
    backend.script("p1", used_bytes=1024**2)
    n = len(controller.requests)
    await controller.wait_requests(n + 3)
    quiet = controller.requests[n:]
    assert all(r.delta for r in quiet)
    assert all(not r.storage_pools and not r.removed_pool_ids for r in quiet)
    assert [r.sequence for r in controller.requests] == list(range(1, len(controller.requests) + 1))

    # A material capacity change is sent, alone.
    backend.script("p1", used_bytes=50 * GIB)
    n = len(controller.requests)
    await eventually(
        lambda: any("p1" in pools_of(r) for r in controller.requests[n:]), what="delta with p1"
    )
    delta = next(r for r in controller.requests[n:] if "p1" in pools_of(r))
    assert delta.delta
    assert set(pools_of(delta)) == {"p1"}
    assert pools_of(delta)["p1"].used_bytes == 50 * GIB
    assert pools_of(delta)["p1"].available_bytes == 50 * GIB


async def test_dropped_pool_is_sent_as_removed_id(
    controller, node_settings, run_app, pool_def, eventually
):
    node, backend = await start_node(controller, node_settings, run_app, pool_def, "p1", "p2")
    await eventually(lambda: all_healthy(node, "p1", "p2"), what="both pools acked healthy")

    controller.assigned = [pool_def("p1")]
    n = len(controller.requests)
    await controller.push()
    await eventually(
        lambda: any(r.removed_pool_ids for r in controller.requests[n:]), what="removed id"
    )
    removal = next(r for r in controller.requests[n:] if r.removed_pool_ids)
    assert removal.delta
    assert list(removal.removed_pool_ids) == ["p2"]
    assert "p2" not in pools_of(removal)
    assert backend.attached == {"p1"}
    await eventually(lambda: set(acked_health(node)) == {"p1"}, what="baseline without p2")


async def test_unacknowledged_change_is_resent_in_full_after_reconnect(
    controller, node_settings, run_app, pool_def, eventually
):
    node, backend = await start_node(
        controller, node_settings, run_app, pool_def, "p1", "p2", rpc_timeout=0.3
    )
    await eventually(lambda: all_healthy(node, "p1", "p2"), what="both pools acked healthy")

    controller.withhold_acks = True
    n = len(controller.requests)
    backend.script("p2", health=base.PoolHealth.ERROR, error_message="disk gone")
    await eventually(
        lambda: any("p2" in pools_of(r) for r in controller.requests[n:]), what="delta with p2"
    )
    lost = next(
        i for i in range(n, len(controller.requests)) if "p2" in pools_of(controller.requests[i])
    )
    assert controller.requests[lost].delta
    # Never acknowledged: the baseline still says p2 is healthy.
    assert acked_health(node)["p2"] is base.PoolHealth.HEALTHY

    # Without an ack within rpc_timeout the node drops the stream and opens a new one,
    # whose first heartbeat is FULL and carries the change again.
    await eventually(lambda: controller.streams_opened >= 2, what="a second stream")
    controller.withhold_acks = False
    await eventually(
        lambda: acked_health(node).get("p2") is base.PoolHealth.ERROR, what="p2 ERROR acknowledged"
    )
    resent = next(r for r in controller.requests[lost + 1 :] if r.sequence == 1)
    assert not resent.delta
    assert set(pools_of(resent)) == {"p1", "p2"}
    assert pools_of(resent)["p2"].health == ERROR
    assert pools_of(resent)["p2"].error_message == "disk gone"


async def test_negative_acknowledgement_makes_the_next_heartbeat_full(
    controller, node_settings, run_app, pool_def, eventually
):
    node, _ = await start_node(controller, node_settings, run_app, pool_def, "p1")
    await eventually(lambda: all_healthy(node, "p1"), what="p1 acked healthy")
    n = len(controller.requests)
    controller.nack_next = True
    await controller.wait_requests(n + 3)
    after = controller.requests[n:]
    # The nacked heartbeat (a delta) is followed by a full one on the same stream.
    assert after[0].delta
    assert not after[1].delta and after[1].sequence > 1
    assert set(pools_of(after[1])) == {"p1"}
    assert after[2].delta
    assert controller.streams_opened == 1


async def test_reconnect_starts_with_full_heartbeat(
    controller, node_settings, run_app, pool_def, eventually
):
    node, _ = await start_node(controller, node_settings, run_app, pool_def, "p1", "p2")
    await eventually(lambda: all_healthy(node, "p1", "p2"), what="both pools acked healthy")
    n = len(controller.requests)
    controller.drop_streams()
    await eventually(
        lambda: any(r.sequence == 1 for r in controller.requests[n:]), what="a new stream"
    )
    first_on_new = next(r for r in controller.requests[n:] if r.sequence == 1)
    assert not first_on_new.delta
    assert set(pools_of(first_on_new)) == {"p1", "p2"}
    assert controller.streams_opened == 2
    assert len(controller.register_requests) == 1  # the node id is still good


async def test_request_full_sync_in_an_answer(
    controller, node_settings, run_app, pool_def, eventually
):
    node, _ = await start_node(controller, node_settings, run_app, pool_def, "p1")
    await eventually(lambda: all_healthy(node, "p1"), what="p1 acked healthy")
    n = len(controller.requests)
    controller.full_sync_next = True
    await controller.wait_requests(n + 3)
    after = controller.requests[n:]
    assert after[0].delta  # answered with request_full_sync=true
    assert not after[1].delta and set(pools_of(after[1])) == {"p1"}
    assert after[2].delta
    assert controller.streams_opened == 1


async def test_unsolicited_full_sync_request_is_served_at_once(
    controller, node_settings, run_app, pool_def, eventually
):
    # A 30 s interval: any heartbeat within the test's deadline was triggered, not scheduled.
    node, _ = await start_node(
        controller, node_settings, run_app, pool_def, "p1", heartbeat_interval=30.0
    )
    await eventually(lambda: all_healthy(node, "p1"), what="p1 acked healthy")
    n = len(controller.requests)
    await controller.push(request_full_sync=True)
    await controller.wait_requests(n + 1)
    assert not controller.requests[n].delta
    assert set(pools_of(controller.requests[n])) == {"p1"}


async def test_health_change_triggers_an_immediate_heartbeat(
    controller, node_settings, run_app, pool_def, eventually
):
    node, backend = await start_node(
        controller, node_settings, run_app, pool_def, "p1", "p2", heartbeat_interval=30.0
    )
    await eventually(
        lambda: (
            acked_health(node) == {"p1": base.PoolHealth.HEALTHY, "p2": base.PoolHealth.HEALTHY}
        ),
        what="both pools acknowledged healthy",
    )
    n = len(controller.requests)
    backend.script("p1", health=base.PoolHealth.DEGRADED, error_message="read-only")
    await controller.wait_requests(n + 1)
    extra = controller.requests[n]
    assert extra.delta
    assert set(pools_of(extra)) == {"p1"}
    assert pools_of(extra)["p1"].health == DEGRADED
    assert pools_of(extra)["p1"].error_message == "read-only"


async def test_unsolicited_push_attaches_between_heartbeats(
    controller, node_settings, run_app, pool_def, eventually
):
    node, backend = await start_node(
        controller, node_settings, run_app, pool_def, heartbeat_interval=30.0
    )
    await controller.wait_requests(1)
    await eventually(lambda: node.heartbeat.stats.acknowledged == 1, what="first ack")
    assert backend.attached == set()

    controller.assigned = [pool_def("p9")]
    await controller.push()
    await eventually(lambda: backend.attached == {"p9"}, what="p9 attached after the push")
    await eventually(
        lambda: acked_health(node).get("p9") is base.PoolHealth.HEALTHY, what="p9 reported"
    )

    # And an empty assignment list detaches it (upstream ignored empty lists).
    controller.assigned = []
    await controller.push()
    await eventually(lambda: backend.attached == set(), what="p9 detached")
    assert backend.calls_to("detach") == ["p9"]
    await eventually(lambda: acked_health(node) == {}, what="p9 gone from the baseline")


async def test_interval_from_the_controller_is_adopted(
    controller, node_settings, run_app, pool_def, eventually
):
    controller.interval = 7
    node, _ = await start_node(controller, node_settings, run_app, pool_def)
    await eventually(lambda: node.status().heartbeat_interval == 7.0, what="interval adopted")


async def test_unary_fallback_when_stream_is_unimplemented(
    controller, node_settings, run_app, pool_def, eventually
):
    controller.stream_unimplemented = True
    node, _ = await start_node(controller, node_settings, run_app, pool_def, "p1")
    await eventually(lambda: len(controller.unary_requests) >= 3, what="unary heartbeats")
    assert all(not r.delta for r in controller.unary_requests)
    await eventually(
        lambda: "p1" in pools_of(controller.unary_requests[-1]), what="p1 in a unary heartbeat"
    )
    assert node.status().attached == ("p1",)
    assert node.status().endpoint == controller.endpoint


async def test_full_sync_requested_in_answer_to_a_full_heartbeat_is_not_lost(
    controller, node_settings, run_app, pool_def
):
    # The answer to the first (full) heartbeat asks for another full sync, e.g.
    # because the controller lost state while it was in flight: honour it.
    controller.full_sync_next = True
    await start_node(controller, node_settings, run_app, pool_def)
    await controller.wait_requests(3)
    assert [r.delta for r in controller.requests[:3]] == [False, False, True]


async def test_answers_with_ids_only_keep_the_held_definitions(
    controller, node_settings, run_app, pool_def, eventually
):
    # QvDC sends full definitions only when the assignment changed; other answers
    # carry just assigned_pool_ids. Pools (and refusals) must survive those answers.
    controller.definitions_once = True
    backend = fake.FakeBackend(kind="local_dir")
    broken = storage.StoragePool(id="broken", name="broken")  # no backend at all
    controller.assigned = [pool_def("p1"), broken]
    node = app.NodeApp(
        settings=node_settings(controller.endpoint), backend_factory=lambda kind: backend
    )
    await run_app(node)
    await eventually(lambda: backend.attached == {"p1"}, what="p1 attached")
    n = len(controller.requests)
    await controller.wait_requests(n + 4)  # several id-only answers later ...
    assert backend.attached == {"p1"}
    assert backend.calls_to("detach") == []
    report = node.status().pools["broken"]
    assert report.health is base.PoolHealth.ERROR
    assert report.error_message.startswith("invalid pool definition: pool broken has no backend")

    # ... and an id list without p1 still detaches it.
    controller.assigned = [broken]
    await controller.push()
    await eventually(lambda: backend.attached == set(), what="p1 detached")
    assert set(node.status().pools) == {"broken"}
