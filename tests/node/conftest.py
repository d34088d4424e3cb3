"""Fixtures for the node daemon tests.

``controller``: a *scripted* NodeService (a subclass of the generated
``compute.NodeServiceBase``) served by a real grpclib server on 127.0.0.1
with an ephemeral port. It stands in for the controller (written in parallel)
and injects the faults a real controller cannot show on demand: forgetting a
node (NOT_FOUND), withholding acknowledgements, dropping streams, pushing an
unsolicited response at an exact moment, asking for a full sync.

``closed_endpoint``: ``127.0.0.1:<port>`` with nothing listening.

``eventually``: wait (with a deadline) for a condition to hold.

``node_settings``: NodeSettings with test-friendly intervals on ``tmp_path``.

``grpclib_primitives`` (autouse) overrides the root conftest's: the node daemon
never installs ``qvdc.transport.lean_grpclib``, so its tests, the scripted
controller's server included, run on stock grpclib.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpclib.const
import grpclib.server
import pytest
from grpclib.exceptions import GRPCError

from node import app as app_mod
from node import settings as settings_mod
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.transport import lean_grpclib

STREAM_ROUTE = "/limiquantix.compute.v1.NodeService/StreamHeartbeat"


def local_dir_pool(pool_id: str, *, path: str = "", name: str = "") -> storage.StoragePool:
    """A LOCAL_DIR pool definition as the controller sends it."""
    return storage.StoragePool(
        id=pool_id,
        name=name or pool_id,
        spec=storage.StoragePoolSpec(
            backend=storage.StorageBackend(
                type=storage.StorageBackendBackendType.LOCAL_DIR,
                local_dir=storage.LocalDirConfig(path=path),
            )
        ),
    )


@pytest.fixture(autouse=True)
def grpclib_primitives() -> Iterator[None]:
    """grpclib as the node daemon runs it: stock (the lean primitives uninstalled)."""
    lean_grpclib.uninstall()
    yield


class ScriptedController(compute.NodeServiceBase):
    """A NodeService whose behaviour the test sets attribute by attribute."""

    def __init__(self) -> None:
        self.server: grpclib.server.Server | None = None
        self.port = 0
        self.known: set[str] = set()
        self.register_requests: list[compute.RegisterNodeRequest] = []
        self.requests: list[compute.UpdateHeartbeatRequest] = []
        self.unary_requests: list[compute.UpdateHeartbeatRequest] = []
        #: Pools every answer (and push) carries.
        self.assigned: list[storage.StoragePool] = []
        self.interval = 0
        #: One-shot: the next answer asks for a full sync.
        self.full_sync_next = False
        #: While True, heartbeats are received but not answered.
        self.withhold_acks = False
        #: While True, StreamHeartbeat answers UNIMPLEMENTED (an upstream controller).
        self.stream_unimplemented = False
        #: One-shot: the next answer says acknowledged=false.
        self.nack_next = False
        #: When set, RegisterNode fails with this error.
        self.register_error: GRPCError | None = None
        #: Like QvDC: full definitions only in the first answer on a stream and in
        #: pushes; other answers carry only ``assigned_pool_ids``.
        self.definitions_once = False
        #: When set, open streams end after the next request: normally (None) or with this error.
        self.end_streams = False
        self.end_error: GRPCError | None = None
        self.streams_opened = 0
        self._open: dict[int, tuple[grpclib.server.Stream[Any, Any], asyncio.Task[Any]]] = {}
        self.received = asyncio.Condition()

    # -- server lifecycle -----------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        self.server = grpclib.server.Server([self])
        await self.server.start("127.0.0.1", port)
        listener: Any = self.server._server
        self.port = listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- scripting ------------------------------------------------------------------------

    def forget(self) -> None:
        """Forget every node: later heartbeats get NOT_FOUND."""
        self.known.clear()

    def drop_streams(self) -> None:
        """Abort every open heartbeat stream (the connection stays)."""
        for _, task in list(self._open.values()):
            task.cancel()

    @property
    def open_streams(self) -> int:
        return len(self._open)

    async def push(self, **fields: Any) -> None:
        """Send an unsolicited response on every open stream."""
        message = compute.UpdateHeartbeatResponse(
            acknowledged=True,
            unsolicited=True,
            sequence=0,
            assigned_pools=list(self.assigned),
            assigned_pool_ids=[p.id for p in self.assigned],
            **fields,
        )
        for stream, _ in list(self._open.values()):
            await stream.send_message(message)

    def answer(
        self, request: compute.UpdateHeartbeatRequest, *, definitions: bool = True
    ) -> compute.UpdateHeartbeatResponse:
        full_sync, self.full_sync_next = self.full_sync_next, False
        nack, self.nack_next = self.nack_next, False
        return compute.UpdateHeartbeatResponse(
            acknowledged=not nack,
            sequence=request.sequence,
            heartbeat_interval_secs=self.interval,
            assigned_pools=list(self.assigned) if definitions else [],
            assigned_pool_ids=[p.id for p in self.assigned],
            request_full_sync=full_sync,
        )

    async def wait_requests(self, count: int, *, within: float = 10.0) -> None:
        """Wait until at least ``count`` stream heartbeats arrived."""
        async with asyncio.timeout(within):
            async with self.received:
                await self.received.wait_for(lambda: len(self.requests) >= count)

    # -- NodeService ----------------------------------------------------------------------

    async def register_node(self, message: compute.RegisterNodeRequest) -> compute.Node:
        self.register_requests.append(message)
        if self.register_error is not None:
            raise self.register_error
        node_id = f"node-{message.hostname}-{len(self.register_requests)}"
        self.known.add(node_id)
        return compute.Node(id=node_id, hostname=message.hostname)

    async def update_heartbeat(
        self, message: compute.UpdateHeartbeatRequest
    ) -> compute.UpdateHeartbeatResponse:
        if message.node_id not in self.known:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"unknown node {message.node_id}")
        self.unary_requests.append(message)
        return self.answer(message)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping = super().__mapping__()
        mapping[STREAM_ROUTE] = grpclib.const.Handler(
            self._stream_heartbeat,
            grpclib.const.Cardinality.STREAM_STREAM,
            compute.UpdateHeartbeatRequest,
            compute.UpdateHeartbeatResponse,
        )
        return mapping

    async def _stream_heartbeat(
        self,
        stream: grpclib.server.Stream[
            compute.UpdateHeartbeatRequest, compute.UpdateHeartbeatResponse
        ],
    ) -> None:
        if self.stream_unimplemented:
            raise GRPCError(grpclib.const.Status.UNIMPLEMENTED, "no StreamHeartbeat here")
        self.streams_opened += 1
        key = self.streams_opened
        task = asyncio.current_task()
        assert task is not None
        self._open[key] = (stream, task)
        answered = 0
        try:
            async for request in stream:
                if request.node_id not in self.known:
                    raise GRPCError(
                        grpclib.const.Status.NOT_FOUND, f"unknown node {request.node_id}"
                    )
                async with self.received:
                    self.requests.append(request)
                    self.received.notify_all()
                if not self.withhold_acks:
                    definitions = not self.definitions_once or answered == 0
                    await stream.send_message(self.answer(request, definitions=definitions))
                    answered += 1
                if self.end_streams:
                    self.end_streams = False
                    if self.end_error is not None:
                        raise self.end_error
                    return
        finally:
            del self._open[key]


@pytest.fixture
async def controller() -> AsyncIterator[ScriptedController]:
    service = ScriptedController()
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
def closed_endpoint() -> str:
    """An endpoint nothing listens on (bound, then closed; the port stays free)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


