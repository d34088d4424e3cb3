"""Upstream's agent against a real controller over Connect (HTTP/1.1, JSON), as it posts.

The bodies are the agent's own (registration with its device lists, heartbeats with
``storagePools`` and ``stateHash``, GetPool), unknown fields included; the checks read
what the agent reads (``id``, ``assignedPoolIds``, ``requestFullSync``, GetPool's
``name`` and ``spec.backend``).
"""

from __future__ import annotations

import json

import grpclib.client
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from tests.qvdc.api.helpers import create_request, eventually, nfs_backend
from tests.qvdc.http.conftest import Http

NODES = "limiquantix.compute.v1.NodeService"
POOLS = "limiquantix.storage.v1.StoragePoolService"


def agent_registration(hostname: str = "qhci-01") -> dict[str, object]:
    """``register()``'s body: the agent's fields, and ones no proto of ours has."""
    return {
        "hostname": hostname,
        "managementIp": "192.168.10.21:9090",
        "labels": {"zone": "a"},
        "role": {"compute": True, "storage": False, "controlPlane": False},
        "cpuInfo": {
            "model": "AMD EPYC 7302P 16-Core Processor",
            "sockets": 1,
            "coresPerSocket": 16,
            "threadsPerCore": 2,
            "totalThreads": 32,
            "frequencyMhz": 3000,
            "features": [],
        },
        "memoryInfo": {"totalBytes": 135_088_553_984, "allocatableBytes": 120_000_000_000},
        "storageDevices": [
            {
                "path": "/dev/nvme0n1",
                "model": "ext4",
                "sizeBytes": 1_000_204_886_016,
                "type": 2,
                "available": True,
            },
            {
                "path": "/dev/sda",
                "model": "xfs",
                "sizeBytes": "4000787030016",
                "type": 1,
                "available": True,
            },
        ],
        "networkDevices": [
            {"name": "enp1s0", "macAddress": "52:54:00:12:34:56", "speedMbps": 1000, "mtu": 1500},
            {"name": "bond0", "macAddress": "52:54:00:12:34:57", "speedMbps": 1000, "mtu": 1500},
        ],
        # Not in QvDC's protos: a strict parser would refuse the request.
        "agentVersion": "0.9.3",
        "capabilities": {"vmSupport": True},
    }


def agent_heartbeat(node_id: str, pool_id: str) -> dict[str, object]:
    """``heartbeat_with_hash()``'s body: exactly its fields, health as an integer."""
    total, available = 2_000_000_000_000, 1_500_000_000_000
    return {
        "nodeId": node_id,
        "cpuUsagePercent": 7.25,
        "memoryUsedMib": 20480,
        "memoryTotalMib": 128831,
        "storagePools": [
            {
                "poolId": pool_id,
                "health": 1,
                "totalBytes": total,
                "usedBytes": total - available,
                "availableBytes": available,
                "mountPath": f"/var/lib/limiquantix/mnt/nfs-{pool_id}",
                "volumeCount": 0,
                "errorMessage": "",
            }
        ],
        "stateHash": "e3b0c44298fc1c14",
    }


