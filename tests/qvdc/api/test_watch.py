"""WatchNode, WatchNodes and WatchPools over gRPC against a real replica and etcd: the
initial state, then ADDED / MODIFIED / DELETED as they happen; refusals before streaming;
secrets never shown; bounded streams; no subscription left behind; re-watching through
another replica after one stopped."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import betterproto2
import grpclib.client
import grpclib.const
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.domain.limits import Limits
from qvdc.security import sealing
from qvdc.settings import EtcdSettings, GrpcSettings, SecretsSettings
from qvdc.store import keys
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import (
    controller_settings,
    create_request,
    eventually,
    register_request,
)

SECRET = "Wq9-chap-Secret-4d1e"
Kind = storage.PoolUpdateUpdateType
NodeKind = compute.NodeUpdateUpdateType
STEP = 5.0  # seconds any one expected message may take
#: Nodes registered here never heartbeat and node watches' messages are counted: no node
#: may go OFFLINE mid-test (the shared ``controller`` fixture reads this).
CONTROLLER_GRACE = 60.0


def labelled(name: str, **labels: str) -> storage.CreatePoolRequest:
    request = create_request(name)
    request.labels = dict(labels)
    return request


def iscsi_pool(name: str) -> storage.CreatePoolRequest:
    return storage.CreatePoolRequest(
        name=name,
        labels={"tier": "a"},
        spec=storage.StoragePoolSpec(
            backend=storage.StorageBackend(
                type=storage.StorageBackendBackendType.ISCSI,
                iscsi=storage.IscsiConfig(
                    portal="10.0.0.5:3260",
                    target="iqn.2024-01.com.example:san",
                    lun=1,
                    chap_enabled=True,
                    chap_user="qvdc",
                    chap_password=SECRET,
                ),
            )
        ),
    )


async def settled(controller: Controller, *pool_ids: str) -> None:
    """The new pools' first status is written (else it arrives as an extra MODIFIED)."""

    async def statuses() -> list[object]:
        return [controller.view.pool_status(pool_id) for pool_id in pool_ids]

    await eventually(statuses, lambda found: None not in found, what="the pools' status")


