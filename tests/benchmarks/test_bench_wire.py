"""The generator's hand-built protobuf is byte-for-byte what betterproto2 produces, and its
fleet model's drift is never material while its changes always are."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.heartbeat import fleet, wire
from protos.limiquantix.compute import v1 as compute
from qvdc.kits import materiality

U64 = st.integers(min_value=0, max_value=2**64 - 1)
U32 = st.integers(min_value=0, max_value=2**32 - 1)
TEXT = st.text(max_size=40)


def _betterproto_request(
    node_id: str,
    reports: list[tuple[str, str, wire.ReportValues]],
    *,
    delta: bool,
    sequence: int,
) -> bytes:
    return bytes(
        compute.UpdateHeartbeatRequest(
            node_id=node_id,
            cpu_usage_percent=12.5,
            memory_used_mib=96 * 1024,
            memory_total_mib=256 * 1024,
            running_vm_count=24,
            disk_used_bytes=400 * 1024**3,
            disk_total_bytes=960 * 1024**3,
            load_1m=3.5,
            load_5m=3.25,
            load_15m=3.0,
            storage_pools=[
                compute.StoragePoolStatusReport(
                    pool_id=pool_id,
                    health=compute.StoragePoolStatusReportHealthStatus(v.health),
                    total_bytes=v.total_bytes,
                    used_bytes=v.used_bytes,
                    available_bytes=v.available_bytes,
                    mount_path=mount,
                    volume_count=v.volume_count,
                    error_message=v.error_message,
                )
                for pool_id, mount, v in reports
            ],
            delta=delta,
            sequence=sequence,
        )
    )


report_values = st.builds(
    wire.ReportValues,
    health=st.integers(min_value=0, max_value=4),
    total_bytes=U64,
    used_bytes=U64,
    available_bytes=U64,
    volume_count=U32,
    error_message=TEXT,
)


@given(
    node_id=TEXT,
    reports=st.lists(st.tuples(TEXT, TEXT, report_values), max_size=8),
    delta=st.booleans(),
    sequence=U64,
)
def test_heartbeat_bytes_equal_betterproto2(
    node_id: str,
    reports: list[tuple[str, str, wire.ReportValues]],
    delta: bool,
    sequence: int,
) -> None:
    encoded = [
        wire.ReportEncoder(pool_id=pool_id, mount_path=mount).encode(values)
        for pool_id, mount, values in reports
    ]
    ours = wire.heartbeat(
        wire.heartbeat_prefix(node_id=node_id), encoded, delta=delta, sequence=sequence
    )
    assert ours == _betterproto_request(node_id, reports, delta=delta, sequence=sequence)


@given(
    ids=st.lists(TEXT, max_size=8),
    sequence=U64,
    full_sync=st.booleans(),
    unsolicited=st.booleans(),
    server_time=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_scan_response_reads_what_betterproto2_wrote(
    ids: list[str], sequence: int, full_sync: bool, unsolicited: bool, server_time: int
) -> None:
    message = compute.UpdateHeartbeatResponse(
        acknowledged=True,
        server_time_unix=server_time,
        heartbeat_interval_secs=30,
        assigned_pool_ids=ids,
        request_full_sync=full_sync,
        sequence=sequence,
        unsolicited=unsolicited,
    )
    view = wire.scan_response(bytes(message))
    assert view == wire.ResponseView(True, sequence, full_sync, unsolicited, 0)


def test_raw_codec_passes_bytes_through() -> None:
    codec = wire.RawCodec()
    assert codec.encode(b"\x08\x01", None) == b"\x08\x01"
    assert codec.decode(b"\x08\x01", None) == b"\x08\x01"


def test_fleet_shape_arithmetic() -> None:
    shape = fleet.FleetShape(hosts=100_000, pools_per_host=8, hosts_per_pool=16)
    assert shape.clusters == 6_250
    assert shape.pools == 50_000
    assert shape.reports == 800_000
    odd = fleet.FleetShape(hosts=20, pools_per_host=8, hosts_per_pool=16)
    assert odd.clusters == 2
    assert list(odd.hosts_of(1)) == [16, 17, 18, 19]
    assert odd.cluster_of(17) == 1


def test_drift_is_never_material_and_changes_always_are() -> None:
    rng = random.Random(7)
    pools = [fleet.PoolState(pool_id=f"p{i}", rng=rng) for i in range(50)]
    for pool in pools:
        _, material = pool.next_report(change=False)
        assert material  # the first report of a pool has nothing to compare with
    for _ in range(200):
        for pool in pools:
            before = pool.last
            values, material = pool.next_report(change=False)
            assert not material
            assert not materiality.is_material_change(before, values)
            assert pool.last is before  # the baseline moves only on a material change
    for _ in range(50):
        for pool in pools:
            values, material = pool.next_report(change=True)
            assert material
            assert pool.last == values