async def test_agent_registers_heartbeats_and_reads_its_pool(
    client: Http,
    pools: storage.StoragePoolServiceStub,
    nodes: compute.NodeServiceStub,
) -> None:
    answer = await client.call(f"{NODES}/RegisterNode", agent_registration())
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/json"
    node = answer.json()
    node_id = node["id"]
    assert node_id and node["hostname"] == "qhci-01"
    assert node["managementIp"] == "192.168.10.21"  # port stripped, as upstream
    stored = await nodes.get_node(compute.GetNodeRequest(id=node_id))
    assert [d.path for d in stored.spec.storage] == ["/dev/nvme0n1", "/dev/sda"]
    assert stored.spec.storage[1].size_bytes == 4_000_787_030_016
    assert stored.spec.cpu.cores_per_socket == 16

    again = await client.call(f"{NODES}/RegisterNode", agent_registration())
    assert again.json()["id"] == node_id  # idempotent by hostname

    pool = await pools.create_pool(create_request("shared", backend=nfs_backend(), nodes=[node_id]))
    beat = await client.call(f"{NODES}/UpdateHeartbeat", agent_heartbeat(node_id, pool.id))
    assert beat.status == 200, beat.body
    body = beat.json()
    assert body["acknowledged"] is True
    assert body["assignedPoolIds"] == [pool.id]
    assert body.get("requestFullSync", False) is False
    assert int(body["heartbeatIntervalSecs"]) >= 1

    got = await client.call(f"{POOLS}/GetPool", {"id": pool.id})
    assert got.status == 200, got.body
    definition = got.json()
    assert definition["name"] == "shared"
    backend = definition["spec"]["backend"]
    assert backend["type"] == "NFS"
    assert backend["nfs"] == {
        "server": "nfs1.example.com",
        "exportPath": "/export/a",
        "version": "4.1",
    }

    # The report landed through the same intake as gRPC heartbeats: the pool is READY.
    seen = await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=pool.id)),
        lambda p: p.status is not None and p.status.phase == storage.StoragePoolStatusPhase.READY,
        what="the pool READY from the agent's report",
    )
    assert seen.status is not None
    assert seen.status.capacity is not None
    assert seen.status.capacity.total_bytes == 2_000_000_000_000


async def test_proto_round_trip(client: Http) -> None:
    request = compute.RegisterNodeRequest(hostname="proto-01", management_ip="10.0.0.9:9090")
    answer = await client.request(
        "POST",
        f"/{NODES}/RegisterNode",
        bytes(request),
        headers={"Content-Type": "application/proto"},
    )
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == "application/proto"
    node = compute.Node().parse(answer.body)
    assert node.id and node.hostname == "proto-01" and node.management_ip == "10.0.0.9"

    garbage = await client.request(
        "POST",
        f"/{NODES}/GetNode",
        b"\x0a\xff\xff\xff\xff\x0f",  # a string field declaring 4 GiB
        headers={"Content-Type": "application/proto"},
    )
    assert garbage.status == 400
    assert garbage.json()["code"] == "invalid_argument"
    assert garbage.json()["message"].startswith("malformed GetNodeRequest: ")


async def grpc_error(call: object) -> GRPCError:
    try:
        await call  # type: ignore[misc]
    except GRPCError as exc:
        return exc
    raise AssertionError("the gRPC call succeeded")


async def test_errors_match_the_grpc_face(
    client: Http, nodes: compute.NodeServiceStub, pools: storage.StoragePoolServiceStub
) -> None:
    cases = [
        (
            "UpdateHeartbeat",
            agent_heartbeat("no-such-node", "p"),
            nodes.update_heartbeat(compute.UpdateHeartbeatRequest(node_id="no-such-node")),
            Status.NOT_FOUND,
        ),
        (
            "RegisterNode",
            {"managementIp": "10.0.0.1:9090"},
            nodes.register_node(compute.RegisterNodeRequest(management_ip="10.0.0.1:9090")),
            Status.INVALID_ARGUMENT,
        ),
        (
            "UpdateHeartbeat",
            {"nodeId": "n", "storagePools": [{"poolId": "p", "errorMessage": "x" * 5000}]},
            nodes.update_heartbeat(
                compute.UpdateHeartbeatRequest(
                    node_id="n",
                    storage_pools=[
                        compute.StoragePoolStatusReport(pool_id="p", error_message="x" * 5000)
                    ],
                )
            ),
            Status.INVALID_ARGUMENT,
        ),
        (
            "UpdateHeartbeat",
            {"nodeId": "n", "storagePools": [{"poolId": "p", "health": 99}]},
            nodes.update_heartbeat(
                compute.UpdateHeartbeatRequest(
                    node_id="n",
                    storage_pools=[
                        compute.StoragePoolStatusReport(
                            pool_id="p", health=compute.StoragePoolStatusReportHealthStatus(99)
                        )
                    ],
                )
            ),
            Status.INVALID_ARGUMENT,
        ),
    ]
    for method, body, grpc_call, status in cases:
        grpc = await grpc_error(grpc_call)
        assert grpc.status is status
        answer = await client.call(f"{NODES}/{method}", body)
        expected_http = {Status.NOT_FOUND: 404, Status.INVALID_ARGUMENT: 400}[status]
        assert answer.status == expected_http, answer.body
        assert answer.json() == {"code": status.name.lower(), "message": grpc.message}

    missing = await grpc_error(pools.get_pool(storage.GetPoolRequest(id="nope")))
    answer = await client.call(f"{POOLS}/GetPool", {"id": "nope"})
    assert answer.json() == {"code": "not_found", "message": missing.message}


