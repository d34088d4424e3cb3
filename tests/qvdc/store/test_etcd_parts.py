"""The etcd package's pure parts, without a server: key ranges, messages, the error table."""

from __future__ import annotations

from typing import Any

import aetcd
import grpc  # type: ignore[import-untyped]
import pytest
from aetcd import rpc

from qvdc.store import records
from qvdc.store.etcd import errors, messages


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"a", b"b"),
        (b"/qvdc/", b"/qvdc0"),
        (b"a\xff", b"b"),  # a trailing 0xff carries into the byte before it
        (b"\xff\xff", b"\0"),  # nothing above it: to the end of the keyspace
    ],
)
def test_range_end_selects_exactly_the_prefix(prefix: bytes, end: bytes) -> None:
    assert messages.range_end(prefix) == end


def test_messages_add_and_strip_the_prefix() -> None:
    build = messages.Messages(prefix=b"/p/")
    assert build.key("pools/a") == b"/p/pools/a"
    kv = rpc.KeyValue(key=b"/p/pools/a", value=b"v", mod_revision=7, create_revision=5, version=2)
    assert build.key_value(kv) == records.KeyValue(
        key="pools/a", value=b"v", mod_revision=7, create_revision=5, version=2
    )
    deleted = rpc.Event(type=rpc.Event.DELETE, kv=rpc.KeyValue(key=b"/p/x", mod_revision=9))
    assert build.watch_event(deleted) == records.WatchEvent(
        kind="delete", key="x", value=b"", mod_revision=9
    )
    put = rpc.Event(type=rpc.Event.PUT, kv=kv)
    assert build.watch_event(put) == records.WatchEvent(
        kind="put", key="pools/a", value=b"v", mod_revision=7, create_revision=5, version=2
    )


def test_compares_and_ops_become_etcd_messages() -> None:
    build = messages.Messages(prefix=b"/p/")
    absent = build.compare(records.Compare.absent("k"))
    assert (absent.key, absent.target, absent.result, absent.version) == (
        b"/p/k",
        rpc.Compare.VERSION,
        rpc.Compare.EQUAL,
        0,
    )
    value = build.compare(records.Compare("k", "value", "!=", b"x"))
    assert (value.target, value.result, value.value) == (
        rpc.Compare.VALUE,
        rpc.Compare.NOT_EQUAL,
        b"x",
    )
    with pytest.raises(TypeError, match="needs bytes"):
        build.compare(records.Compare("k", "value", "==", 1))
    with pytest.raises(TypeError, match="needs an int"):
        build.compare(records.Compare("k", "mod_revision", "==", b"1"))

    put = build.request_op(records.Op.put("k", b"v", lease=42))
    assert (put.request_put.key, put.request_put.value, put.request_put.lease) == (
        b"/p/k",
        b"v",
        42,
    )
    delete = build.request_op(records.Op.delete("k"))
    assert delete.request_delete_range.key == b"/p/k"


def _rpc_error(code: Any, details: str) -> Exception:
    error: Exception = rpc.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    return error


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError(), records.StoreTimeout),
        (_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, ""), records.StoreTimeout),
        (_rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"), records.StoreUnavailable),
        (_rpc_error(grpc.StatusCode.CANCELLED, ""), records.StoreUnavailable),
        (_rpc_error(grpc.StatusCode.ABORTED, ""), records.StoreUnavailable),
        (
            _rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests"),
            records.StoreUnavailable,
        ),
        (
            _rpc_error(grpc.StatusCode.OUT_OF_RANGE, "mvcc: required revision has been compacted"),
            errors.RevisionCompacted,
        ),
        (
            _rpc_error(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
            errors.LeaseNotFound,
        ),
        (_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "duplicate key"), records.StoreError),
        (aetcd.ConnectionTimeoutError("slow"), records.StoreTimeout),
        (aetcd.ConnectionFailedError("down"), records.StoreUnavailable),
        (aetcd.ClientError("odd"), records.StoreError),
    ],
)
def test_client_errors_map_to_store_errors(exc: Exception, expected: type[Exception]) -> None:
    mapped = errors.map_exception(exc, endpoint="127.0.0.1:2379", what="get 'k'", limit=1.0)
    assert type(mapped) is expected
    assert "get 'k'" in str(mapped) and "127.0.0.1:2379" in str(mapped)


def test_a_compacted_watch_start_keeps_its_revision() -> None:
    mapped = errors.map_exception(
        aetcd.RevisionCompactedError(17), endpoint="e", what="watch", limit=None
    )
    assert isinstance(mapped, records.Compacted) and mapped.compact_revision == 17


def test_errors_not_from_the_client_pass_unchanged() -> None:
    bug = ZeroDivisionError("a programming error")
    assert errors.map_exception(bug, endpoint="e", what="w", limit=1.0) is bug
    ours = records.StoreUnavailable("already mapped")
    assert errors.map_exception(ours, endpoint="e", what="w", limit=1.0) is ours
