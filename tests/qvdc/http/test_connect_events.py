"""The event and metrics RPCs over Connect (HTTP/1.1, JSON) against a real replica:
ListNodeEvents and GetNodeMetrics unary, StreamEvents and StreamNodeMetrics as Connect
server streams, with the same answers and refusals as the gRPC face."""

from __future__ import annotations

from protos.limiquantix.compute import v1 as compute
from qvdc.app import Controller
from tests.qvdc.api.helpers import eventually, register_request
from tests.qvdc.http.conftest import Http
from tests.qvdc.http.test_connect_watch import ConnectStream

NODES = "limiquantix.compute.v1.NodeService"


async def test_events_listed_and_streamed_over_connect(
    controller: Controller, client: Http, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("connect-events"))
    stream = await ConnectStream.open(
        controller.http_port, f"{NODES}/StreamEvents", {"nodeId": node.id}
    )
    try:
        assert stream.status == 200
        marker = await stream.message()
        assert marker["type"] == "SERVICE_STARTED" and marker["metadata"]["marker"] == "subscribed"
        await nodes.disable_node(compute.DisableNodeRequest(id=node.id, reason="firmware"))
        event = await stream.message()
        assert event["metadata"]["event"] == "node.phase"
        assert event["metadata"]["to"] == "MAINTENANCE"
        assert event["resourceId"] == node.id and event["source"] == "qvdc"
        assert "firmware" in event["message"]
    finally:
        await stream.close()

    listed = await eventually(
        lambda: client.call(f"{NODES}/ListNodeEvents", {"nodeId": node.id, "limit": 5}),
        lambda answer: bool(answer.json().get("events")),
        what="the event listed",
    )
    assert listed.status == 200, listed.body
    [first] = listed.json()["events"]
    assert (first["id"], first["reason"], first["nodeId"]) == (event["id"], "node.phase", node.id)
    assert first.get("type", "NORMAL") == "NORMAL"
    grpc = await nodes.list_node_events(compute.ListNodeEventsRequest(node_id=node.id))
    assert [e.id for e in grpc.events] == [first["id"]]

    bad = await client.call(f"{NODES}/ListNodeEvents", {"nodeId": node.id, "limit": -1})
    assert bad.status == 400 and bad.json()["code"] == "invalid_argument"
    assert "limit" in bad.json()["message"]
    missing = await ConnectStream.open(
        controller.http_port, f"{NODES}/StreamEvents", {"nodeId": "nobody"}
    )
    try:
        flags, end = await missing.frame()
        assert flags == 2 and end["error"]["code"] == "not_found"
    finally:
        await missing.close()


async def test_metrics_over_connect(
    controller: Controller, client: Http, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("connect-metrics"))
    beat = {"nodeId": node.id, "cpuUsagePercent": 7.25, "memoryUsedMib": 2048}
    beat |= {"memoryTotalMib": 4096, "load1m": 0.5}
    assert (await client.call(f"{NODES}/UpdateHeartbeat", beat)).status == 200
    got = await client.call(f"{NODES}/GetNodeMetrics", {"id": node.id})
    assert got.status == 200, got.body
    metrics = got.json()
    assert (
        metrics["cpuUsagePercent"] == 7.25 and metrics["load1m"] == 0.5
    )  # protoc's JSON name (betterproto2 alone wrote "load1M")
    assert int(metrics["memoryTotalBytes"]) == 4096 << 20
    assert int(metrics["memoryAvailableBytes"]) == 2048 << 20

    stream = await ConnectStream.open(
        controller.http_port, f"{NODES}/StreamNodeMetrics", {"nodeId": node.id, "intervalSec": 1}
    )
    try:
        first = await stream.message()
        beat["cpuUsagePercent"] = 50.0
        await client.call(f"{NODES}/UpdateHeartbeat", beat)
        second = await stream.message()
        assert (first["cpuUsagePercent"], second["cpuUsagePercent"]) == (7.25, 50.0)
    finally:
        await stream.close()
    refused = await ConnectStream.open(
        controller.http_port,
        f"{NODES}/StreamNodeMetrics",
        {"nodeId": node.id, "intervalSec": 3601},
    )
    try:
        flags, end = await refused.frame()
        assert flags == 2 and end["error"]["code"] == "invalid_argument"
        assert "interval_sec" in end["error"]["message"]
    finally:
        await refused.close()