async def test_malformed_json_is_invalid_argument_naming_the_field(client: Http) -> None:
    cases = {
        b"{not json": "not valid JSON",
        b'{"nodeId": 5}': "node_id: a string is expected",
        b'{"nodeId": "n", "memoryUsedMib": -1}': "memory_used_mib: uint64 out of range",
        b'{"nodeId": "n", "storagePools": [{"health": "SHINY"}]}': (
            "storage_pools[0].health: unknown value 'SHINY'"
        ),
        b"[1, 2]": "a JSON object is expected",
        b"[" * 100_000: "nested too deeply",
    }
    for body, reason in cases.items():
        answer = await client.call(f"{NODES}/UpdateHeartbeat", body)
        assert answer.status == 400, (body[:40], answer.body)
        error = answer.json()
        assert error["code"] == "invalid_argument"
        assert error["message"].startswith("malformed UpdateHeartbeatRequest: "), error
        assert reason in error["message"], error


async def test_unknown_fields_are_ignored_at_every_depth(
    client: Http, nodes: compute.NodeServiceStub
) -> None:
    body = agent_registration("unknowns-01")
    body["cpuInfo"] = {**body["cpuInfo"], "microcode": "0xa0011d1", "cache": {"l3": 128}}  # type: ignore[dict-item]
    body["futureList"] = [1, {"x": None}]
    answer = await client.call(f"{NODES}/RegisterNode", body)
    assert answer.status == 200, answer.body
    stored = await nodes.get_node(compute.GetNodeRequest(id=answer.json()["id"]))
    assert stored.spec.cpu.model == "AMD EPYC 7302P 16-Core Processor"


async def test_oversized_body_is_refused_before_it_is_read(
    controller: Controller, client: Http, nodes: compute.NodeServiceStub
) -> None:
    limit = controller.settings.grpc.max_message_bytes
    huge = json.dumps(agent_registration("huge-01") | {"pad": "x" * limit}).encode()
    answer = await client.call(f"{NODES}/RegisterNode", huge)
    assert answer.status == 429
    assert answer.json() == {
        "code": "resource_exhausted",
        "message": f"message of {len(huge)} bytes is over the limit of {limit} bytes",
    }
    chunked = await client.request(
        "POST",
        f"/{NODES}/RegisterNode",
        huge,
        headers={"Content-Type": "application/json"},
        chunked=True,
    )
    assert chunked.status == 429
    assert chunked.json()["code"] == "resource_exhausted"
    listed = await nodes.list_nodes(compute.ListNodesRequest())
    assert [n.hostname for n in listed.nodes] == []  # nothing was registered


async def test_unimplemented_paths_answer_as_grpc_does(
    client: Http, channel: grpclib.client.Channel
) -> None:
    answer = await client.call(f"{NODES}/NoSuchMethod", {"nodeId": "n"})
    assert answer.status == 501
    assert answer.json() == {"code": "unimplemented", "message": "Method not found"}

    vms = await client.call(f"{NODES}/SyncNodeVMs", {"nodeId": "n"})
    assert vms.status == 501
    assert vms.json()["code"] == "unimplemented"
    assert "out of scope" in vms.json()["message"]

    stream = await client.call(f"{NODES}/StreamHeartbeat", {"nodeId": "n"})
    assert stream.status == 501
    assert stream.json()["code"] == "unimplemented"
    assert "gRPC only" in stream.json()["message"]

    outside = await client.request("POST", "/no.such.Service/Method", b"{}")
    assert outside.status == 404


