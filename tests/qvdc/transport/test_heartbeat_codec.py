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
from hypothesis import given, settings
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
        # list[X] and an optional message's X | None: X.
        element = typing.get_args(hint)[0] if meta.repeated or typing.get_args(hint) else hint
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


def _agrees_or_refuses(data: bytes) -> None:
    """The property: the codec's decoder makes of ``data`` exactly what betterproto2
    does, or raises ``Malformed``; never another exception, never a partial parse."""
    try:
        ours = heartbeat_codec.decode_heartbeat_request(data)
    except wire.Malformed:
        return
    theirs = compute.UpdateHeartbeatRequest.parse(data)
    assert ours == theirs
    assert ours._unknown_fields == theirs._unknown_fields


def _mutate(data: bytes, draw: Any) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "replace"]))
    if not data:
        fresh: bytes = draw(st.binary(min_size=1, max_size=16))
        return fresh
    at = draw(st.integers(0, len(data) - 1))
    extra: bytes = draw(st.binary(min_size=1, max_size=12))
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + extra + data[at:]
    return data[:at] + extra + data[at + 2 :]


@settings(max_examples=300, deadline=None)
@given(requests, st.data())
def test_mutated_requests_decode_as_betterproto2_or_are_refused(
    request: compute.UpdateHeartbeatRequest, data: st.DataObject
) -> None:
    _agrees_or_refuses(_mutate(bytes(request), data.draw))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_decode_as_betterproto2_or_are_refused(data: bytes) -> None:
    _agrees_or_refuses(data)


@given(requests, st.binary(max_size=12))
def test_unknown_fields_are_skipped_as_betterproto2_skips_them(
    request: compute.UpdateHeartbeatRequest, payload: bytes
) -> None:
    # Unknown fields 99 (varint), 98 (length-delimited), 97 (64-bit), 96 (32-bit).
    unknown = (
        b"\x98\x06\x01"
        + b"\x92\x06"
        + wire.write_varint(len(payload))
        + payload
        + b"\x89\x06"
        + b"\x01" * 8
        + b"\x85\x06"
        + b"\x02" * 4
    )
    data = bytes(request) + unknown
    ours = heartbeat_codec.decode_heartbeat_request(data)
    assert ours == compute.UpdateHeartbeatRequest.parse(data)
    assert ours._unknown_fields == unknown


_REPORT = bytes(compute.StoragePoolStatusReport(pool_id="p1", total_bytes=10))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            b"\x5a" + wire.write_varint(2**32 - 1) + b"\x0a\x02p1" + b"\x00" * 6,
            id="report-length-2^32-1-with-10-bytes",
        ),
        pytest.param(b"\x0a\x05ab", id="node-id-longer-than-the-message"),
        pytest.param(b"\x5a\x02\x0a\x05", id="pool-id-longer-than-its-report"),
        pytest.param(b"\x5a" + bytes([len(_REPORT) - 1]) + _REPORT, id="report-overruns"),
        pytest.param(b"\x0b", id="group-start"),
        pytest.param(b"\x0c", id="group-end"),
        pytest.param(b"\x9b\x06\x9c\x06", id="unknown-group"),
        pytest.param(b"\x5a\x02\x13\x14", id="group-in-a-report"),
        pytest.param(b"\x0e\x00", id="wire-type-6"),
        pytest.param(b"\x08\x01", id="node-id-as-varint"),
        pytest.param(b"\x19" + b"\x00" * 8, id="memory-used-as-64-bit"),
        pytest.param(b"\x12\x00", id="cpu-usage-length-delimited"),
        pytest.param(b"\x5a\x02\x0d\x00", id="pool-id-as-32-bit"),
        pytest.param(b"\x98\x03" + b"\xff" * 10 + b"\x01", id="11-byte-varint"),
        pytest.param(b"\x98\x03" + b"\xff" * 9 + b"\x02", id="10-byte-varint-over-64-bits"),
        pytest.param(b"\x98\x03\xff\xff", id="truncated-varint"),
        pytest.param(b"\x98", id="truncated-key"),
        pytest.param(b"\x11\x00\x00", id="truncated-double"),
        pytest.param(b"\x0a\x01\xff", id="invalid-utf-8"),
        pytest.param(b"\x00\x00", id="field-number-0"),
    ],
)
def test_malformed_frames_are_refused(data: bytes) -> None:
    with pytest.raises(wire.Malformed):
        heartbeat_codec.decode_heartbeat_request(data)


