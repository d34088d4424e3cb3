"""ListPoolFiles and ReconnectPool as the controller side sees them: two real replicas on
one etcd, a host played by a real StreamHeartbeat opened by hand, so what goes over the
stream (the request message, the answer's matching) and the edges (another replica holds
the stream, a host with no stream, a host that does not answer or goes away) are checked.
The real node daemon's side is tests/e2e/test_e2e_pool_files.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable

import grpclib.client
import grpclib.const
import grpclib.exceptions
import grpclib.server
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.node import v1 as node_daemon
from protos.limiquantix.storage import v1 as storage
from qvdc.api import paging
from qvdc.app import Controller
from qvdc.domain import errors
from tests.qvdc.api.helpers import (
    TIMEOUT,
    create_request,
    eventually,
    expect_error,
    register_request,
    report,
)

STREAM = "/limiquantix.compute.v1.NodeService/StreamHeartbeat"
Stream = grpclib.client.Stream[compute.UpdateHeartbeatRequest, compute.UpdateHeartbeatResponse]


@contextlib.asynccontextmanager
async def host_stream(
    channel: grpclib.client.Channel, node_id: str, pool_id: str, *, health: int = 1
) -> AsyncIterator[Stream]:
    """A host's open heartbeat stream: its first (full) heartbeat sent and answered."""
    async with channel.request(
        STREAM,
        grpclib.const.Cardinality.STREAM_STREAM,
        compute.UpdateHeartbeatRequest,
        compute.UpdateHeartbeatResponse,
    ) as stream:
        await stream.send_message(
            compute.UpdateHeartbeatRequest(
                node_id=node_id, sequence=1, storage_pools=[report(pool_id, health=health)]
            )
        )
        answer = await stream.recv_message()
        assert answer is not None and answer.sequence == 1
        yield stream
        with contextlib.suppress(grpclib.exceptions.ProtocolError):  # cancelled already
            await stream.cancel()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


#: The agent answer bound the test sets (the default is 32 MiB).
AGENT_ANSWER_BOUND = 64 * 1024


