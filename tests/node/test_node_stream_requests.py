"""The node daemon answering the controller's requests on its heartbeat stream, against a
real grpclib server running a scripted NodeService (tests/node/conftest.py).

A request message acknowledges nothing and carries no assignment, so it must not detach
anything; ``reattach_pool_ids`` detaches and attaches exactly the named pools the host
has; ``list_files`` is answered on the same stream with a message that carries only the
listing (or the refusal) and the request's id, while heartbeats carry on.
Not on looptime: the listing runs in a real worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from node import app
from protos.limiquantix.compute import v1 as compute
from storage_backends import fake


async def _start(
    controller: Any, node_settings: Any, run_app: Any, pool_def: Any, path: Path
) -> tuple[app.NodeApp, fake.FakeBackend]:
    backend = fake.FakeBackend(kind="local_dir")
    controller.assigned = [pool_def("p1", path=str(path))]
    node = app.NodeApp(
        settings=node_settings(controller.endpoint, heartbeat_interval=0.5),
        backend_factory=lambda kind: backend,
    )
    await run_app(node)
    return node, backend


async def _send(controller: Any, message: compute.UpdateHeartbeatResponse) -> None:
    for stream, _ in list(controller._open.values()):
        await stream.send_message(message)


def _answers(controller: Any) -> list[compute.ListFilesResult]:
    return [r.list_files_result for r in controller.requests if r.list_files_result is not None]


async def test_reattach_and_listing_requests_on_the_stream(
    controller: Any,
    node_settings: Any,
    run_app: Any,
    pool_def: Any,
    eventually: Callable[..., Any],
    tmp_path: Path,
) -> None:
    root = tmp_path / "pool"
    (root / "images").mkdir(parents=True)
    (root / "b.iso").write_bytes(b"12345")
    (root / "a.qcow2").write_bytes(b"1")
    node, backend = await _start(controller, node_settings, run_app, pool_def, root)
    await eventually(lambda: backend.attached == {"p1"}, what="p1 attached")
    await eventually(lambda: node.heartbeat.acked_reports.get("p1") is not None, what="p1 reported")

    await _send(controller, compute.UpdateHeartbeatResponse(reattach_pool_ids=["p1", "nope"]))
    await eventually(lambda: backend.calls_to("detach") == ["p1"], what="p1 detached once")
    await eventually(lambda: backend.calls_to("attach") == ["p1", "p1"], what="attached again")
    assert backend.attached == {"p1"}  # nothing else detached: the request assigns nothing

    question = compute.ListFilesRequest(request_id=7, pool_id="p1", path="/", limit=2)
    await _send(controller, compute.UpdateHeartbeatResponse(list_files=question))
    await eventually(lambda: len(_answers(controller)) == 1, what="the listing answered")
    (answer,) = _answers(controller)
    assert answer.request_id == 7 and answer.error_code == 0
    assert [(e.name, e.is_directory) for e in answer.entries] == [
        ("images", True),
        ("a.qcow2", False),
    ]
    assert answer.more is True
    carrier = next(r for r in controller.requests if r.list_files_result is not None)
    assert carrier.delta is True and carrier.storage_pools == [] and carrier.sequence == 0

    after = compute.ListFilesRequest(
        request_id=8, pool_id="p1", after_name="a.qcow2", after_is_directory=False
    )
    refused = compute.ListFilesRequest(request_id=9, pool_id="p1", path="../etc")
    unknown = compute.ListFilesRequest(request_id=10, pool_id="other")
    for ask in (after, refused, unknown):
        await _send(controller, compute.UpdateHeartbeatResponse(list_files=ask))
    await eventually(lambda: len(_answers(controller)) == 4, what="three more answers")
    by_id = {a.request_id: a for a in _answers(controller)}
    assert [e.name for e in by_id[8].entries] == ["b.iso"] and by_id[8].more is False
    assert (by_id[9].error_code, by_id[9].error_message) == (3, "path: contains '..'")
    assert (by_id[10].error_code, by_id[10].error_message) == (
        5,
        "pool other is not attached on this host",
    )
    acked = node.heartbeat.stats.acknowledged
    await eventually(lambda: node.heartbeat.stats.acknowledged > acked, what="heartbeats go on")


async def test_a_listing_that_crashes_is_still_answered(
    controller: Any,
    node_settings: Any,
    run_app: Any,
    pool_def: Any,
    eventually: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    node, backend = await _start(controller, node_settings, run_app, pool_def, tmp_path)
    await eventually(lambda: backend.attached == {"p1"}, what="p1 attached")

    async def broken(**_: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(node.heartbeat._files, "list", broken)
    ask = compute.ListFilesRequest(request_id=3, pool_id="p1")
    await _send(controller, compute.UpdateHeartbeatResponse(list_files=ask))
    await eventually(lambda: len(_answers(controller)) == 1, what="answered")
    (answer,) = _answers(controller)
    assert (answer.error_code, answer.error_message) == (
        14,
        "listing failed on this host: RuntimeError",
    )
