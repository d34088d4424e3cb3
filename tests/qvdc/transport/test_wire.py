"""The strict check of request bytes, for every request message of both services.

Contract with betterproto2: :func:`wire.check` reads its class metadata
(``_betterproto``); the first test fails if that changes shape. The property: bytes
betterproto2 wrote from a valid message always pass, and whatever passes is parsed
by betterproto2 without an error; what is malformed raises ``Malformed``, nothing else.
"""

from __future__ import annotations

from typing import Any

import betterproto2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.domain import limits
from qvdc.transport import heartbeat_codec, wire


def _request_types() -> list[type[betterproto2.Message]]:
    found = []
    for service in (compute.NodeServiceBase, storage.StoragePoolServiceBase):
        for handler in service.__mapping__(service).values():  # type: ignore[arg-type]
            found.append(handler.request_type)
    return sorted(set(found), key=lambda c: c.__name__)


REQUESTS = _request_types()


def test_betterproto2_metadata_has_what_the_check_reads() -> None:
    info: Any = getattr(storage.CreatePoolRequest, "_betterproto")  # noqa: B009
    assert info.field_name_by_number[1] == "name"
    meta = info.meta_by_field_name["labels"]
    assert meta.proto_type == "map"
    entry = info.cls_by_field["labels"]
    assert set(entry._betterproto.meta_by_field_name) == {"key", "value"}
    spec = info.meta_by_field_name[info.field_name_by_number[5]]
    assert isinstance(spec, betterproto2.FieldMetadata)


def test_every_request_type_has_a_schema() -> None:
    assert len(REQUESTS) >= 10
    for cls in REQUESTS:
        wire.check(bytes(cls()), cls)
        wire.check(b"", cls)


def _example(cls: type[betterproto2.Message]) -> betterproto2.Message:
    return cls.parse(bytes(cls()))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(REQUESTS), st.binary(max_size=128))
def test_random_bytes_pass_and_parse_or_raise_malformed(
    cls: type[betterproto2.Message], data: bytes
) -> None:
    try:
        message = heartbeat_codec.decode_strictly(data, cls)
    except wire.Malformed:
        return
    assert type(message) is cls


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (
            storage.CreatePoolRequest,
            storage.CreatePoolRequest(
                name="n",
                labels={"a": "b", "c": "d"},
                spec=storage.StoragePoolSpec(
                    backend=storage.StorageBackend(
                        type=storage.StorageBackendBackendType.NFS,
                        nfs=storage.NfsConfig(server="s", export_path="/e"),
                    )
                ),
            ),
        ),
        (
            compute.RegisterNodeRequest,
            compute.RegisterNodeRequest(
                hostname="h",
                labels={"r": "1"},
                cpu_info=compute.CpuInfo(model="m", features=["avx", "sse"]),
                storage_devices=[compute.StorageDevice(path="/dev/sda", size_bytes=1 << 40)] * 3,
            ),
        ),
    ],
)
def test_valid_nested_messages_pass(cls: type[betterproto2.Message], message: Any) -> None:
    data = bytes(message)
    wire.check(data, cls)
    assert heartbeat_codec.decode_strictly(data, cls) == message
    # Every strict prefix of it is either a valid message too, or refused.
    for cut in range(len(data)):
        try:
            heartbeat_codec.decode_strictly(data[:cut], cls)
        except wire.Malformed:
            pass


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param(b"\x2a\x02\x0a\x05", "spec.backend", id="length-past-the-end-nested"),
        pytest.param(b"\x0b", "name", id="group"),
        pytest.param(b"\x08\x01", "name", id="wrong-wire-type"),
        pytest.param(b"\x0a\x01\xc3", "name", id="invalid-utf-8"),
        pytest.param(b"\xfb\x07", "field 127", id="unknown-group"),
    ],
)
def test_malformed_create_pool_requests_name_the_field(data: bytes, field: str) -> None:
    info: Any = getattr(storage.CreatePoolRequest, "_betterproto")  # noqa: B009
    assert info.field_name_by_number[5] == "spec"
    with pytest.raises(wire.Malformed) as caught:
        wire.check(data, storage.CreatePoolRequest)
    assert caught.value.field.startswith(field), caught.value


def test_a_packed_repeated_scalar_is_accepted_and_a_broken_one_refused() -> None:
    # betterproto2 writes repeated scalars packed; a packed run must fill its length.
    message = compute.StorageDevice(path="p")
    wire.check(bytes(message), compute.StorageDevice)
    packed_fields = []
    for cls in REQUESTS:
        info: Any = getattr(cls, "_betterproto")  # noqa: B009
        for number, name in info.field_name_by_number.items():
            meta = info.meta_by_field_name[name]
            if meta.repeated and meta.proto_type in ("uint64", "int64", "enum", "bool"):
                packed_fields.append((cls, number, name))
    assert packed_fields  # ListNodesRequest.phases at least
    for cls, number, _ in packed_fields:
        tag = wire.write_varint(number << 3 | wire.LEN)
        wire.check(tag + b"\x02\x01\x02", cls)
        with pytest.raises(wire.Malformed):
            wire.check(tag + b"\x02\x01\xff", cls)


def test_a_repeated_field_over_its_entry_bound_is_refused_before_decoding() -> None:
    """10,000 map entries cost betterproto2 about 0.3 s of the event loop to decode."""
    ok = compute.RegisterNodeRequest(labels={f"k{i}": "v" for i in range(wire.MAX_ENTRIES)})
    wire.check(bytes(ok), compute.RegisterNodeRequest)
    over = compute.RegisterNodeRequest(labels={f"k{i}": "v" for i in range(wire.MAX_ENTRIES + 1)})
    with pytest.raises(wire.Malformed) as caught:
        wire.check(bytes(over), compute.RegisterNodeRequest)
    assert caught.value.field == "labels"
    assert f"at most {wire.MAX_ENTRIES} entries, got more" in str(caught.value)


def test_all_repeated_entries_of_a_request_share_one_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "MAX_TOTAL_ENTRIES", 100)
    request = compute.RegisterNodeRequest(
        storage_devices=[compute.StorageDevice(path=f"/dev/d{i}") for i in range(50)],
        network_devices=[compute.NetworkDevice(name=f"n{i}") for i in range(50)],
    )
    wire.check(bytes(request), compute.RegisterNodeRequest)  # exactly 100
    request.labels = {"k": "v"}
    with pytest.raises(wire.Malformed, match="at most 100 repeated entries in a request"):
        wire.check(bytes(request), compute.RegisterNodeRequest)


def test_the_domain_knows_the_decoders_entry_bound() -> None:
    """qvdc.domain.limits refuses count limits the decoders could never reach; it cannot
    import this module, so the two constants are held equal here."""
    assert limits.DECODER_MAX_ENTRIES == wire.MAX_ENTRIES
