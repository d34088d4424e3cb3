"""The controller's heartbeat codec is betterproto2, only faster: same messages out,
same bytes in, for every field the messages have.

The contract with betterproto2 and the proto: the fields of the three heartbeat
messages are read from betterproto2's field metadata, never listed here, so a
field added to the proto fails :func:`test_the_codec_handles_every_field_of_the_messages`
and the property tests generate it (httpx's ``test_httpcore_all_exceptions_mapped``
is the model).
"""

from __future__ import annotations

import dataclasses
import gc
import typing
from typing import Any

import betterproto2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.transport import heartbeat_codec, wire

U64 = st.integers(min_value=0, max_value=2**64 - 1)
U32 = st.integers(min_value=0, max_value=2**32 - 1)
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=30)
DOUBLE = st.floats(allow_nan=False)

_SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "string": TEXT,
    "double": DOUBLE,
    "uint64": U64,
    "uint32": U32,
    "int64": I64,
    "bool": st.booleans(),
}

#: A pool definition inside a response is encoded by betterproto2 itself (memoised).
_POOLS = st.builds(storage.StoragePool, id=TEXT, name=TEXT, description=TEXT)


def _fields(message: type[betterproto2.Message]) -> dict[str, betterproto2.FieldMetadata]:
    """Field name -> betterproto2's metadata (number, proto type, repeated)."""
    return {f.name: betterproto2.FieldMetadata.get(f) for f in dataclasses.fields(message)}  # type: ignore[arg-type]


def _numbers(message: type[betterproto2.Message]) -> frozenset[int]:
    return frozenset(meta.number for meta in _fields(message).values())


def _strategy(message: type[betterproto2.Message]) -> st.SearchStrategy[Any]:
    """Messages of ``message`` with every field drawn, built from the metadata alone."""
    hints = typing.get_type_hints(message)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, meta in _fields(message).items():
        hint = hints[name]
        element = typing.get_args(hint)[0] if meta.repeated else hint
        if meta.proto_type == "enum":
            # Known values and a few the enum does not name (betterproto2 keeps those too).
            value: st.SearchStrategy[Any] = st.integers(min_value=-3, max_value=9).map(element)
        elif meta.proto_type == "message":
            value = _POOLS if element is storage.StoragePool else _strategy(element)
        else:
            value = _SCALARS[meta.proto_type]  # a new scalar type fails here: handle it
        fields[name] = st.lists(value, max_size=8) if meta.repeated else value
    return st.builds(message, **fields)


requests = _strategy(compute.UpdateHeartbeatRequest)
responses = _strategy(compute.UpdateHeartbeatResponse)


# --- exhaustiveness -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "handled"),
    [
        (compute.UpdateHeartbeatRequest, heartbeat_codec.REQUEST_FIELDS),
        (compute.StoragePoolStatusReport, heartbeat_codec.REPORT_FIELDS),
        (compute.UpdateHeartbeatResponse, heartbeat_codec.RESPONSE_FIELDS),
    ],
)
def test_the_codec_handles_every_field_of_the_messages(
    message: type[betterproto2.Message], handled: frozenset[int]
) -> None:
    assert handled == _numbers(message), (
        f"{message.__name__}: fields the codec does not handle: "
        f"{sorted(_numbers(message) - handled)}; handled but gone: "
        f"{sorted(handled - _numbers(message))}"
    )


def _one_field_set(message: type[betterproto2.Message], name: str) -> Any:
    """A message of ``message`` with only field ``name`` set, to a value that is not its
    default (so that it is on the wire)."""
    meta = _fields(message)[name]
    element = typing.get_args(typing.get_type_hints(message)[name])
    samples: dict[str, Any] = {
        "string": "text",
        "double": 1.5,
        "uint64": 2**63 + 1,
        "uint32": 2**31 + 1,
        "int64": -5,
        "bool": True,
    }
    if meta.proto_type == "enum":
        value: Any = typing.get_type_hints(message)[name](1)
    elif meta.proto_type == "message":
        value = element[0](id="p1") if element[0] is storage.StoragePool else element[0]()
    else:
        value = samples[meta.proto_type]
    return message(**{name: [value] if meta.repeated else value})


@pytest.mark.parametrize("name", list(_fields(compute.UpdateHeartbeatRequest)))
def test_every_request_field_is_read_by_the_fast_decoder(name: str) -> None:
    """Without the betterproto2 fallback: a field the fast path skips would fall back."""
    request = _one_field_set(compute.UpdateHeartbeatRequest, name)
    assert heartbeat_codec._decode_request(bytes(request)) == request


@pytest.mark.parametrize("name", list(_fields(compute.StoragePoolStatusReport)))
def test_every_report_field_is_read_by_the_fast_decoder(name: str) -> None:
    report = _one_field_set(compute.StoragePoolStatusReport, name)
    request = compute.UpdateHeartbeatRequest(storage_pools=[report])
    assert heartbeat_codec._decode_request(bytes(request)) == request


