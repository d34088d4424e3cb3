"""Wire <-> node conversions (node/convert.py)."""

from __future__ import annotations

import pytest

from node import convert, hostfacts
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from storage_backends import base

T = storage.StorageBackendBackendType


def pool(pool_id: str, backend: storage.StorageBackend | None) -> storage.StoragePool:
    return storage.StoragePool(
        id=pool_id, name=f"name-{pool_id}", spec=storage.StoragePoolSpec(backend=backend)
    )


@pytest.mark.parametrize(
    ("backend", "kind", "config"),
    [
        (
            storage.StorageBackend(
                type=T.LOCAL_DIR, local_dir=storage.LocalDirConfig(path="/srv/p", capacity_gib=5)
            ),
            "local_dir",
            {
                "path": "/srv/p",
                "node_id": "",
                "capacity_gib": 5,
                "require_mountpoint": False,
                "mount_point": "",
                "create_path": None,
            },
        ),
        (
            storage.StorageBackend(
                type=T.NFS, nfs=storage.NfsConfig(server="nas", export_path="/e", version="4.1")
            ),
            "nfs",
            {
                "server": "nas",
                "export_path": "/e",
                "version": "4.1",
                "options": "",
                "mount_point": "",
                "create_path": None,
            },
        ),
        (
            storage.StorageBackend(
                type=T.CEPH_RBD,
                # key_set is the operators' marker: dropped; the key itself is the node's.
                ceph=storage.CephConfig(
                    pool_name="rbd", monitors=["m1", "m2"], key="AQBk3w==", key_set=True
                ),
            ),
            "ceph_rbd",
            {
                "cluster_id": "",
                "pool_name": "rbd",
                "monitors": ["m1", "m2"],
                "user": "",
                "keyring_path": "",
                "namespace": "",
                "secret_uuid": "",
                "key": "AQBk3w==",
            },
        ),
        (
            storage.StorageBackend(
                type=T.ISCSI, iscsi=storage.IscsiConfig(portal="t:3260", target="iqn.x", lun=3)
            ),
            "iscsi",
            {
                "portal": "t:3260",
                "target": "iqn.x",
                "chap_enabled": False,
                "chap_user": "",
                "chap_password": "",
                "lun": 3,
                "volume_group": "",
            },
        ),
        (storage.StorageBackend(type=T.LOCAL_DIR), "local_dir", {}),
        (storage.StorageBackend(type=T.LOCAL_LVM), "local_lvm", {}),
    ],
)
def test_pool_definition_to_spec(backend, kind, config):
    spec = convert.storage_pool_to_spec(pool("p1", backend))
    assert spec == base.PoolSpec(pool_id="p1", kind=kind, config=config, name="name-p1")


@pytest.mark.parametrize(
    ("definition", "reason"),
    [
        (pool("p1", None), "pool p1 has no backend"),
        (
            pool("p1", storage.StorageBackend(type=T.NFS, local_dir=storage.LocalDirConfig())),
            "pool p1 has backend type NFS but a local_dir config",
        ),
        (storage.StoragePool(id=""), "pool definition without an id"),
    ],
)
def test_unusable_definitions_are_refused_not_guessed(definition, reason):
    with pytest.raises(convert.InvalidPoolDefinition, match=reason):
        convert.storage_pool_to_spec(definition)


def test_reply_collects_specs_and_refusals():
    response = compute.UpdateHeartbeatResponse(
        acknowledged=True,
        sequence=4,
        heartbeat_interval_secs=15,
        request_full_sync=True,
        assigned_pool_ids=["good", "bad", "bare"],
        assigned_pools=[
            pool("good", storage.StorageBackend(type=T.LOCAL_DIR)),
            pool("bad", None),
        ],
    )
    reply = convert.reply_from_response(response)
    assert (reply.sequence, reply.acknowledged, reply.unsolicited) == (4, True, False)
    assert reply.request_full_sync and reply.interval == 15.0
    assert set(reply.assigned) == {"good"}
    assert reply.invalid == {"bad": "pool bad has no backend in its definition"}
    assert reply.assigned_ids == ("good", "bad", "bare")
    assert convert.reply_from_response(compute.UpdateHeartbeatResponse()).interval is None


def test_report_and_heartbeat_request():
    info = base.PoolInfo(
        pool_id="p",
        kind="nfs",
        health=base.PoolHealth.UNMOUNTED,
        total_bytes=10,
        used_bytes=-1,
        available_bytes=10,
        mount_path="/mnt/p",
        volume_count=2,
        error_message="not mounted",
    )
    report = convert.pool_info_to_report(info)
    assert report.health == compute.StoragePoolStatusReportHealthStatus.HEALTH_UNMOUNTED
    assert (report.total_bytes, report.used_bytes, report.mount_path) == (10, 0, "/mnt/p")
    assert (report.volume_count, report.error_message) == (2, "not mounted")

    facts = hostfacts.HostFacts(
        hostname="h",
        memory_total_bytes=8 * 1024**3,
        memory_free_bytes=2 * 1024**3,
        running_vms=3,
        cpu_usage_percent=12.5,
    )
    request = convert.heartbeat_to_request(
        convert.Heartbeat(
            node_id="n1",
            sequence=7,
            delta=True,
            pools=(info,),
            removed_pool_ids=("gone",),
            facts=facts,
            load=(1.0, float("nan"), 0.5),
        )
    )
    assert (request.node_id, request.sequence, request.delta) == ("n1", 7, True)
    assert list(request.removed_pool_ids) == ["gone"]
    assert [p.pool_id for p in request.storage_pools] == ["p"]
    assert (request.memory_total_mib, request.memory_used_mib) == (8192, 6144)
    assert (request.running_vm_count, request.cpu_usage_percent) == (3, 12.5)
    assert (request.load_1m, request.load_5m, request.load_15m) == (1.0, 0.0, 0.5)
    # Round trip through the wire format.
    assert compute.UpdateHeartbeatRequest.FromString(bytes(request)) == request


def test_register_request_uses_the_configured_identity():
    facts = hostfacts.HostFacts(
        hostname="libvirt-name",
        cpu_model="EPYC",
        cpu_sockets=2,
        cpu_cores_per_socket=16,
        cpu_threads_per_core=2,
        cpu_total_threads=64,
        cpu_mhz=2400,
        memory_total_bytes=2**36,
        memory_free_bytes=2**35,
    )
    request = convert.register_request(
        hostname="host-a", management_ip="10.0.0.5", labels={"zone": "z1"}, facts=facts
    )
    assert (request.hostname, request.management_ip) == ("host-a", "10.0.0.5")
    assert dict(request.labels) == {"zone": "z1"}
    role, cpu, memory = request.role, request.cpu_info, request.memory_info
    assert role is not None and cpu is not None and memory is not None
    assert role.compute and not role.storage
    assert (cpu.model, cpu.sockets, cpu.total_threads, cpu.frequency_mhz) == ("EPYC", 2, 64, 2400)
    assert (memory.total_bytes, memory.allocatable_bytes) == (2**36, 2**35)