Eventually = Callable[..., Awaitable[None]]


@pytest.fixture
def eventually() -> Eventually:
    async def wait(
        predicate: Callable[[], bool], *, within: float = 10.0, what: str = "condition"
    ) -> None:
        try:
            async with asyncio.timeout(within):
                while not predicate():  # noqa: ASYNC110 - polling state the test does not own
                    await asyncio.sleep(0.01)
        except TimeoutError:
            raise AssertionError(f"timed out after {within}s waiting for {what}") from None

    return wait


@pytest.fixture
def node_settings(tmp_path: Path) -> Callable[..., settings_mod.NodeSettings]:
    """Builds NodeSettings for ``controllers`` with fast test intervals."""

    def make(*controllers: str, **changes: Any) -> settings_mod.NodeSettings:
        options: dict[str, Any] = {
            "controllers": controllers,
            "hostname": "host-a",
            "state_dir": tmp_path / "state",
            "pools_root": tmp_path / "pools",
            "heartbeat_interval": 0.2,
            "rpc_timeout": 1.0,
            "probe_timeout": 0.3,
            "probe_interval": 0.05,
            "attach_timeout": 2.0,
            "attach_backoff_initial": 0.05,
            "attach_backoff_max": 0.2,
            "reconnect_initial": 0.02,
            "reconnect_max": 0.2,
            "hostfacts_interval": 60.0,
            "libvirt_uri": "test:///default",  # libvirt's test driver: no daemon, fixed facts
        }
        options.update(changes)
        return settings_mod.NodeSettings(**options)

    return make


@pytest.fixture
def pool_def() -> Callable[..., storage.StoragePool]:
    """Builds LOCAL_DIR pool definitions (see :func:`local_dir_pool`)."""
    return local_dir_pool


Stopper = Callable[[], Awaitable[None]]


@pytest.fixture
async def run_app() -> AsyncIterator[Callable[[app_mod.NodeApp], Awaitable[Stopper]]]:
    """Starts NodeApps in the background; returns a stopper; stops leftovers at teardown."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(node: app_mod.NodeApp) -> Stopper:
        stop = asyncio.Event()
        task = asyncio.create_task(node.run(stop=stop), name="node-app")
        running.append((stop, task))
        async with asyncio.timeout(10):
            await node.started.wait()

        async def stopper() -> None:
            stop.set()
            async with asyncio.timeout(10):
                await task

        return stopper

    try:
        yield start
    finally:
        for stop, _ in running:
            stop.set()
        for _, task in running:
            async with asyncio.timeout(10):
                await task


@pytest.fixture
async def spawn_controller() -> AsyncIterator[Callable[..., Awaitable[ScriptedController]]]:
    """Starts extra scripted controllers (optionally on a given port); stops them at teardown."""
    started: list[ScriptedController] = []

    async def spawn(port: int = 0) -> ScriptedController:
        service = ScriptedController()
        await service.start(port)
        started.append(service)
        return service

    try:
        yield spawn
    finally:
        for service in started:
            await service.stop()