class Watching:
    """An open server stream read in the background into a queue."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.stream:
            await self.messages.put(message)

    async def next(self) -> Any:
        getter = asyncio.ensure_future(self.messages.get())
        done, _ = await asyncio.wait(
            {getter, self.task}, timeout=STEP, return_when="FIRST_COMPLETED"
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.task in done:
            self.task.result()  # raises the stream's error
            raise AssertionError("the stream ended")
        raise AssertionError(f"no message within {STEP} s")

    async def until(self, check: Any) -> Any:
        """The first message ``check`` holds for; the ones before may only be MODIFIED
        (a new pool's status arriving, say), never an ADDED or DELETED."""
        while True:
            message = await self.next()
            if check(message):
                return message
            assert message.type == 1, f"unexpected: {message!r}"

    async def quiet(self, seconds: float = 0.5) -> None:
        """Nothing more arrives for ``seconds``."""
        await asyncio.sleep(seconds)
        assert self.messages.empty(), f"unexpected: {self.messages.get_nowait()!r}"

    async def ended(self) -> BaseException | None:
        """The stream's end: None if OK, else its error."""
        async with asyncio.timeout(STEP):
            try:
                await asyncio.shield(self.task)
            except Exception as exc:  # noqa: BLE001 - returned to be checked
                return exc
        return None

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def watch(channel: grpclib.client.Channel) -> AsyncIterator[Any]:
    opened: list[Watching] = []

    async def start(method: Any, request: betterproto2.Message) -> Watching:
        w = Watching(method(request))
        opened.append(w)
        return w

    yield start
    for w in opened:
        await w.close()


async def test_watch_pools_initial_state_then_changes_filtered_by_labels(
    controller: Controller,
    pools: storage.StoragePoolServiceStub,
    channel: grpclib.client.Channel,
    watch: Any,
) -> None:
    a = await pools.create_pool(iscsi_pool("wa"))
    b = await pools.create_pool(labelled("wb", tier="b"))
    await settled(controller, a.id, b.id)
    stub = storage.StoragePoolServiceStub(channel)
    w = await watch(stub.watch_pools, storage.WatchPoolsRequest(labels={"tier": "a"}))
    first = await w.next()
    assert first.type == Kind.ADDED and first.pool.id == a.id and first.pool.name == "wa"
    # As GetPool shows it: secrets as their marker only, the status there.
    assert first.pool.spec.backend.iscsi.chap_password == ""
    assert first.pool.spec.backend.iscsi.chap_password_set is True
    assert SECRET not in repr(first.pool) and SECRET.encode() not in bytes(first)
    assert first.pool == await pools.get_pool(storage.GetPoolRequest(id=a.id))
    await w.quiet()  # b does not match

    await pools.update_pool(storage.UpdatePoolRequest(id=a.id, description="now"))
    changed = await w.next()
    assert changed.type == Kind.MODIFIED and changed.pool.description == "now"
    c = await pools.create_pool(labelled("wc", tier="a"))
    added = await w.next()
    assert added.type == Kind.ADDED and added.pool.id == c.id
    # b starts matching: ADDED; c stops: DELETED.
    await pools.update_pool(storage.UpdatePoolRequest(id=b.id, labels={"tier": "a"}))
    back = await w.until(lambda u: u.pool.id == b.id)
    assert back.type == Kind.ADDED
    await pools.update_pool(storage.UpdatePoolRequest(id=c.id, labels={"tier": "z"}))
    left = await w.until(lambda u: u.type != Kind.MODIFIED)
    assert left.type == Kind.DELETED and left.pool.id == c.id and left.pool.name == "wc"
    await pools.delete_pool(storage.DeletePoolRequest(id=a.id, force=True))
    gone = await w.until(lambda u: u.type != Kind.MODIFIED)
    assert (gone.type, gone.pool.id, gone.pool.name) == (Kind.DELETED, a.id, "wa")
    await w.quiet()


async def test_watch_one_pool_ends_ok_after_its_deleted(
    controller: Controller, pools: storage.StoragePoolServiceStub, watch: Any
) -> None:
    a = await pools.create_pool(labelled("one"))
    await pools.create_pool(labelled("other"))
    await settled(controller, a.id)
    w = await watch(pools.watch_pools, storage.WatchPoolsRequest(pool_id=a.id))
    assert (await w.next()).pool.id == a.id
    await pools.delete_pool(storage.DeletePoolRequest(id=a.id, force=True))
    last = await w.next()
    assert last.type == Kind.DELETED and last.pool.id == a.id
    assert await w.ended() is None


@pytest.mark.parametrize(
    ("request_", "status", "names"),
    [
        (storage.WatchPoolsRequest(pool_id="nope"), Status.NOT_FOUND, "pool_id"),
        (storage.WatchPoolsRequest(pool_id="x" * 10_000), Status.INVALID_ARGUMENT, "pool_id"),
        (
            storage.WatchPoolsRequest(labels={f"k{i}": "v" for i in range(500)}),
            Status.INVALID_ARGUMENT,
            "labels",
        ),
    ],
)
async def test_watch_pools_refusals(
    pools: storage.StoragePoolServiceStub, request_: Any, status: Status, names: str
) -> None:
    with pytest.raises(GRPCError) as caught:
        async for _ in pools.watch_pools(request_, timeout=STEP):
            pass
    assert caught.value.status == status and names in (caught.value.message or "")


async def test_watch_node_follows_one_node_and_ends_not_found_when_deleted(
    nodes: compute.NodeServiceStub, store: EtcdStore, watch: Any
) -> None:
    node = await nodes.register_node(register_request("wn1"))
    w = await watch(nodes.watch_node, compute.WatchNodeRequest(node_id=node.id))
    now = await w.next()
    assert now.id == node.id and now.hostname == "wn1"
    await nodes.disable_node(compute.DisableNodeRequest(id=node.id, reason="disk swap"))
    disabled = await w.next()
    assert disabled.status.phase == compute.NodeStatusPhase.MAINTENANCE
    await nodes.enable_node(compute.EnableNodeRequest(id=node.id))
    assert (await w.next()).status.phase != compute.NodeStatusPhase.MAINTENANCE
    await store.delete(keys.node(node.id))
    error = await w.ended()
    assert isinstance(error, GRPCError) and error.status == Status.NOT_FOUND
    assert "deleted" in (error.message or "")


@pytest.mark.parametrize(
    ("node_id", "status"),
    [
        ("", Status.INVALID_ARGUMENT),
        ("missing", Status.NOT_FOUND),
        ("y" * 5000, Status.INVALID_ARGUMENT),
    ],
)
async def test_watch_node_refusals(
    nodes: compute.NodeServiceStub, node_id: str, status: Status
) -> None:
    with pytest.raises(GRPCError) as caught:
        async for _ in nodes.watch_node(compute.WatchNodeRequest(node_id=node_id), timeout=STEP):
            pass
    assert caught.value.status == status and "node_id" in (caught.value.message or "")


async def test_an_accepted_watch_answers_its_headers_before_anything_matches(
    channel: grpclib.client.Channel,
) -> None:
    """So a client (and the hostile suite) can tell "established, nothing yet" from a hang."""
    async with channel.request(
        "/limiquantix.compute.v1.NodeService/WatchNodes",
        grpclib.const.Cardinality.UNARY_STREAM,
        compute.WatchNodesRequest,
        compute.NodeUpdate,
        timeout=STEP,
    ) as stream:
        await stream.send_message(compute.WatchNodesRequest(labels={"no": "match"}), end=True)
        async with asyncio.timeout(2):
            await stream.recv_initial_metadata()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await stream.recv_message()
        await stream.cancel()


async def test_watch_nodes_by_labels(
    nodes: compute.NodeServiceStub, store: EtcdStore, watch: Any
) -> None:
    r1 = await nodes.register_node(register_request("wr1"))  # labels rack=r1
    other = register_request("wr2")
    other.labels = {"rack": "r2"}
    await nodes.register_node(other)
    w = await watch(nodes.watch_nodes, compute.WatchNodesRequest(labels={"rack": "r1"}))
    first = await w.next()
    assert (first.type, first.node.id) == (NodeKind.ADDED, r1.id)
    await w.quiet()
    r3 = await nodes.register_node(register_request("wr3"))
    added = await w.next()
    assert (added.type, added.node.hostname) == (NodeKind.ADDED, "wr3")
    await nodes.disable_node(compute.DisableNodeRequest(id=r3.id, reason="x"))
    modified = await w.next()
    assert modified.type == NodeKind.MODIFIED
    assert modified.node.status.phase == compute.NodeStatusPhase.MAINTENANCE
    await store.delete(keys.node(r1.id))
    deleted = await w.next()
    assert (deleted.type, deleted.node.id, deleted.node.hostname) == (
        NodeKind.DELETED,
        r1.id,
        "wr1",
    )


# ------------------------------------------------------------ bounds, coalescing, leaks


class BlockedStream:
    """A grpclib server stream whose client reads only when told (fault injection)."""

    def __init__(self, request: betterproto2.Message) -> None:
        self.request: betterproto2.Message | None = request
        self.sent: list[Any] = []
        self.reading = asyncio.Event()
        self.waiting = asyncio.Event()

    async def recv_message(self) -> Any:
        request, self.request = self.request, None
        return request

    async def send_message(self, message: Any) -> None:
        self.waiting.set()
        await self.reading.wait()
        self.sent.append(message)


async def test_a_burst_of_changes_is_sent_once_as_the_latest(
    controller: Controller, pools: storage.StoragePoolServiceStub
) -> None:
    a = await pools.create_pool(labelled("burst"))
    await settled(controller, a.id)
    stream = BlockedStream(storage.WatchPoolsRequest(pool_id=a.id))
    task = asyncio.create_task(controller.watches.watch_pools(stream))
    try:
        await asyncio.wait_for(stream.waiting.wait(), STEP)  # the initial ADDED, unread
        for i in range(5):
            await pools.update_pool(storage.UpdatePoolRequest(id=a.id, description=f"v{i}"))
        await controller.view.wait_for_revision(
            await controller.view.store.revision(), timeout=STEP
        )
        stream.reading.set()
        await eventually(lambda: asyncio.sleep(0, len(stream.sent)), lambda n: n >= 2)
        await asyncio.sleep(0.3)
        assert [(m.type, m.pool.description) for m in stream.sent] == [
            (Kind.ADDED, ""),
            (Kind.MODIFIED, "v4"),
        ]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert controller.watches.open_streams == 0


@pytest.fixture(params=[30.0])
async def small(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Controller]:
    """A replica with two watch streams, a backlog of two, and ``request.param`` s sends."""
    key_file = tmp_path / "secrets.key"
    sealing.write_new_key(key_file)
    settings = controller_settings(etcd_settings).replace(
        secrets=SecretsSettings(key_file=key_file),
        limits=Limits(max_watch_streams=2, max_watch_backlog=2),
        grpc=GrpcSettings(host="127.0.0.1", port=0, send_timeout=request.param),
    )
    c = Controller(store=store, settings=settings)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def test_a_client_that_falls_behind_is_ended_not_buffered(small: Controller) -> None:
    channel = grpclib.client.Channel("127.0.0.1", small.port)
    pools = storage.StoragePoolServiceStub(channel)
    try:
        await pools.create_pool(labelled("behind-0"))
        stream = BlockedStream(storage.WatchPoolsRequest())
        task = asyncio.create_task(small.watches.watch_pools(stream))
        await asyncio.wait_for(stream.waiting.wait(), STEP)  # stuck sending the first
        for i in range(1, 4):  # three new pools waiting: over the backlog of 2
            await pools.create_pool(labelled(f"behind-{i}"))
        with pytest.raises(GRPCError) as caught:
            await asyncio.wait_for(task, STEP)  # ended at once, not after the send timeout
        assert caught.value.status == Status.RESOURCE_EXHAUSTED
        assert "fell behind" in (caught.value.message or "")
        assert small.watches.open_streams == 0
        # Another watcher was never slowed: it sees every pool at once.
        seen = [u async for u in _first(pools.watch_pools(storage.WatchPoolsRequest()), 4)]
        assert sorted(u.pool.name for u in seen) == [f"behind-{i}" for i in range(4)]
    finally:
        channel.close()


async def _first(stream: Any, n: int) -> AsyncIterator[Any]:
    async with asyncio.timeout(STEP):
        i = 0
        async for message in stream:
            yield message
            i += 1
            if i == n:
                return


@pytest.mark.parametrize("small", [0.5], indirect=True)
async def test_a_send_the_client_does_not_take_ends_the_watch_unavailable(
    small: Controller,
) -> None:
    await small.pool_service.create_pool(labelled("unread"))
    stream = BlockedStream(storage.WatchPoolsRequest())  # never reads
    started = asyncio.get_running_loop().time()
    with pytest.raises(GRPCError) as caught:
        await asyncio.wait_for(small.watches.watch_pools(stream), STEP)
    assert caught.value.status == Status.UNAVAILABLE
    assert "did not read" in (caught.value.message or "")
    assert asyncio.get_running_loop().time() - started < 3  # send_timeout 0.5 s, not STEP
    assert small.watches.open_streams == 0


async def test_a_stopping_replica_ends_watches_and_refuses_new_ones(
    controller: Controller, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("closing"))
    w = Watching(nodes.watch_node(compute.WatchNodeRequest(node_id=node.id)))
    assert (await w.next()).id == node.id
    await controller.watches.close()
    error = await w.ended()
    assert isinstance(error, GRPCError) and error.status == Status.UNAVAILABLE
    with pytest.raises(GRPCError) as caught:
        async for _ in nodes.watch_nodes(compute.WatchNodesRequest(), timeout=STEP):
            pass
    assert caught.value.status == Status.UNAVAILABLE and "re-watch" in (caught.value.message or "")


async def test_watch_streams_are_capped_and_released(small: Controller) -> None:
    channel = grpclib.client.Channel("127.0.0.1", small.port)
    nodes = compute.NodeServiceStub(channel)
    try:
        node = await nodes.register_node(register_request("cap"))
        open_ = [Watching(nodes.watch_nodes(compute.WatchNodesRequest())) for _ in range(2)]
        for w in open_:
            await w.next()
        assert small.watches.open_streams == 2
        with pytest.raises(GRPCError) as caught:
            async for _ in nodes.watch_node(
                compute.WatchNodeRequest(node_id=node.id), timeout=STEP
            ):
                pass
        assert caught.value.status == Status.RESOURCE_EXHAUSTED
        assert "max_watch_streams" in (caught.value.message or "")
        for w in open_:
            await w.close()  # the client cancels: the server drops the subscription
        await eventually(
            lambda: asyncio.sleep(0, small.watches.open_streams), lambda n: n == 0, what="released"
        )
        again = Watching(nodes.watch_node(compute.WatchNodeRequest(node_id=node.id)))
        assert (await again.next()).id == node.id
        await again.close()
    finally:
        channel.close()


# ------------------------------------------------------------ resume through another replica


@pytest.fixture
async def replicas(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> AsyncIterator[tuple[Controller, Controller]]:
    base = controller_settings(etcd_settings)
    first = Controller(store=store, settings=dataclasses.replace(base, replica_id="w1"))
    second_store = await EtcdStore.connect(settings=etcd_settings)
    second = Controller(store=second_store, settings=dataclasses.replace(base, replica_id="w2"))
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        await second.stop()
        await first.stop()
        await second_store.close()


async def test_rewatch_through_another_replica_after_one_stops(
    replicas: tuple[Controller, Controller],
) -> None:
    first, second = replicas
    ch1 = grpclib.client.Channel("127.0.0.1", first.port)
    ch2 = grpclib.client.Channel("127.0.0.1", second.port)
    try:
        pools1, pools2 = storage.StoragePoolServiceStub(ch1), storage.StoragePoolServiceStub(ch2)
        a = await pools2.create_pool(labelled("resume-a"))
        await settled(first, a.id)
        w = Watching(pools1.watch_pools(storage.WatchPoolsRequest()))
        assert (await w.next()).pool.id == a.id
        await pools2.update_pool(storage.UpdatePoolRequest(id=a.id, description="via r2"))
        changed = await w.until(lambda u: u.pool.description == "via r2")  # through the other
        assert changed.type == Kind.MODIFIED
        await first.stop()
        error = await w.ended()
        assert isinstance(error, GRPCError) and error.status == Status.UNAVAILABLE
        assert "re-watch" in (error.message or "")
        b = await pools2.create_pool(labelled("resume-b"))  # while nobody watches
        await settled(second, b.id)
        w2 = Watching(pools2.watch_pools(storage.WatchPoolsRequest()))
        initial = {(await w2.next()).pool.id, (await w2.next()).pool.id}
        assert initial == {a.id, b.id}  # the initial state is the whole truth again
        await pools2.update_pool(storage.UpdatePoolRequest(id=b.id, description="after"))
        changed = await w2.next()
        assert (changed.type, changed.pool.id, changed.pool.description) == (
            Kind.MODIFIED,
            b.id,
            "after",
        )
        await w2.close()
    finally:
        ch1.close()
        ch2.close()