@pytest.mark.parametrize("name", list(_fields(compute.UpdateHeartbeatResponse)))
def test_every_response_field_is_written_by_the_encoder(name: str) -> None:
    response = _one_field_set(compute.UpdateHeartbeatResponse, name)
    assert heartbeat_codec.encode_heartbeat_response(response) == bytes(response) != b""


# --- equality with betterproto2 -------------------------------------------------------------


@given(requests)
def test_decode_equals_betterproto2(request: compute.UpdateHeartbeatRequest) -> None:
    data = bytes(request)
    ours = heartbeat_codec.decode_heartbeat_request(data)
    theirs = compute.UpdateHeartbeatRequest.parse(data)
    assert type(ours) is compute.UpdateHeartbeatRequest
    assert ours.to_dict(include_default_values=True) == theirs.to_dict(include_default_values=True)
    assert [type(r.health) for r in ours.storage_pools] == [
        type(r.health) for r in theirs.storage_pools
    ]
    assert bytes(ours) == bytes(theirs)


@given(requests)
def test_the_fast_decoder_reads_every_request_betterproto2_writes(
    request: compute.UpdateHeartbeatRequest,
) -> None:
    assert heartbeat_codec._decode_request(bytes(request)) == request


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
            heartbeat_codec.decode_heartbeat_request(data)
        except Exception as failure:  # noqa: BLE001
            assert type(failure) is type(exc)
        else:
            raise AssertionError("betterproto2 failed, the fast decoder did not") from exc
        return
    ours = heartbeat_codec.decode_heartbeat_request(data)
    assert ours == theirs
    assert ours._unknown_fields == theirs._unknown_fields


def test_a_varint_over_64_bits_falls_back_to_betterproto2() -> None:
    data = b"\x98\x03" + b"\xff" * 10 + b"\x01"  # sequence (51), an 11-byte varint
    with pytest.raises(wire.Unreadable):
        heartbeat_codec._decode_request(data)
    try:
        theirs: object = compute.UpdateHeartbeatRequest.parse(data)
    except Exception as exc:  # noqa: BLE001 - whatever betterproto2 does, so do we
        theirs = type(exc)
    try:
        ours: object = heartbeat_codec.decode_heartbeat_request(data)
    except Exception as exc:  # noqa: BLE001
        ours = type(exc)
    assert ours == theirs


@given(responses)
def test_encode_equals_betterproto2(response: compute.UpdateHeartbeatResponse) -> None:
    assert heartbeat_codec.encode_heartbeat_response(response) == bytes(response)
    assert heartbeat_codec.encode_heartbeat_response(response) == bytes(response)  # memoised


def test_unknown_fields_of_a_response_are_written_as_betterproto2_writes_them() -> None:
    """betterproto2 keeps the bytes of fields it does not know in ``_unknown_fields`` and
    appends them when encoding; the encoder relies on that attribute."""
    response = compute.UpdateHeartbeatResponse.parse(b"\x08\x01" + b"\x98\x06\x07")
    assert response._unknown_fields == b"\x98\x06\x07"
    assert bytes(response).endswith(b"\x98\x06\x07")
    assert heartbeat_codec.encode_heartbeat_response(response) == bytes(response)


def test_pool_encoding_memo_follows_object_lifetime() -> None:
    pool = storage.StoragePool(id="p1", name="one")
    response = compute.UpdateHeartbeatResponse(assigned_pools=[pool])
    first = heartbeat_codec.encode_heartbeat_response(response)
    assert id(pool) in heartbeat_codec._POOL_BYTES
    key = id(pool)
    del pool, response
    gc.collect()
    assert key not in heartbeat_codec._POOL_BYTES
    other = storage.StoragePool(id="p2", name="two")
    assert heartbeat_codec.encode_heartbeat_response(
        compute.UpdateHeartbeatResponse(assigned_pools=[other])
    ) == bytes(compute.UpdateHeartbeatResponse(assigned_pools=[other]))
    assert first != bytes(compute.UpdateHeartbeatResponse(assigned_pools=[other]))


def test_codec_delegates_other_messages_to_betterproto2() -> None:
    codec = heartbeat_codec.server_codec()
    node = compute.GetNodeRequest(id="n1")
    assert codec.encode(node, compute.GetNodeRequest) == bytes(node)
    assert codec.decode(bytes(node), compute.GetNodeRequest) == node


def test_codec_uses_the_hand_written_code_for_the_heartbeat_messages() -> None:
    codec = heartbeat_codec.server_codec()
    request = compute.UpdateHeartbeatRequest(node_id="n1", sequence=7)
    assert codec.decode(bytes(request), compute.UpdateHeartbeatRequest) == request
    response = compute.UpdateHeartbeatResponse(acknowledged=True, sequence=7)
    assert codec.encode(response, compute.UpdateHeartbeatResponse) == bytes(response)