def test_the_refusal_names_the_field() -> None:
    data = bytes(compute.UpdateHeartbeatRequest(storage_pools=[compute.StoragePoolStatusReport()]))
    with pytest.raises(wire.Malformed) as info:
        heartbeat_codec.decode_heartbeat_request(data + b"\x5a\x03\x0a\x05x")
    assert info.value.field == "storage_pools[1].pool_id"
    assert "length 5 declared" in str(info.value)


@pytest.mark.parametrize("field", ["storage_pools", "removed_pool_ids"])
def test_an_over_long_repeated_field_is_refused_at_its_first_entry_too_many(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """50,000 entries (2 MB, within the 4 MiB message bound) are refused having decoded
    MAX_ENTRIES + 1 of them, not all: each one decoded is event-loop time every other
    host waits through (about 0.26 s for all of them)."""
    entry: Any = (
        compute.StoragePoolStatusReport(pool_id="p" * 36) if field == "storage_pools" else "p" * 36
    )

    def encoded(count: int) -> bytes:
        fields: dict[str, Any] = {field: [entry] * count}
        return bytes(compute.UpdateHeartbeatRequest(node_id="n", **fields))

    data = encoded(50_000)
    assert len(data) > 1024 * 1024  # under the 4 MiB message bound: it reaches the codec
    decoded = {"reports": 0}
    fast = heartbeat_codec._decode_report

    def counting_report(*args: Any) -> Any:
        decoded["reports"] += 1
        return fast(*args)

    monkeypatch.setattr(heartbeat_codec, "_decode_report", counting_report)
    parse = compute.UpdateHeartbeatRequest.parse
    monkeypatch.setattr(
        compute.UpdateHeartbeatRequest, "parse", lambda *a: pytest.fail(f"parsed: {a!r:.50}")
    )
    with pytest.raises(wire.Malformed) as info:
        heartbeat_codec.decode_heartbeat_request(data)
    assert info.value.field == field
    assert f"at most {wire.MAX_ENTRIES} entries, got more" in str(info.value)
    assert decoded["reports"] <= wire.MAX_ENTRIES + 1
    monkeypatch.setattr(compute.UpdateHeartbeatRequest, "parse", parse)
    within = heartbeat_codec.decode_heartbeat_request(encoded(wire.MAX_ENTRIES))
    assert len(getattr(within, field)) == wire.MAX_ENTRIES


def test_a_10_byte_varint_within_64_bits_is_read() -> None:
    data = b"\x98\x03" + b"\xff" * 9 + b"\x01"
    assert heartbeat_codec._decode_request(data).sequence == 2**64 - 1
    assert heartbeat_codec.decode_heartbeat_request(data) == compute.UpdateHeartbeatRequest.parse(
        data
    )


@pytest.mark.parametrize(
    ("value", "saturated"),
    [(2**64, 2**64 - 1), (2**70 + 3, 2**64 - 1), (-(2**63) - 1, -(2**63)), (-(2**80), -(2**63))],
)
def test_the_encoder_saturates_values_beyond_64_bits(value: int, saturated: int) -> None:
    assert wire.write_varint(value) == wire.write_varint(saturated)
    assert len(wire.write_varint(value)) == 10
    response = compute.UpdateHeartbeatResponse(server_time_unix=value)
    encoded = heartbeat_codec.encode_heartbeat_response(response)
    assert compute.UpdateHeartbeatResponse.parse(encoded).server_time_unix == wire.to_int64(
        saturated
    )


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