class Agent(node_daemon.NodeDaemonServiceBase):
    """Upstream's agent as the controller sees it: NodeDaemonService answering a whole
    directory at once, in no particular order."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def list_storage_pool_files(
        self, message: node_daemon.ListStoragePoolFilesRequest
    ) -> node_daemon.ListStoragePoolFilesResponse:
        self.asked.append((message.pool_id, message.path))
        if message.path == "missing":
            raise GRPCError(Status.NOT_FOUND, "Path not found: missing")
        if message.path == "huge":
            return node_daemon.ListStoragePoolFilesResponse(
                entries=[node_daemon.StoragePoolFileEntry(name="x" * 5000)]
            )
        if message.path == "oversized":  # valid entries, but more bytes than the bound
            return node_daemon.ListStoragePoolFilesResponse(
                entries=[
                    node_daemon.StoragePoolFileEntry(name=f"{i:04d}.raw", path="d" * 200)
                    for i in range(AGENT_ANSWER_BOUND // 100)
                ]
            )
        names = [("zeta.iso", False), ("Alpha", True), ("beta.qcow2", False), ("a.raw", False)]
        return node_daemon.ListStoragePoolFilesResponse(
            entries=[
                node_daemon.StoragePoolFileEntry(
                    name=n, path=n, is_directory=d, file_type="directory" if d else n[-3:]
                )
                for n, d in names
            ],
            current_path=message.path,
        )


async def _request(stream: Stream) -> compute.UpdateHeartbeatResponse:
    """The next message on the stream that is not a push of assignments."""
    while True:
        message = await asyncio.wait_for(stream.recv_message(), TIMEOUT)
        assert message is not None
        if message.list_files is not None or message.reattach_pool_ids:
            return message


async def _setup(
    channel: grpclib.client.Channel, *, hostname: str = "host-f"
) -> tuple[str, storage.StoragePool]:
    nodes = compute.NodeServiceStub(channel)
    pools = storage.StoragePoolServiceStub(channel)
    node = await nodes.register_node(register_request(hostname, ip="127.0.0.1"), timeout=TIMEOUT)
    pool = await pools.create_pool(create_request(f"p-{hostname}", nodes=[node.id]))
    return node.id, pool


async def _row(controller: Controller, pool_id: str, node_id: str, health: int) -> None:
    async def health_now() -> int | None:
        row = controller.view.host_status(pool_id, node_id)
        return int(row.report.health) if row is not None else None

    await eventually(health_now, lambda h: h == health, what="the host's row")


async def test_the_listing_is_asked_and_answered_on_the_hosts_stream(
    replicas: tuple[Controller, Controller],
) -> None:
    first, second = replicas
    ch1 = grpclib.client.Channel("127.0.0.1", first.port)
    ch2 = grpclib.client.Channel("127.0.0.1", second.port)
    try:
        node_id, pool = await _setup(ch1)
        pools1 = storage.StoragePoolServiceStub(ch1)
        pools2 = storage.StoragePoolServiceStub(ch2)
        async with host_stream(ch1, node_id, pool.id) as stream:
            await _row(first, pool.id, node_id, 1)
            await _row(second, pool.id, node_id, 1)

            def ls(
                pools: storage.StoragePoolServiceStub, **fields: object
            ) -> Awaitable[storage.ListPoolFilesResponse]:
                request = storage.ListPoolFilesRequest(pool_id=pool.id, **fields)  # type: ignore[arg-type]
                return pools.list_pool_files(request, timeout=TIMEOUT)

            # The other replica asks through etcd; the one holding the stream asks the host.
            relayed = asyncio.ensure_future(ls(pools2, path="/"))
            asked = await _request(stream)
            assert asked.list_files is not None and asked.list_files.path == ""
            await stream.send_message(
                compute.UpdateHeartbeatRequest(
                    node_id=node_id,
                    delta=True,
                    list_files_result=compute.ListFilesResult(
                        request_id=asked.list_files.request_id,
                        entries=[storage.PoolFileEntry(name="via-r1")],
                    ),
                )
            )
            assert [e.name for e in (await relayed).entries] == ["via-r1"]
            # r1 counts after its answer's put returns; r2 may have seen the answer first.
            await eventually(
                lambda: asyncio.sleep(0, first.forwarder.served), lambda n: n >= 1, what="served"
            )
            assert first.forwarder.served == 1
            relayed = asyncio.ensure_future(ls(pools2, path="missing"))
            asked = await _request(stream)
            assert asked.list_files is not None
            await stream.send_message(
                compute.UpdateHeartbeatRequest(
                    node_id=node_id,
                    delta=True,
                    list_files_result=compute.ListFilesResult(
                        request_id=asked.list_files.request_id,
                        error_code=Status.NOT_FOUND.value,
                        error_message="path: missing does not exist in the pool",
                    ),
                )
            )
            await expect_error(
                relayed, Status.NOT_FOUND, "host host-f: path: missing does not exist"
            )

            call = asyncio.ensure_future(ls(pools1, path="/images/", page_size=2))
            asked = await _request(stream)
            assert (asked.acknowledged, asked.sequence, asked.unsolicited) == (False, 0, False)
            assert asked.assigned_pool_ids == [] and asked.assigned_pools == []
            question = asked.list_files
            assert question is not None
            assert (question.pool_id, question.path, question.limit) == (pool.id, "images", 2)
            assert question.after_name == ""
            entries = [
                storage.PoolFileEntry(name=n, path=f"images/{n}", is_directory=d)
                for n, d in (("sub", True), ("a.qcow2", False))
            ]

            def answer(**fields: object) -> compute.UpdateHeartbeatRequest:
                return compute.UpdateHeartbeatRequest(
                    node_id=node_id,
                    delta=True,
                    list_files_result=compute.ListFilesResult(**fields),  # type: ignore[arg-type]
                )

            # An answer to another question is not taken.
            await stream.send_message(answer(request_id=question.request_id + 99))
            await asyncio.sleep(0.2)
            assert not call.done()
            await stream.send_message(
                answer(
                    request_id=question.request_id,
                    entries=entries,
                    current_path="images",
                    more=True,
                )
            )
            page = await call
            assert [e.name for e in page.entries] == ["sub", "a.qcow2"]
            assert page.current_path == "images"
            assert paging.decode_token(page.next_page_token) == "images\x00fa.qcow2"

            # The next page starts after the last entry.
            call = asyncio.ensure_future(ls(pools1, path="images", page_token=page.next_page_token))
            question = (await _request(stream)).list_files
            assert question is not None
            assert (question.after_name, question.after_is_directory) == ("a.qcow2", False)
            assert question.limit == 50  # page_size 0: the default
            await stream.send_message(
                answer(
                    request_id=question.request_id,
                    error_code=Status.NOT_FOUND.value,
                    error_message="path: images does not exist in the pool",
                )
            )
            await expect_error(
                call, Status.NOT_FOUND, "host host-f: path: images does not exist in the pool"
            )

            # A host that does not answer in time; then one whose stream goes away.
            first.pool_ops._list_timeout = 0.3
            await expect_error(
                ls(pools1), Status.DEADLINE_EXCEEDED, "host host-f did not answer", "0.3s"
            )
            assert first.host_requests.waiting == 0
            first.pool_ops._list_timeout = 10.0
            call = asyncio.ensure_future(ls(pools1))
            await _request(stream)
            await stream.cancel()
            started = asyncio.get_running_loop().time()
            await expect_error(call, Status.UNAVAILABLE, "heartbeat stream")
            assert asyncio.get_running_loop().time() - started < 5
    finally:
        ch1.close()
        ch2.close()


async def test_refusals_before_any_host_is_asked(
    replicas: tuple[Controller, Controller],
) -> None:
    first, _ = replicas
    channel = grpclib.client.Channel("127.0.0.1", first.port)
    try:
        pools = storage.StoragePoolServiceStub(channel)
        nodes = compute.NodeServiceStub(channel)
        node_id, pool = await _setup(channel, hostname="host-u")

        def ls(**fields: object) -> Awaitable[storage.ListPoolFilesResponse]:
            request = storage.ListPoolFilesRequest(**fields)  # type: ignore[arg-type]
            return pools.list_pool_files(request, timeout=TIMEOUT)

        await expect_error(ls(), Status.INVALID_ARGUMENT, "pool_id")
        await expect_error(ls(pool_id="nope"), Status.NOT_FOUND, "pool_id")
        await expect_error(ls(pool_id=pool.id, path="a/../b"), Status.INVALID_ARGUMENT, "'..'")
        await expect_error(ls(pool_id=pool.id, path="a\x00"), Status.INVALID_ARGUMENT, "NUL")
        await expect_error(ls(pool_id=pool.id, path="x" * 3801), Status.INVALID_ARGUMENT, "path")
        await expect_error(ls(pool_id=pool.id, page_size=-1), Status.INVALID_ARGUMENT, "page_size")
        await expect_error(
            ls(pool_id=pool.id, page_token="garbage!"), Status.INVALID_ARGUMENT, "page_token"
        )
        await expect_error(
            ls(pool_id=pool.id, page_token=paging.encode_token("no-separator")),
            Status.INVALID_ARGUMENT,
            "page_token",
        )
        # Registered, assigned, but it never reported: nobody to ask.
        none = await expect_error(ls(pool_id=pool.id), Status.FAILED_PRECONDITION, "pool_id")
        assert "host-u: not reported" in (none.message or "")
        # An upstream agent heartbeats by unary UpdateHeartbeat: it has no stream, so its
        # NodeDaemonService is dialled; nobody listens there.
        await nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node_id, storage_pools=[report(pool.id)]),
            timeout=TIMEOUT,
        )
        await _row(first, pool.id, node_id, 1)
        first.pool_ops._agent_port = _closed_port()
        await expect_error(
            ls(pool_id=pool.id),
            Status.UNAVAILABLE,
            f"cannot reach host host-u's agent at 127.0.0.1:{first.pool_ops._agent_port}",
        )
        # ReconnectPool: a HEALTHY host is left alone.
        same = await pools.reconnect_pool(storage.ReconnectPoolRequest(id=pool.id))
        assert same.id == pool.id
        await expect_error(
            pools.reconnect_pool(storage.ReconnectPoolRequest()), Status.INVALID_ARGUMENT, "id"
        )
        lonely = await pools.create_pool(create_request("lonely"), timeout=TIMEOUT)
        await expect_error(
            pools.reconnect_pool(storage.ReconnectPoolRequest(id=lonely.id)),
            Status.FAILED_PRECONDITION,
            "assigned to no host",
        )
    finally:
        channel.close()


async def test_reconnect_pool_is_pushed_on_the_stream_of_each_unhealthy_host(
    replicas: tuple[Controller, Controller],
) -> None:
    first, second = replicas
    ch1 = grpclib.client.Channel("127.0.0.1", first.port)
    ch2 = grpclib.client.Channel("127.0.0.1", second.port)
    try:
        node_id, pool = await _setup(ch1, hostname="host-r")
        async with host_stream(ch1, node_id, pool.id, health=3) as stream:  # ERROR
            await _row(second, pool.id, node_id, 3)
            # Through the other replica: relayed to r1, which pushes it on the stream.
            relayed = await storage.StoragePoolServiceStub(ch2).reconnect_pool(
                storage.ReconnectPoolRequest(id=pool.id), timeout=TIMEOUT
            )
            assert relayed.id == pool.id
            assert (await _request(stream)).reattach_pool_ids == [pool.id]
            returned = await storage.StoragePoolServiceStub(ch1).reconnect_pool(
                storage.ReconnectPoolRequest(id=pool.id), timeout=TIMEOUT
            )
            assert returned.id == pool.id
            pushed = await _request(stream)
            assert pushed.reattach_pool_ids == [pool.id]
            assert (pushed.acknowledged, pushed.sequence, pushed.list_files) == (False, 0, None)
    finally:
        ch1.close()
        ch2.close()


async def test_an_upstream_agent_is_asked_on_its_node_daemon_service(
    replicas: tuple[Controller, Controller],
) -> None:
    first, _ = replicas
    agent = Agent()
    server = grpclib.server.Server([agent])
    await server.start("127.0.0.1", 0)
    channel = grpclib.client.Channel("127.0.0.1", first.port)
    try:
        first.pool_ops._agent_port = server._server.sockets[0].getsockname()[1]
        first.pool_ops._agent_max_bytes = AGENT_ANSWER_BOUND
        pools = storage.StoragePoolServiceStub(channel)
        nodes = compute.NodeServiceStub(channel)
        node = await nodes.register_node(
            register_request("agent-1", ip="127.0.0.1:9090"), timeout=TIMEOUT
        )
        pool = await pools.create_pool(create_request("agent-pool", nodes=[node.id]))
        await nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node.id, storage_pools=[report(pool.id)]),
            timeout=TIMEOUT,
        )
        await _row(first, pool.id, node.id, 1)

        def ls(**fields: object) -> Awaitable[storage.ListPoolFilesResponse]:
            request = storage.ListPoolFilesRequest(pool_id=pool.id, **fields)  # type: ignore[arg-type]
            return pools.list_pool_files(request, timeout=TIMEOUT)

        first_page = await ls(path="/", page_size=3)
        assert [e.name for e in first_page.entries] == ["Alpha", "a.raw", "beta.qcow2"]
        assert agent.asked == [(pool.id, "")]
        rest = await ls(path="/", page_token=first_page.next_page_token)
        assert [e.name for e in rest.entries] == ["zeta.iso"] and rest.next_page_token == ""
        await expect_error(
            ls(path="missing"), Status.NOT_FOUND, "host agent-1: 'Path not found: missing'"
        )
        await expect_error(ls(path="huge"), Status.UNAVAILABLE, "invalid listing", "name")
        # Refused at the answer's prefix: its body is never buffered.
        await expect_error(
            ls(path="oversized"),
            Status.FAILED_PRECONDITION,
            "host agent-1's agent answered too much",
            f"over the limit of {AGENT_ANSWER_BOUND} bytes",
            "list a subdirectory",
        )
        assert (await ls(path="/")).entries[0].name == "Alpha"  # the agent is still asked
    finally:
        channel.close()
        server.close()
        await server.wait_closed()


async def test_a_relay_to_a_replica_that_does_not_answer_is_bounded(
    replicas: tuple[Controller, Controller],
) -> None:
    first, _ = replicas
    question = compute.ListFilesRequest(pool_id="p")
    started = asyncio.get_running_loop().time()
    with pytest.raises(errors.DeadlineExceeded) as caught:
        await first.forwarder.list_files("ghost", "n1", question, timeout=0.2, host="h1")
    assert "replica ghost, which holds host h1's heartbeat stream, did not answer" in str(
        caught.value
    )
    assert asyncio.get_running_loop().time() - started < 5
    assert not await first.forwarder.reattach("ghost", "n1", ["p"], timeout=0.2, host="h1")
    # Nothing is left behind: the call's keys went with its lease.
    kvs, _ = await first.forwarder.store.get_prefix("")
    assert kvs == []


async def test_the_relay_answers_what_it_can_and_ignores_garbage(
    replicas: tuple[Controller, Controller],
) -> None:
    first, _ = replicas
    relay = first.forwarder
    # Through etcd to itself: the host has no stream here, and that is the answer.
    with pytest.raises(errors.Unavailable) as caught:
        await relay.list_files(
            "r1", "n-x", compute.ListFilesRequest(pool_id="p"), timeout=1.0, host="hx"
        )
    assert str(caught.value) == "host hx has no heartbeat stream open on this replica"
    assert not await relay.reattach("r1", "n-x", ["p"], timeout=1.0, host="hx")
    served = relay.served

    lease = await relay.store.grant_lease(30)
    try:
        await relay.store.put("ask/r1/garbage", b"{not json", lease=lease.id)
        await relay.store.put(
            "ask/r1/odd",
            json.dumps(
                {"kind": "dance", "node": "n", "host": "h", "lease": lease.id, "timeout": 1}
            ).encode(),
            lease=lease.id,
        )

        async def answered() -> list[str]:
            kvs, _ = await relay.store.get_prefix("answer/")
            return [kv.key for kv in kvs]

        # The relay counts after its answer's put returns, a moment after etcd has it.
        await eventually(
            answered,
            lambda keys: keys == ["answer/odd"] and relay.served > served,
            what="one answer",
        )
        answer = await relay.store.get("answer/odd")
        assert answer is not None
        assert json.loads(answer.value) == {
            "error": "UNAVAILABLE",
            "message": "unknown call kind 'dance'",
        }
        assert relay.served == served + 1  # the garbage was not answered
    finally:
        await relay.store.revoke_lease(lease)
