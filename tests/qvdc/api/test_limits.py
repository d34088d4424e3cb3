"""The node keeps what it writes within the controller's limits.

The node daemon may not import the controller, so ``node.convert`` carries its own copy of
the default bounds on text it writes; these tests pin that the copies agree with
:class:`qvdc.domain.limits.Limits` and that a node with a 1 MiB mount error (or path, CPU
model, label value) builds requests the controller's edge check accepts.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from grpclib.const import Status
from hypothesis import given
from hypothesis import strategies as st

from node import convert as node_convert
from node import hostfacts
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.api import limits as request_limits
from qvdc.domain import errors, validation
from qvdc.domain.limits import Limits
from qvdc.store.etcd import EtcdStore
from storage_backends import base
from tests.qvdc.api import helpers

_MIB = 1024 * 1024


def test_node_bounds_equal_the_controller_defaults() -> None:
    limits = Limits()
    assert limits.max_report_message_length == node_convert.MAX_REPORT_MESSAGE_LENGTH
    assert limits.max_path_length == node_convert.MAX_PATH_LENGTH
    assert limits.max_text_length == node_convert.MAX_TEXT_LENGTH


def _info(*, error_message: str = "", mount_path: str = "/mnt/p") -> base.PoolInfo:
    return base.PoolInfo(
        pool_id="p1",
        kind="local_dir",
        health=base.PoolHealth.ERROR,
        mount_path=mount_path,
        error_message=error_message,
    )


def test_a_huge_mount_error_is_cut_and_the_heartbeat_accepted() -> None:
    heartbeat = node_convert.Heartbeat(
        node_id="n1",
        sequence=1,
        delta=False,
        pools=(_info(error_message="e" * _MIB, mount_path="/" + "d" * _MIB),),
    )
    request = node_convert.heartbeat_to_request(heartbeat)
    report = request.storage_pools[0]
    assert len(report.error_message) == Limits().max_report_message_length
    assert report.error_message.startswith("eeee")
    assert report.error_message.endswith("(cut)")
    assert len(report.mount_path) == Limits().max_path_length
    request_limits.check(request, Limits())  # does not raise


def test_uncut_the_same_report_is_refused_naming_the_field() -> None:
    # The controller's check is what the cut protects against: without it, refused.
    request = node_convert.heartbeat_to_request(
        node_convert.Heartbeat(node_id="n1", sequence=1, delta=False, pools=(_info(),))
    )
    request.storage_pools[0].error_message = "e" * _MIB
    with pytest.raises(errors.InvalidArgument) as caught:
        request_limits.check(request, Limits())
    assert "storage_pools[0].error_message" in str(caught.value)
    assert len(str(caught.value)) < 300


def test_registration_text_is_cut() -> None:
    request = node_convert.register_request(
        hostname="host-1",
        management_ip="10.0.0.1:9443",
        labels={"zone": "z" * _MIB},
        facts=hostfacts.HostFacts(hostname="host-1", cpu_model="c" * _MIB),
    )
    assert len(request.labels["zone"]) == Limits().max_text_length
    assert request.cpu_info is not None
    assert len(request.cpu_info.model) == Limits().max_text_length
    request_limits.check(request, Limits())  # does not raise


@given(text=st.text(max_size=3000), limit=st.integers(min_value=len("… (cut)"), max_value=2000))
def test_bounded_is_identity_under_the_limit_and_never_over_it(text: str, limit: int) -> None:
    cut = node_convert.bounded(text, limit)
    assert len(cut) <= limit
    if len(text) <= limit:
        assert cut == text
    else:
        assert cut.endswith("(cut)")
        assert text.startswith(cut[: -len("… (cut)")])


# -- through a real controller: each limit, just under and just over --------------------

_L = Limits()


def _create(**fields: Any) -> storage.CreatePoolRequest:
    request = helpers.create_request(f"pool-{secrets.token_hex(3)}")
    for name, value in fields.items():
        setattr(request, name, value)
    return request


def _pool_description(n: int) -> storage.CreatePoolRequest:
    return _create(description="d" * n)


def _pool_project(n: int) -> storage.CreatePoolRequest:
    return _create(project_id="p" * n)


def _pool_label_value(n: int) -> storage.CreatePoolRequest:
    return _create(labels={"zone": "z" * n})


def _pool_label_count(n: int) -> storage.CreatePoolRequest:
    return _create(labels={f"k{i}": "v" for i in range(n)})


def _pool_nfs_options(n: int) -> storage.CreatePoolRequest:
    backend = helpers.nfs_backend()
    assert backend.nfs is not None
    backend.nfs.options = "o" * n
    return _create(spec=storage.StoragePoolSpec(backend=backend))


def _node_cpu_model(n: int) -> compute.RegisterNodeRequest:
    request = helpers.register_request(f"host-{secrets.token_hex(3)}")
    assert request.cpu_info is not None
    request.cpu_info.model = "c" * n
    return request


CASES = [
    pytest.param(_pool_description, _L.max_text_length, "description", id="description"),
    pytest.param(_pool_project, _L.max_id_length, "project_id", id="project_id"),
    # Label values: the domain's rule (253) is tighter than the edge's max_text_length.
    pytest.param(_pool_label_value, validation.LABEL_VALUE_MAX, "labels", id="label-value"),
    pytest.param(_pool_label_count, _L.max_labels, "labels", id="label-count"),
    pytest.param(_pool_nfs_options, _L.max_text_length, "spec.backend.nfs.options", id="nfs"),
    pytest.param(_node_cpu_model, _L.max_text_length, "cpu_info.model", id="cpu-model"),
]


async def _send(
    pools: storage.StoragePoolServiceStub, nodes: compute.NodeServiceStub, request: Any
) -> object:
    if isinstance(request, storage.CreatePoolRequest):
        return await pools.create_pool(request)
    return await nodes.register_node(request)


@pytest.mark.parametrize(("build", "limit", "field"), CASES)
async def test_just_under_a_limit_is_accepted(
    pools: storage.StoragePoolServiceStub,
    nodes: compute.NodeServiceStub,
    build: Callable[[int], Any],
    limit: int,
    field: str,
) -> None:
    await _send(pools, nodes, build(limit))  # stored: no exception


@pytest.mark.parametrize("size", ["over", "huge"])
@pytest.mark.parametrize(("build", "limit", "field"), CASES)
async def test_over_a_limit_is_refused_naming_field_and_limit_and_changes_nothing(
    pools: storage.StoragePoolServiceStub,
    nodes: compute.NodeServiceStub,
    store: EtcdStore,
    build: Callable[[int], Any],
    limit: int,
    field: str,
    size: str,
) -> None:
    huge = 10_000 if build is _pool_label_count else _MIB
    n = limit + 1 if size == "over" else huge
    # Just over names this limit; a huge value may be caught by a wider one first (a label
    # value by the edge's max_text_length before the domain's 253).
    bound = f"at most {limit}" if size == "over" else "at most"
    before = await _state(store)
    error = await helpers.expect_error(
        _send(pools, nodes, build(n)), Status.INVALID_ARGUMENT, field, bound
    )
    assert len((error.message or "").encode()) < 300, error.message
    assert await _state(store) == before


async def _state(store: EtcdStore) -> list[tuple[str, int, bytes]]:
    """Every key in etcd with its revision, but the replica's own election and presence
    keys (renewed in the background whatever the clients send)."""
    kvs, _ = await store.get_prefix("", timeout=5.0)
    return [
        (kv.key, kv.mod_revision, kv.value)
        for kv in kvs
        if not kv.key.startswith(("election/", "replicas/"))
    ]