def agent_full_sync(node_id: str, pool_id: str) -> dict[str, object]:
    """``sync_full_state()``'s body: ``hostInfo`` with the hostname only (the rest 0 or
    ""), the VM reports (power state as an integer) and the heartbeat's pool reports."""
    pools = list(agent_heartbeat(node_id, pool_id)["storagePools"])  # type: ignore[call-overload]
    return {
        "nodeId": node_id,
        "hostInfo": {
            "hostname": "qhci-01",
            "managementIp": "",
            "memoryTotalBytes": 0,
            "memoryAvailableBytes": 0,
            "cpuCores": 0,
            "cpuUsagePercent": 0.0,
        },
        "vms": [
            {
                "id": "6f1c2b9e-0a4e-4c3b-9a51-2f7d6f0e8b11",
                "name": "web-1",
                "state": 1,
                "stateChangeCount": 3,
                "cpuUsagePercent": 2.5,
                "memoryUsedBytes": 1_073_741_824,
                "ipAddresses": ["10.0.0.7"],
                "stateChangedAtUnix": 1_767_225_600,
            }
        ],
        "storagePools": [*pools, {"poolId": "local-auto", "health": 1}],
        "stateHash": "e3b0c44298fc1c14",
    }


async def test_agent_full_sync_and_storage_change_are_applied(
    client: Http, pools: storage.StoragePoolServiceStub, nodes: compute.NodeServiceStub
) -> None:
    node_id = (await client.call(f"{NODES}/RegisterNode", agent_registration())).json()["id"]
    shared = await pools.create_pool(
        create_request("sync-shared", backend=nfs_backend(), nodes=[node_id])
    )
    missing = await pools.create_pool(create_request("sync-missing", nodes=[node_id]))
    answer = await client.call(f"{NODES}/SyncFullState", agent_full_sync(node_id, shared.id))
    assert answer.status == 200, answer.body
    body = answer.json()
    assert body["acknowledged"] is True
    assert body["poolsReconciled"] == 1
    assert "vmsReconciled" not in body  # 0: VMs are out of this slice
    conflicts = {(c["resourceId"], c["conflictType"]) for c in body["conflicts"]}
    assert conflicts == {(missing.id, "missing_on_node"), ("local-auto", "missing_in_db")}
    assert {c["resourceType"] for c in body["conflicts"]} == {"storage_pool"}
    seen = await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=shared.id)),
        lambda p: p.status is not None and p.status.phase == storage.StoragePoolStatusPhase.READY,
        what="the pool READY from the agent's full sync",
    )
    assert seen.status is not None and seen.status.capacity is not None
    assert seen.status.capacity.total_bytes == 2_000_000_000_000

    # NotifyStorageChange, in the agent's JSON: the pool unmounted on this host.
    change = {
        "nodeId": node_id,
        "pool": {"poolId": shared.id, "health": 1, "mountPath": "/var/lib/limiquantix/mnt/x"},
        "eventType": 2,
        "timestampUnix": 1_767_225_600,
    }
    ack = await client.call(f"{NODES}/NotifyStorageChange", change)
    assert ack.status == 200, ack.body
    assert ack.json() == {"acknowledged": True, "action": "applied"}
    await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=shared.id)),
        lambda p: (
            p.status is not None
            and [h.health for h in p.status.host_statuses]
            == [storage.PoolHostStatusHealth.UNMOUNTED]
        ),
        what="the host row UNMOUNTED",
    )
    unknown = await client.call(f"{NODES}/SyncFullState", {"nodeId": "no-such-node"})
    assert unknown.status == 404 and unknown.json()["code"] == "not_found"
