"""qvdc.api.limits: every field of every request of both services is bounded.

The coverage test walks the request types the services declare (their ``__mapping__``)
and every message nested in them, so a field added to the protos fails here until the
walk bounds it (it does by its kind; this catches a kind the walk does not know).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import betterproto2
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.api import limits
from qvdc.domain import errors
from qvdc.domain.limits import Limits

UNBOUNDED_KINDS = {"string", "bytes", "message", "enum", "map"}


def request_types() -> list[type[Any]]:
    """The request type of every RPC of both services, from the generated service bases."""
    found: list[type[Any]] = []
    bases: tuple[Any, ...] = (compute.NodeServiceBase, storage.StoragePoolServiceBase)
    for base in bases:
        for handler in base.__mapping__(object.__new__(base)).values():
            found.append(handler.request_type)
    return found


def nested(message_type: type[Any], seen: set[type[Any]]) -> None:
    if message_type in seen:
        return
    seen.add(message_type)
    hints = typing.get_type_hints(message_type)
    for f in dataclasses.fields(message_type):
        for arg in (*typing.get_args(hints[f.name]), hints[f.name]):
            for inner in (*typing.get_args(arg), arg):
                if isinstance(inner, type) and issubclass(inner, betterproto2.Message):
                    nested(inner, seen)


def all_message_types() -> list[type[Any]]:
    seen: set[type[Any]] = set()
    for t in request_types():
        nested(t, seen)
    return sorted(seen, key=lambda t: t.__name__)


def test_the_services_declare_every_rpc_of_the_protos() -> None:
    names = {t.__name__ for t in request_types()}
    assert {"RegisterNodeRequest", "UpdateHeartbeatRequest", "CreatePoolRequest"} <= names
    assert len(request_types()) == 34  # 23 NodeService + 11 StoragePoolService RPCs


@pytest.mark.parametrize("message_type", all_message_types(), ids=lambda t: t.__name__)
def test_every_field_that_can_carry_unbounded_input_is_checked(message_type: type[Any]) -> None:
    wanted = {
        f.name
        for f in dataclasses.fields(message_type)
        if betterproto2.FieldMetadata.get(f).proto_type in UNBOUNDED_KINDS
        or betterproto2.FieldMetadata.get(f).repeated
    }
    assert wanted <= limits.covered_fields(message_type)


@pytest.mark.parametrize(
    ("name", "limit"),
    [
        ("id", 128),
        ("node_id", 128),
        ("pool_id", 128),
        ("project_id", 128),
        ("hostname", 253),
        ("server", 253),
        ("mount_path", 4096),
        ("export_path", 4096),
        ("error_message", 4096),
        ("description", 1024),
        ("reason", 1024),
    ],
)
def test_string_limits_by_field_name(name: str, limit: int) -> None:
    assert limits.string_limit(name, Limits()) == limit


def report(**fields: Any) -> compute.StoragePoolStatusReport:
    return compute.StoragePoolStatusReport(pool_id="p", **fields)


@pytest.mark.parametrize(
    ("message", "field", "reason"),
    [
        (
            compute.UpdateHeartbeatRequest(
                node_id="n", storage_pools=[report(), report(error_message="x" * 4097)]
            ),
            "storage_pools[1].error_message",
            "at most 4096 characters, got 4097",
        ),
        (
            compute.UpdateHeartbeatRequest(node_id="n" * 129),
            "node_id",
            "at most 128 characters, got 129",
        ),
        (
            compute.UpdateHeartbeatRequest(node_id="n", storage_pools=[report()] * 1025),
            "storage_pools",
            "at most 1024 entries, got 1025",
        ),
        (
            compute.UpdateHeartbeatRequest(node_id="n", removed_pool_ids=["p" * 200]),
            "removed_pool_ids[0]",
            "at most 128 characters, got 200",
        ),
        (
            storage.CreatePoolRequest(name="a", labels={f"k{i}": "v" for i in range(65)}),
            "labels",
            "at most 64 entries, got 65",
        ),
        (
            storage.CreatePoolRequest(name="a", project_id="x" * 1_000_000),
            "project_id",
            "at most 128 characters, got 1000000",
        ),
        (
            storage.CreatePoolRequest(
                name="a",
                spec=storage.StoragePoolSpec(
                    backend=storage.StorageBackend(ceph=storage.CephConfig(monitors=["m"] * 1025))
                ),
            ),
            "spec.backend.ceph.monitors",
            "at most 1024 entries, got 1025",
        ),
        (
            storage.CreatePoolRequest(
                name="a",
                spec=storage.StoragePoolSpec(
                    backend=storage.StorageBackend.parse(b"\x08\xe7\x07")  # type 999
                ),
            ),
            "spec.backend.type",
            "unknown value 999",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_field_over_its_bound_is_refused_naming_it(message: Any, field: str, reason: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        limits.check(message, Limits())
    assert caught.value.field == field
    assert caught.value.reason == reason
    assert len(str(caught.value)) < 200


def test_within_bounds_passes() -> None:
    limits.check(
        compute.UpdateHeartbeatRequest(
            node_id="n" * 128,
            storage_pools=[report(error_message="x" * 4096, mount_path="/" * 4096)] * 1024,
        ),
        Limits(),
    )
    limits.check(storage.CreatePoolRequest(name="a", labels={"k": "v"}), Limits())


def test_limits_are_settings() -> None:
    small = Limits(max_report_message_length=10)
    with pytest.raises(errors.InvalidArgument, match="at most 10 characters"):
        limits.check(
            compute.UpdateHeartbeatRequest(
                node_id="n", storage_pools=[report(error_message="x" * 11)]
            ),
            small,
        )
