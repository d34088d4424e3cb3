"""Node administration over Connect (HTTP/1.1, JSON) against a real controller and etcd:
the same answers and the same refusals (codes and messages) as over gRPC."""

from __future__ import annotations

from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.google import protobuf as pb
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from tests.qvdc.api.helpers import create_request, register_request
from tests.qvdc.http.conftest import Http

NODES = "limiquantix.compute.v1.NodeService"
POOLS = "limiquantix.storage.v1.StoragePoolService"


async def _ok(client: Http, method: str, body: dict[str, Any], service: str = NODES) -> Any:
    answer = await client.call(f"{service}/{method}", body)
    assert answer.status == 200, answer.body
    return answer.json()


async def _refused(
    client: Http, method: str, body: dict[str, Any], code: str, service: str = NODES
) -> str:
    answer = await client.call(f"{service}/{method}", body)
    assert answer.status != 200, answer.body
    error = answer.json()
    assert error["code"] == code, error
    return str(error["message"])


async def test_labels_taints_and_update_over_connect(
    client: Http, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("cx-1"), timeout=5)
    got = await _ok(
        client,
        "UpdateLabels",
        {"nodeId": node.id, "addLabels": {"zone": "b"}, "removeLabels": ["rack"]},
    )
    assert got["labels"] == {"zone": "b"}
    listed = await _ok(client, "ListNodes", {"labels": {"zone": "b"}})
    assert [n["id"] for n in listed["nodes"]] == [node.id]
    got = await _ok(
        client,
        "AddTaint",
        {"nodeId": node.id, "taint": {"key": "gpu", "value": "a100", "effect": "NO_EXECUTE"}},
    )
    assert got["spec"]["scheduling"]["taints"] == [
        {"key": "gpu", "value": "a100", "effect": "NO_EXECUTE"}
    ]
    got = await _ok(
        client,
        "UpdateNode",
        {
            "id": node.id,
            "role": {"storage": True},
            "scheduling": {"schedulable": False},
            "updateMask": "role,scheduling.schedulable",  # proto3 JSON's FieldMask form
        },
    )
    assert got["spec"]["role"] == {"storage": True}
    assert got["spec"]["scheduling"].get("schedulable", False) is False
    assert got["spec"]["scheduling"]["taints"][0]["key"] == "gpu"  # not in the mask: kept
    storage_only = await _ok(client, "ListNodes", {"storageOnly": True})
    assert [n["id"] for n in storage_only["nodes"]] == [node.id]
    assert (await _ok(client, "ListNodes", {"computeOnly": True})).get("nodes", []) == []
    got = await _ok(client, "RemoveTaint", {"nodeId": node.id, "taintKey": "gpu"})
    assert got["spec"]["scheduling"].get("taints", []) == []
    # The same refusals as over gRPC, code and message.
    cases: list[tuple[str, dict[str, Any], Any]] = [
        (
            "RemoveTaint",
            {"nodeId": node.id, "taintKey": "gpu"},
            nodes.remove_taint(compute.RemoveTaintRequest(node_id=node.id, taint_key="gpu")),
        ),
        (
            "UpdateNode",
            {"id": node.id, "updateMask": "hostname", "role": {}},
            nodes.update_node(
                compute.UpdateNodeRequest(
                    id=node.id,
                    role=compute.NodeRole(),
                    update_mask=pb.FieldMask(paths=["hostname"]),
                )
            ),
        ),
        (
            "UpdateLabels",
            {"nodeId": node.id, "addLabels": {"k": "v"}, "removeLabels": ["k"]},
            nodes.update_labels(
                compute.UpdateLabelsRequest(
                    node_id=node.id, add_labels={"k": "v"}, remove_labels=["k"]
                )
            ),
        ),
    ]
    for method, body, grpc_call in cases:
        try:
            await grpc_call
        except GRPCError as grpc:
            message = await _refused(client, method, body, grpc.status.name.lower())
            assert message == grpc.message
        else:
            raise AssertionError(f"{method} was accepted over gRPC")


async def test_drain_and_decommission_over_connect(
    client: Http, nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    node = await nodes.register_node(register_request("cx-2"), timeout=5)
    pool = await pools.create_pool(create_request("cx-pool", nodes=[node.id]), timeout=5)
    spare = await pools.create_pool(create_request("cx-spare"), timeout=5)
    drained = await _ok(client, "DrainNode", {"id": node.id, "gracePeriodSec": 10})
    assert drained["node"]["status"]["phase"] == "DRAINING"
    assert "migratedVmIds" not in drained and "stoppedVmIds" not in drained
    message = await _refused(
        client,
        "AssignPoolToNode",
        {"poolId": spare.id, "nodeId": node.id},
        "failed_precondition",
        service=POOLS,
    )
    assert "DRAINING" in message and "cx-2" in message
    message = await _refused(client, "DecommissionNode", {"id": node.id}, "failed_precondition")
    assert "cx-pool" in message
    assert await _ok(client, "DecommissionNode", {"id": node.id, "force": True}) == {}
    await _refused(client, "GetNode", {"id": node.id}, "not_found")
    got = await pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=5)
    assert got.spec.assigned_node_ids == []
    try:
        await nodes.get_node(compute.GetNodeRequest(id=node.id), timeout=5)
    except GRPCError as err:
        assert err.status is Status.NOT_FOUND
    else:
        raise AssertionError("the node is still there over gRPC")


async def test_registration_keeps_its_extra_fields_over_connect(client: Http) -> None:
    body = {
        "hostname": "cx-reg",
        "managementIp": "10.2.0.7:9090",
        "taints": [{"key": "dedicated", "value": "storage", "effect": "PREFER_NO_SCHEDULE"}],
        "agentEndpoint": "http://10.2.0.7:8443",
        "cpuInfo": {"sockets": 2, "numaNodes": [{"nodeId": 1, "cpus": [0, 1]}]},
        "memoryInfo": {"totalBytes": "8589934592", "hugePages": {"pages2mbTotal": "512"}},
        "networkDevices": [{"name": "eth0", "sriovCapable": True, "sriovVfsTotal": 8}],
    }
    node = await _ok(client, "RegisterNode", body)
    got = await _ok(client, "GetNode", {"id": node["id"]})
    assert got["spec"]["scheduling"]["taints"] == body["taints"]
    assert got["annotations"] == {"qvdc.io/agent-endpoint": "http://10.2.0.7:8443"}
    assert got["spec"]["cpu"]["numaNodes"] == [{"nodeId": 1, "cpus": [0, 1]}]
    assert got["spec"]["memory"]["hugePages"] == {"pages2mbTotal": "512"}
    assert got["spec"]["network"][0]["sriovVfsTotal"] == 8
