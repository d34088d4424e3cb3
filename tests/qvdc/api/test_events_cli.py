"""``qvdcctl events`` against a real controller: the history newest first (one node or
all), JSON output, and ``--follow`` printing new events from StreamEvents."""

from __future__ import annotations

import asyncio
import json

from protos.limiquantix.compute import v1 as compute
from qvdc.app import Controller
from tests.qvdc.api.helpers import TIMEOUT, eventually, register_request
from tests.qvdc.api.test_cli import invoke, run_cli


async def test_events_lists_and_follows(
    controller: Controller, nodes: compute.NodeServiceStub
) -> None:
    a = await nodes.register_node(register_request("ev-a"), timeout=TIMEOUT)
    b = await nodes.register_node(register_request("ev-b"), timeout=TIMEOUT)
    # This replica's leader.acquired is stored before the follower starts.
    await eventually(
        lambda: asyncio.sleep(0, controller.events.written), lambda n: n >= 1, what="stored"
    )
    # --follow for two events, started before they happen.
    follower = asyncio.create_task(
        asyncio.to_thread(invoke, controller.port, "events", "--follow", "--max-events", "2")
    )
    await eventually(
        lambda: asyncio.sleep(0, controller.events.subscribers),
        lambda n: n == 1,
        what="the follower subscribed",
    )
    await nodes.disable_node(compute.DisableNodeRequest(id=a.id, reason="bios"), timeout=TIMEOUT)
    await nodes.disable_node(compute.DisableNodeRequest(id=b.id, reason="psu"), timeout=TIMEOUT)
    followed = await asyncio.wait_for(follower, 15)
    assert followed.exit_code == 0, followed.output
    lines = followed.output.splitlines()
    assert len(lines) == 2
    assert "node.phase" in lines[0] and "ev-a" in lines[0] and "bios" in lines[0]
    assert "node.phase" in lines[1] and "ev-b" in lines[1] and "psu" in lines[1]

    await nodes.enable_node(compute.EnableNodeRequest(id=a.id), timeout=TIMEOUT)
    r = await eventually(
        lambda: run_cli(controller, "events", "--node", "ev-a"),
        lambda r: r.output.count("node.phase") == 2,
        what="both of ev-a's events listed",
    )
    assert r.exit_code == 0, r.output
    header, newest, oldest = r.output.splitlines()
    assert header.split() == ["TIME", "TYPE", "REASON", "NODE", "MESSAGE"]
    assert "MAINTENANCE -> READY" in newest and "READY -> MAINTENANCE" in oldest
    assert "ev-b" not in r.output

    r = await run_cli(controller, "events", "-o", "json", "--limit", "2")
    assert r.exit_code == 0, r.output
    listed = json.loads(r.output)
    assert [e["reason"] for e in listed] == ["node.phase", "node.phase"]
    assert listed[0]["nodeId"] == a.id  # newest across every node: ev-a's enable
    assert listed[0]["timestamp"] > listed[1]["timestamp"]

    r = await run_cli(controller, "events", "--node", "nobody")
    assert r.exit_code == 1 and "NOT_FOUND" in r.output
