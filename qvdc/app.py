"""Composition root of a QvDC replica.

Builds the store, the watch-fed view, the engines and the grpclib server, and
runs the root loops as named, guarded tasks in one ``asyncio.TaskGroup``: if
any of them ends, the replica shuts down cleanly instead of running
half-broken (kopf's ``run_tasks``). SIGTERM/SIGINT close the server and wait
for it (grpclib's graceful exit), then the tasks are cancelled and the store
and embedded etcd are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import cast

from grpclib.server import Server

from qvdc.api import convert
from qvdc.api.node_service import NodeService
from qvdc.api.pool_service import StoragePoolService
from qvdc.engines.aggregator import Aggregator
from qvdc.engines.catalog import Catalog
from qvdc.engines.committer import GroupCommitter
from qvdc.engines.election import Election
from qvdc.engines.intake import HeartbeatIntake
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.push import PushHub
from qvdc.engines.view import ClusterView
from qvdc.kits.tasks import cancel_and_wait, create_guarded_task
from qvdc.kits.timing import Clock, SystemClock
from qvdc.settings import ControllerSettings
from qvdc.store.embedded import EmbeddedEtcd
from qvdc.store.etcd import EtcdStore

log = logging.getLogger(__name__)

#: Seconds a replica may spend listing the keyspace at start-up before it
#: serves. Generous on purpose: at 100,000 hosts x 8 pools the listing of about
#: a million keys took longer than 30 s on a loaded 2-core machine.
READY_TIMEOUT = 600.0


class Controller:
    """One replica's engines and gRPC services around a connected store."""

    def __init__(
        self, *, store: EtcdStore, settings: ControllerSettings, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"
        timeout = settings.etcd.timeout
        self.store = store
        self.view = ClusterView(store=store)
        self.committer = GroupCommitter(
            store=store,
            delay=settings.heartbeat.commit_delay,
            max_ops=settings.heartbeat.commit_max_ops,
            timeout=timeout,
            coalesce=not settings.naive,  # the naive baseline writes every report, as upstream
        )
        self.monitor = LivenessMonitor(
            store=store,
            view=self.view,
            clock=self.clock,
            replica_id=self.replica_id,
            grace=settings.grace,
            startup_grace=settings.startup_grace,
            check_period=settings.check_period,
            mass_outage_fraction=settings.monitor.mass_outage_fraction,
            timeout=timeout,
        )
        self.intake = HeartbeatIntake(
            view=self.view,
            committer=self.committer,
            monitor=self.monitor,
            settings=settings.heartbeat,
            clock=self.clock,
            naive=settings.naive,
        )
        self.aggregator = Aggregator(store=store, view=self.view, clock=self.clock, timeout=timeout)
        self.hub = PushHub(view=self.view)
        self.catalog = Catalog(
            store=store, view=self.view, monitor=self.monitor, clock=self.clock, timeout=timeout
        )
        self.election = Election(
            store=store, view=self.view, replica_id=self.replica_id, timeout=timeout
        )
        self.pool_service = StoragePoolService(
            catalog=self.catalog, view=self.view, clock=self.clock
        )
        self.node_service = NodeService(
            catalog=self.catalog,
            view=self.view,
            intake=self.intake,
            monitor=self.monitor,
            hub=self.hub,
            pools=self.pool_service.messages,
            clock=self.clock,
            interval=settings.heartbeat.interval,
        )
        self.server = Server([self.node_service, self.pool_service], codec=convert.server_codec())
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0

    def _on_lead_change(self, leading: bool) -> None:
        self.monitor.leader = leading

    async def start(self) -> None:
        """Start the loops, wait until the view is loaded, then listen."""
        spawn = [
            (self.view.run(), "view"),
            (self.committer.run(), "host-status-committer"),
            (self.monitor.run(), "liveness-monitor"),
            (
                self.election.run(lead=self.aggregator.run, on_lead_change=self._on_lead_change),
                "election",
            ),
        ]
        self._tasks = [create_guarded_task(c, name=n, logger=log) for c, n in spawn]
        await self.view.wait_ready(timeout=READY_TIMEOUT)
        grpc = self.settings.grpc
        await self.server.start(grpc.host, grpc.port)
        # grpclib has no public accessor for the bound port (needed with port 0).
        listener = cast("asyncio.Server | None", self.server._server)
        sockets = listener.sockets if listener is not None else ()
        self.port = int(sockets[0].getsockname()[1]) if sockets else grpc.port
        log.info("QvDC replica %s serving on %s:%d", self.replica_id, grpc.host, self.port)

    async def wait_failed(self) -> None:
        """Return (or raise) as soon as any root task ends."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()

    async def stop(self) -> None:
        self.server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.server.wait_closed()
        await cancel_and_wait(*self._tasks)
        self._tasks = []


@contextlib.asynccontextmanager
async def running_store(settings: ControllerSettings) -> AsyncIterator[EtcdStore]:
    """Connect to the configured etcd, or start the embedded one when none is configured."""
    async with contextlib.AsyncExitStack() as stack:
        etcd_settings = settings.etcd
        if not etcd_settings.endpoints:
            data_dir = etcd_settings.embedded_data_dir or settings.state_dir / "etcd"
            embedded = await stack.enter_async_context(
                EmbeddedEtcd(data_dir=data_dir, settings=etcd_settings)
            )
            etcd_settings = dataclasses.replace(etcd_settings, endpoints=(embedded.endpoint,))
            log.info("embedded etcd at %s (data in %s)", embedded.endpoint, data_dir)
        store = await EtcdStore.connect(settings=etcd_settings)
        stack.push_async_callback(store.close)
        yield store


async def main(settings: ControllerSettings) -> None:
    """Run one replica until SIGTERM/SIGINT or a root task fails."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_store(settings) as store:
        controller = Controller(store=store, settings=settings)
        await controller.start()
        failed = asyncio.create_task(controller.wait_failed(), name="watch-root-tasks")
        stopping = asyncio.create_task(stop.wait(), name="wait-for-signal")
        try:
            await asyncio.wait({failed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            log.info("QvDC replica %s stopping", controller.replica_id)
            await cancel_and_wait(failed, stopping)
            await controller.stop()
