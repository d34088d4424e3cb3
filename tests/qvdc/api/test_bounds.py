"""Server-side bounds: a client that stops reading, a caller whose deadline runs out.

Real grpclib server on loopback and a real etcd. The reading client announces the
smallest HTTP/2 windows (64 KiB) and then stops reading, so a response larger than
that fills its window and the server's send waits on flow control, as with a host that
hung with its connection open.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import grpclib.client
import grpclib.config
import grpclib.const
import pytest
from grpclib.const import Status
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, StreamTerminatedError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings, GrpcSettings, SettingsError
from qvdc.store import etcd, keys
from qvdc.store.etcd import EtcdStore
from tests.fixtures.etcd import FaultyStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    controller_settings,
    eventually,
    local_backend,
    register_request,
)

T = TypeVar("T")

SEND_TIMEOUT = 0.3
#: Pools whose definitions, with long descriptions, make one response > 64 KiB.
POOLS = 70
WINDOW = 2**16


def _settings(etcd_settings: EtcdSettings) -> object:
    base = controller_settings(etcd_settings)
    return dataclasses.replace(
        base, grpc=GrpcSettings(host="127.0.0.1", port=0, send_timeout=SEND_TIMEOUT)
    )


@pytest.fixture
async def bounded(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=_settings(etcd_settings))  # type: ignore[arg-type]
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def slow_reader(bounded: Controller) -> AsyncIterator[grpclib.client.Channel]:
    """A channel announcing 64 KiB windows: it stops receiving once 64 KiB are unread."""
    config = grpclib.config.Configuration(
        http2_connection_window_size=WINDOW, http2_stream_window_size=WINDOW
    )
    channel = grpclib.client.Channel("127.0.0.1", bounded.port, config=config)
    try:
        yield channel
    finally:
        channel.close()


async def _big_pools(channel: grpclib.client.Channel, *, node_ids: Sequence[str]) -> None:
    pools = storage.StoragePoolServiceStub(channel)
    for i in range(POOLS):
        await pools.create_pool(
            storage.CreatePoolRequest(
                name=f"big-{i}",
                description="d" * 1000,
                spec=storage.StoragePoolSpec(
                    backend=local_backend(f"/srv/pools/big-{i}"), assigned_node_ids=list(node_ids)
                ),
            ),
            timeout=TIMEOUT,
        )


async def _one_record(caplog: pytest.LogCaptureFixture, text: str) -> logging.LogRecord:
    await eventually(
        lambda: _async([r for r in caplog.records if text in r.getMessage()]),
        bool,
        timeout=TIMEOUT,
        what=f"a log record with {text!r}",
    )
    await asyncio.sleep(SEND_TIMEOUT)  # time for a second (wrong) record to show up
    found = [r for r in caplog.records if text in r.getMessage()]
    assert len(found) == 1, [r.getMessage() for r in found]
    return found[0]


async def _async(value: T) -> T:
    return value


async def _read_to_the_end(stream: grpclib.client.Stream[Any, Any]) -> None:
    """Read what is left; the answer cut off mid-message ends in a stream reset, and the
    status arrives in the trailers (raised when the stream is closed)."""
    with contextlib.suppress(StreamTerminatedError):
        while await stream.recv_message() is not None:
            pass


async def test_a_node_that_stops_reading_loses_its_heartbeat_stream(
    bounded: Controller, slow_reader: grpclib.client.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    nodes = compute.NodeServiceStub(slow_reader)
    node = await nodes.register_node(register_request("stops-reading"), timeout=TIMEOUT)
    await _big_pools(slow_reader, node_ids=[node.id])
    caplog.set_level(logging.INFO, logger="qvdc.api")
    stream = slow_reader.request(
        "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
        grpclib.const.Cardinality.STREAM_STREAM,
        compute.UpdateHeartbeatRequest,
        compute.UpdateHeartbeatResponse,
        timeout=30,
    )
    with pytest.raises(GRPCError) as info:
        async with stream:
            # The first answer carries every definition (> 64 KiB); the node does not read.
            await stream.send_message(compute.UpdateHeartbeatRequest(node_id=node.id, sequence=1))
            sent = time.time()
            record = await _one_record(caplog, "did not read")
            assert record.levelno == logging.INFO and record.exc_info is None
            assert SEND_TIMEOUT <= record.created - sent < SEND_TIMEOUT * 1.25 + 1.0
            await _read_to_the_end(stream)
    assert info.value.status == Status.UNAVAILABLE
    assert "did not read" in (info.value.message or "")
    assert bounded.hub.open_streams == 0


async def test_a_client_that_does_not_read_a_unary_answer_gets_unavailable(
    bounded: Controller, slow_reader: grpclib.client.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    await _big_pools(slow_reader, node_ids=[])
    caplog.set_level(logging.INFO, logger="qvdc.api")
    stream = slow_reader.request(
        "/limiquantix.storage.v1.StoragePoolService/ListPools",
        grpclib.const.Cardinality.UNARY_UNARY,
        storage.ListPoolsRequest,
        storage.ListPoolsResponse,
        timeout=30,
    )
    with pytest.raises(GRPCError) as info:
        async with stream:
            await stream.send_message(storage.ListPoolsRequest(page_size=POOLS), end=True)
            sent = time.time()
            record = await _one_record(caplog, "did not read")
            assert record.levelno == logging.INFO and record.exc_info is None
            assert SEND_TIMEOUT <= record.created - sent < SEND_TIMEOUT + 1.0
            # Closing the call, the client finds the status the server ended it with.
    assert info.value.status == Status.UNAVAILABLE
    assert "did not read" in (info.value.message or "")


class _RecordingStore(FaultyStore):
    """FaultyStore that also records the timeout of every txn writing a pool, and can
    refuse or hang those (only those: the replica's own election and writes carry on)."""

    def __init__(self, inner: EtcdStore) -> None:
        super().__init__(inner)
        self.pool_txn_timeouts: list[float | None] = []
        self.refuse_pool_writes = False
        self.hang_pool_writes = False

    async def txn(
        self,
        *,
        compares: Sequence[etcd.Compare],
        success: Sequence[etcd.Op],
        failure: Sequence[etcd.Op] = (),
        timeout: float | None = None,
    ) -> etcd.TxnResult:
        if any(op.key.startswith(keys.POOLS) for op in success):
            self.pool_txn_timeouts.append(timeout)
            if self.refuse_pool_writes:
                raise etcd.StoreUnavailable("injected: pool write refused")
            if self.hang_pool_writes:  # a silent etcd: the call lasts its whole timeout
                limit = self.settings.timeout if timeout is None else timeout
                await asyncio.sleep(limit)
                raise etcd.StoreTimeout(f"injected hang: pool write exceeded {limit} s")
        return await super().txn(
            compares=compares, success=success, failure=failure, timeout=timeout
        )


async def test_the_callers_deadline_bounds_the_etcd_calls_it_makes(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    assert etcd_settings.timeout > 2  # the configured bound is far longer than the deadline
    faulty = _RecordingStore(store)
    controller = Controller(store=faulty, settings=_settings(etcd_settings))  # type: ignore[arg-type]
    await controller.start()
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        pools = storage.StoragePoolServiceStub(channel)
        faulty.hang_pool_writes = True  # etcd stops answering pool writes
        deadline = 0.5
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(GRPCError) as info:
            await pools.create_pool(
                storage.CreatePoolRequest(
                    name="late", spec=storage.StoragePoolSpec(backend=local_backend())
                ),
                timeout=deadline,
            )
        elapsed = loop.time() - started
        # The server answered, within the deadline, and said why.
        assert info.value.status == Status.DEADLINE_EXCEEDED
        assert "deadline" in (info.value.message or "")
        assert elapsed < deadline
        assert faulty.pool_txn_timeouts and all(
            t is not None and t < deadline for t in faulty.pool_txn_timeouts
        )
        faulty.hang_pool_writes = False
        # The same call with time to spare succeeds: nothing was left half done.
        created = await pools.create_pool(
            storage.CreatePoolRequest(
                name="late", spec=storage.StoragePoolSpec(backend=local_backend())
            ),
            timeout=TIMEOUT,
        )
        assert created.name == "late"
    finally:
        channel.close()
        await controller.stop()
        await faulty.close()


async def test_etcd_failing_is_unavailable_named_by_the_catalog(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    faulty = _RecordingStore(store)
    controller = Controller(store=faulty, settings=_settings(etcd_settings))  # type: ignore[arg-type]
    await controller.start()
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        faulty.refuse_pool_writes = True
        with pytest.raises(GRPCError) as info:
            await storage.StoragePoolServiceStub(channel).create_pool(
                storage.CreatePoolRequest(
                    name="refused", spec=storage.StoragePoolSpec(backend=local_backend())
                ),
                timeout=TIMEOUT,
            )
        assert info.value.status == Status.UNAVAILABLE
        assert (info.value.message or "").startswith("etcd unavailable: injected: pool write")
    finally:
        channel.close()
        await controller.stop()
        await faulty.close()


@pytest.mark.parametrize("send_timeout", [0, -1.0, 601])
def test_the_send_timeout_is_validated(send_timeout: float) -> None:
    with pytest.raises(SettingsError, match="send_timeout"):
        GrpcSettings(send_timeout=send_timeout)


# ---------------------------------------------------------------- transport bounds

MAX_MESSAGE = 64 * 1024
IDLE_TIMEOUT = 0.5


class _RawCodec(CodecBase):
    """Bytes in, bytes out: a request sent exactly as built."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


@pytest.fixture
async def transport_bounded(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> AsyncIterator[Controller]:
    base = controller_settings(etcd_settings)
    settings = dataclasses.replace(
        base,
        grpc=GrpcSettings(
            host="127.0.0.1", port=0, max_message_bytes=MAX_MESSAGE, idle_timeout=IDLE_TIMEOUT
        ),
    )
    c = Controller(store=store, settings=settings)
    await c.start()
    try:
        # Settled: the replica has written its presence and leads (on a loaded machine the
        # election may otherwise write replicas/<id> in the middle of a "nothing changed"
        # comparison).
        await eventually(
            lambda: store.get(keys.ELECTION_AGGREGATOR),
            lambda kv: kv is not None and kv.value == settings.replica_id.encode(),
            what="the replica leading",
        )
        yield c
    finally:
        await c.stop()


def _rpcs() -> list[tuple[str, grpclib.const.Cardinality]]:
    found = []
    for base in (compute.NodeServiceBase, storage.StoragePoolServiceBase):
        for path, handler in base.__mapping__(base).items():  # type: ignore[arg-type]
            found.append((path, handler.cardinality))
    return sorted(found)


RPCS = _rpcs()


async def _raw_call(
    port: int, path: str, cardinality: grpclib.const.Cardinality, body: bytes
) -> GRPCError | None:
    channel = grpclib.client.Channel("127.0.0.1", port, codec=_RawCodec())
    try:
        async with channel.request(path, cardinality, bytes, bytes, timeout=TIMEOUT) as call:
            await call.send_message(body, end=True)
            with contextlib.suppress(StreamTerminatedError):
                while await call.recv_message() is not None:
                    pass
    except GRPCError as error:
        return error
    finally:
        channel.close()
    return None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x0b", id="group-wire-type"),
        pytest.param(b"\x0a\xff\xff\xff\xff\x0f" + b"\x01" * 10, id="length-2^32-1-with-10-bytes"),
        pytest.param(b"\x08" + b"\xff" * 10 + b"\x01", id="11-byte-varint"),
    ],
)
async def test_malformed_bytes_are_invalid_argument_for_every_rpc(
    transport_bounded: Controller, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = await transport_bounded.store.get_prefix("", timeout=TIMEOUT)
    for path, cardinality in RPCS:
        error = await _raw_call(transport_bounded.port, path, cardinality, body)
        assert error is not None, f"{path} accepted {body!r}"
        assert error.status == Status.INVALID_ARGUMENT, (path, error)
        assert (error.message or "").startswith("malformed "), (path, error.message)
        assert len(error.message or "") < 256
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    after = await transport_bounded.store.get_prefix("", timeout=TIMEOUT)

    def state(kvs: Sequence[Any]) -> list[tuple[str, int]]:  # the election writes its own
        return [(kv.key, kv.mod_revision) for kv in kvs if not kv.key.startswith("election/")]

    assert state(after[0]) == state(before[0])


async def test_a_heartbeat_whose_report_length_overruns_is_refused_not_recorded(
    transport_bounded: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: parsed by betterproto2 as one empty report, and the node's pools recorded
    UNMOUNTED."""
    caplog.set_level(logging.INFO)
    channel = grpclib.client.Channel("127.0.0.1", transport_bounded.port)
    try:
        node = await compute.NodeServiceStub(channel).register_node(
            register_request("overrun"), timeout=TIMEOUT
        )
    finally:
        channel.close()
    body = bytes(compute.UpdateHeartbeatRequest(node_id=node.id, sequence=1)) + (
        b"\x5a\xff\xff\xff\xff\x0f" + b"\x0a\x02p1" + b"\x00" * 6
    )
    for path in (
        "/limiquantix.compute.v1.NodeService/UpdateHeartbeat",
        "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
    ):
        cardinality = dict(RPCS)[path]
        error = await _raw_call(transport_bounded.port, path, cardinality, body)
        assert error is not None and error.status == Status.INVALID_ARGUMENT, (path, error)
        assert "storage_pools[0]" in (error.message or ""), error.message
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "path",
    [
        "/limiquantix.storage.v1.StoragePoolService/CreatePool",
        "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
    ],
)
async def test_a_message_over_max_message_bytes_is_resource_exhausted(
    transport_bounded: Controller, path: str
) -> None:
    body = bytes(storage.CreatePoolRequest(name="x" * MAX_MESSAGE))
    error = await _raw_call(transport_bounded.port, path, dict(RPCS)[path], body)
    assert error is not None and error.status == Status.RESOURCE_EXHAUSTED, error
    assert f"over the limit of {MAX_MESSAGE} bytes" in (error.message or "")


async def test_a_silent_connection_is_closed_after_the_idle_timeout(
    transport_bounded: Controller,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", transport_bounded.port)
    try:
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        started = time.monotonic()
        async with asyncio.timeout(IDLE_TIMEOUT + 3.0):
            while await reader.read(65536):
                pass
        assert time.monotonic() - started >= IDLE_TIMEOUT * 0.9
    finally:
        writer.close()
