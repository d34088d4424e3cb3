"""The controller's heartbeat codec (``qvdc.api.convert``, a hot-path optimisation made
for the benchmark) is betterproto2, only faster: same messages out, same bytes in."""

from __future__ import annotations

import gc

from hypothesis import given
from hypothesis import strategies as st

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.api import convert

U64 = st.integers(min_value=0, max_value=2**64 - 1)
U32 = st.integers(min_value=0, max_value=2**32 - 1)
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=30)
DOUBLE = st.floats(allow_nan=False)

reports = st.builds(
    compute.StoragePoolStatusReport,
    pool_id=TEXT,
    health=st.integers(min_value=-3, max_value=9).map(compute.StoragePoolStatusReportHealthStatus),
    total_bytes=U64,
    used_bytes=U64,
    available_bytes=U64,
    mount_path=TEXT,
    volume_count=U32,
    error_message=TEXT,
    last_mount_unix=I64,
)

requests = st.builds(
    compute.UpdateHeartbeatRequest,
    node_id=TEXT,
    cpu_usage_percent=DOUBLE,
    memory_used_mib=U64,
    memory_total_mib=U64,
    running_vm_count=U32,
    disk_used_bytes=U64,
    disk_total_bytes=U64,
    load_1m=DOUBLE,
    load_5m=DOUBLE,
    load_15m=DOUBLE,
    storage_pools=st.lists(reports, max_size=8),
    state_hash=TEXT,
    delta=st.booleans(),
    sequence=U64,
    removed_pool_ids=st.lists(TEXT, max_size=3),
)


@given(requests)
def test_decode_equals_betterproto2(request: compute.UpdateHeartbeatRequest) -> None:
    data = bytes(request)
    ours = convert.decode_heartbeat_request(data)
    theirs = compute.UpdateHeartbeatRequest.parse(data)
    assert type(ours) is compute.UpdateHeartbeatRequest
    assert ours.to_dict(include_default_values=True) == theirs.to_dict(include_default_values=True)
    assert [type(r.health) for r in ours.storage_pools] == [
        type(r.health) for r in theirs.storage_pools
    ]
    assert bytes(ours) == bytes(theirs)


@given(requests, st.binary(max_size=12))
def test_unusual_input_falls_back_to_betterproto2(
    request: compute.UpdateHeartbeatRequest, tail: bytes
) -> None:
    # An unknown field (number 99, varint) and arbitrary trailing bytes: whatever
    # betterproto2 makes of them (a message with unknown fields, or an error), so do we.
    data = bytes(request) + b"\x98\x06\x01" + tail
    try:
        theirs = compute.UpdateHeartbeatRequest.parse(data)
    except Exception as exc:  # noqa: BLE001 - the same exception type is the contract
        try:
            convert.decode_heartbeat_request(data)
        except Exception as failure:  # noqa: BLE001
            assert type(failure) is type(exc)
        else:
            raise AssertionError("betterproto2 failed, the fast decoder did not") from exc
        return
    ours = convert.decode_heartbeat_request(data)
    assert ours == theirs
    assert ours._unknown_fields == theirs._unknown_fields


responses = st.builds(
    compute.UpdateHeartbeatResponse,
    acknowledged=st.booleans(),
    server_time_unix=I64,
    heartbeat_interval_secs=U32,
    assigned_pool_ids=st.lists(TEXT, max_size=8),
    request_full_sync=st.booleans(),
    assigned_pools=st.lists(
        st.builds(storage.StoragePool, id=TEXT, name=TEXT, description=TEXT), max_size=3
    ),
    sequence=U64,
    unsolicited=st.booleans(),
)


@given(responses)
def test_encode_equals_betterproto2(response: compute.UpdateHeartbeatResponse) -> None:
    assert convert.encode_heartbeat_response(response) == bytes(response)
    assert convert.encode_heartbeat_response(response) == bytes(response)  # memoised path


def test_pool_encoding_memo_follows_object_lifetime() -> None:
    pool = storage.StoragePool(id="p1", name="one")
    response = compute.UpdateHeartbeatResponse(assigned_pools=[pool])
    first = convert.encode_heartbeat_response(response)
    assert id(pool) in convert._POOL_BYTES
    key = id(pool)
    del pool, response
    gc.collect()
    assert key not in convert._POOL_BYTES
    other = storage.StoragePool(id="p2", name="two")
    assert convert.encode_heartbeat_response(
        compute.UpdateHeartbeatResponse(assigned_pools=[other])
    ) == bytes(compute.UpdateHeartbeatResponse(assigned_pools=[other]))
    assert first != bytes(compute.UpdateHeartbeatResponse(assigned_pools=[other]))


def test_codec_delegates_other_messages_to_betterproto2() -> None:
    codec = convert.server_codec()
    node = compute.GetNodeRequest(id="n1")
    assert codec.encode(node, compute.GetNodeRequest) == bytes(node)
    assert codec.decode(bytes(node), compute.GetNodeRequest) == node
