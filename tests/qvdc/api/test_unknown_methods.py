"""A path no service serves is UNIMPLEMENTED "Method not found", as a gRPC client reads it.

grpclib's own answer lacks ``content-type``, so clients saw UNKNOWN "Missing content-type
header" for upstream's volume RPCs (qvdc.transport.serving, "Unknown methods").
"""

from __future__ import annotations

import grpclib.client
import grpclib.const
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.google import protobuf as pb
from protos.limiquantix.compute import v1 as compute

UNARY = grpclib.const.Cardinality.UNARY_UNARY
STREAM = grpclib.const.Cardinality.STREAM_STREAM


@pytest.mark.parametrize(
    ("path", "cardinality"),
    [
        ("/limiquantix.storage.v1.StoragePoolService/CreateVolume", UNARY),
        ("/limiquantix.compute.v1.NodeService/NoSuchMethod", STREAM),
        ("/no.such.Service/Method", UNARY),
    ],
)
async def test_an_unknown_method_is_unimplemented(
    channel: grpclib.client.Channel, path: str, cardinality: grpclib.const.Cardinality
) -> None:
    with pytest.raises(GRPCError) as caught:
        async with channel.request(path, cardinality, pb.Empty, pb.Empty, timeout=5) as call:
            await call.send_message(pb.Empty(), end=True)
            await call.recv_message()
    assert caught.value.status == Status.UNIMPLEMENTED
    assert caught.value.message == "Method not found"
    # The connection serves on.
    listed = await compute.NodeServiceStub(channel).list_nodes(
        compute.ListNodesRequest(), timeout=5
    )
    assert listed.total_count == 0
