"""Composition root of a QvDC replica.

Builds the store, the watch-fed view, the engines and the grpclib server, and
supervises the root loops as the node daemon does (``node.app``): named, guarded
tasks in one ``asyncio.TaskGroup``. :meth:`Controller.run`, stage by stage:

1. the root tasks start: the view (list, then watch), the host-status committer,
   the liveness monitor and the election (which runs the aggregator while leading);
2. once the view has listed the keyspace, the replica binds its socket and serves;
3. it serves until ``stop`` is set or a root task ends;
4. shutdown, in this order: the server closes and waits for its handlers (bounded),
   then the root tasks are cancelled; the committer first writes every pending
   write, bounded by ``HeartbeatSettings.shutdown_flush_timeout``, and logs the
   count of those it could not (``qvdc.engines.committer``).

``stop`` is honoured at every stage: set during the initial listing, the replica
never serves. A root task that ends is a failure even if it returned or was
cancelled by anything but the shutdown (cancellation is never a quiet stop): its guard
logs a crash once, with its traceback; the others are stopped as above; ``run``
raises :class:`RootTaskEnded` (kopf's ``run_tasks``, ``stop`` and ``reraise``).

:func:`main` is the process around it. The first SIGTERM or SIGINT sets ``stop``
(while the embedded etcd starts or etcd is being connected to, it abandons the
start-up); a second one during the shutdown cancels it. Exit codes: 0 stopped by
a signal, 1 failed (a root task ended, or the start-up failed), 3 forced by a
second signal; ``qvdc.__main__`` adds 2 for invalid settings.

The gRPC server pings every connection (``GrpcSettings.keepalive_time``) and
closes those that do not answer, so a host that vanished without closing its
connection does not hold a stream for the kernel's two hours. It also closes a
connection with no call for ``GrpcSettings.idle_timeout``, and refuses a message
over ``GrpcSettings.max_message_bytes`` before reading it (``qvdc.transport.serving``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Coroutine
from importlib import resources
from typing import Any, Protocol

from google.protobuf import descriptor_pb2, descriptor_pool
from grpclib.config import Configuration
from grpclib.health.check import ServiceCheck
from grpclib.health.service import Health
from grpclib.health.v1 import health_pb2
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_pb2

from qvdc import metrics
from qvdc.api import auth, watching
from qvdc.api.forwarding import Forwarder
from qvdc.api.host_requests import HostRequests
from qvdc.api.node_admin import NodeAdmin
from qvdc.api.node_events import NodeEvents
from qvdc.api.node_metrics import NodeMetricsRpcs
from qvdc.api.node_reports import NodeReports
from qvdc.api.node_service import NodeService
from qvdc.api.pool_ops import PoolOps
from qvdc.api.pool_secrets import PoolSecrets
from qvdc.api.pool_service import StoragePoolService
from qvdc.engines.aggregator import Aggregator
from qvdc.engines.catalog import Catalog
from qvdc.engines.committer import GroupCommitter, WriteBuffer
from qvdc.engines.deletion import PoolDeletions
from qvdc.engines.election import Election
from qvdc.engines.events import PoolEvents
from qvdc.engines.eventstore import EventStore
from qvdc.engines.figures import NodeFigures
from qvdc.engines.intake import HeartbeatIntake, MaterialityRule
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.push import PushHub
from qvdc.engines.view import ClusterView
from qvdc.http import connect as connect_face
from qvdc.http import gate, health, status_page
from qvdc.http import server as http_server
from qvdc.http import tls as http_tls
from qvdc.kits import eventlog, materiality
from qvdc.kits.tasks import RootWatch, cancel_and_wait, create_guarded_task, first_of
from qvdc.kits.timing import Clock, SystemClock
from qvdc.security import sealing
from qvdc.settings import ControllerSettings, GrpcSettings, TlsSettings
from qvdc.store.embedded import EmbeddedEtcd
from qvdc.store.etcd import EtcdStore
from qvdc.transport import heartbeat_codec, keepalive, serving, tls

log = logging.getLogger(__name__)

#: Seconds a replica may spend listing the keyspace at start-up before it
#: serves. Generous on purpose: at 100,000 hosts x 8 pools the listing of about
#: a million keys took longer than 30 s on a loaded 2-core machine.
READY_TIMEOUT = 600.0

#: Seconds the gRPC handlers get to finish once the server is closed.
SERVER_CLOSE_TIMEOUT = 5.0

EXIT_STOPPED = 0
EXIT_FAILED = 1
EXIT_FORCED = 3
EXIT_INVALID = 2


class RootTaskEnded(Exception):
    """A root task ended, so the replica stopped (its guard logged a crash's traceback)."""


def server_configuration(settings: GrpcSettings) -> Configuration:
    """grpclib's server keepalive from the settings (``qvdc.transport.keepalive``)."""
    return keepalive.server_configuration(
        keepalive_time=settings.keepalive_time, keepalive_timeout=settings.keepalive_timeout
    )


async def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to the first address ``host`` resolves to, for the server to
    listen on; its port is the one bound (``port`` 0: any free one)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """The descriptors reflection serves: every proto of ours (``protos/descriptors.binpb``,
    written by scripts/gen_protos.sh) and grpclib's health and reflection protos, so a
    reflection client (grpcurl) can describe and call every RPC."""
    data = resources.files("protos").joinpath("descriptors.binpb").read_bytes()
    files = list(descriptor_pb2.FileDescriptorSet.FromString(data).file)
    for grpclib_file in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        grpclib_file.CopyToProto(proto)
        files.append(proto)
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    return pool


class Controller:
    """One replica's engines and gRPC services around a connected store.

    Run it once: ``await run(stop=event)`` (the process), or ``start()`` then
    ``stop()`` (tests). ``write_buffer`` and ``materiality_rule`` replace the
    committer's coalescing and the intake's materiality rule; only the
    benchmark's naive baseline passes them (``benchmarks/heartbeat/naive_server.py``).
    """

    # Declared here: callbacks made before they are built read them later.
    pool_service: StoragePoolService
    node_service: NodeService

    def __init__(
        self,
        *,
        store: EtcdStore,
        settings: ControllerSettings,
        clock: Clock | None = None,
        write_buffer: WriteBuffer | None = None,
        materiality_rule: MaterialityRule = materiality.is_material_change,
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
            flush_timeout=settings.heartbeat.shutdown_flush_timeout,
            buffer=write_buffer,
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
            heartbeat_interval=settings.heartbeat.interval,
            grace_explicit=settings.monitor.grace is not None,
        )
        self.intake = HeartbeatIntake(
            view=self.view,
            committer=self.committer,
            monitor=self.monitor,
            settings=settings.heartbeat,
            clock=self.clock,
            materiality_rule=materiality_rule,
        )
        #: This replica's Prometheus registry (``GET /metrics`` on the HTTP port).
        self.metrics = metrics.ControllerMetrics()
        #: pool.phase and host.health events, once each (a new baseline per leadership term).
        self.pool_events = PoolEvents()
        #: The event history in etcd (ListNodeEvents, StreamEvents), fed by the engines
        #: that make the transitions, each event once.
        self.events = EventStore(
            store=store,
            view=self.view,
            clock=self.clock,
            settings=settings.events,
            replica_id=self.replica_id,
            timeout=timeout,
        )
        self.aggregator = Aggregator(
            store=store,
            view=self.view,
            clock=self.clock,
            timeout=timeout,
            grace=settings.grace,
            interval=settings.heartbeat.interval,
            replica_id=self.replica_id,
            heard_at=self.monitor.last_heartbeat_wall,
            grace_of=self.monitor.grace_of,
            interval_of=self.monitor.told_interval_secs,
            recheck=settings.check_period,
            on_written=self.pool_events,
            on_lag=self.metrics.observe_lag,
        )
        self.hub = PushHub(view=self.view)
        self.metrics.watch(
            store=store,
            view=self.view,
            intake=self.intake,
            committer=self.committer,
            monitor=self.monitor,
            aggregator=self.aggregator,
            hub=self.hub,
            stream_heartbeats=lambda: self.node_service.stream_heartbeats,  # read when scraped
            watch_streams=lambda: self.watches.open_streams,
            events=self.events,
        )
        self.catalog = Catalog(
            store=store,
            view=self.view,
            monitor=self.monitor,
            clock=self.clock,
            timeout=timeout,
            limits=settings.limits,
        )
        self.pool_events.sink = self.events.record
        self.monitor.on_event = self.catalog.on_event = self.events.record
        self.election = Election(
            store=store, view=self.view, replica_id=self.replica_id, timeout=timeout
        )
        #: WatchNode, WatchNodes and WatchPools (qvdc.api.watching), fed by the view.
        self.watches = watching.WatchHub(
            view=self.view,
            catalog=self.catalog,
            heard_at=self.monitor.last_heartbeat_wall,
            pool_messages=lambda: self.pool_service.messages,
            send_timeout=settings.grpc.send_timeout,
            limits=settings.limits,
        )
        #: DeletePool's second half: removes a DELETING pool once its hosts let go (leader).
        self.deletions = PoolDeletions(
            catalog=self.catalog,
            view=self.view,
            clock=self.clock,
            timeout=settings.pools.delete_timeout,
            leading=lambda: self.monitor.leader,
            sink=lambda event: self.pool_events.sink(event) if self.pool_events.sink else None,
        )
        #: Requests to hosts over their heartbeat streams (qvdc.api.host_requests).
        self.host_requests = HostRequests()
        #: The same requests for a host streaming to another replica, relayed through etcd.
        self.forwarder = Forwarder(
            store=store, requests=self.host_requests, replica_id=self.replica_id, timeout=timeout
        )
        #: ListPoolFiles and ReconnectPool (qvdc.api.pool_ops), through those streams.
        self.pool_ops = PoolOps(
            catalog=self.catalog,
            view=self.view,
            messages=lambda: self.pool_service.messages,
            requests=self.host_requests,
            replica_id=self.replica_id,
            limits=settings.limits,
            forwarder=self.forwarder,
        )
        self.pool_service = StoragePoolService(
            groups=[self.pool_ops, self.watches.pool_rpcs()],
            pool_secrets=PoolSecrets(keyring=keyring(settings)),
            catalog=self.catalog,
            view=self.view,
            clock=self.clock,
            send_timeout=settings.grpc.send_timeout,
            limits=settings.limits,
        )
        self.policy = auth.for_view(
            self.view, enabled=settings.auth_enabled, tokens_file=settings.auth.tokens_file
        )
        #: UpdateNode, labels, taints, DrainNode, DecommissionNode (qvdc.api.node_admin).
        self.node_admin = NodeAdmin(
            catalog=self.catalog, view=self.view, monitor=self.monitor, limits=settings.limits
        )
        #: Each node's latest heartbeat figures, on the replica its heartbeats reach.
        self.figures = NodeFigures(view=self.view)
        #: ListNodeEvents/StreamEvents, GetNodeMetrics/StreamNodeMetrics and
        #: NotifyStorageChange/SyncFullState (qvdc.api.node_events, node_metrics, node_reports).
        self.reporting: list[Any] = [
            NodeEvents(
                events=self.events,
                catalog=self.catalog,
                view=self.view,
                send_timeout=settings.grpc.send_timeout,
                limits=settings.limits,
                replica_id=self.replica_id,
            ),
            NodeMetricsRpcs(
                figures=self.figures,
                monitor=self.monitor,
                catalog=self.catalog,
                view=self.view,
                clock=self.clock,
                replica_id=self.replica_id,
                send_timeout=settings.grpc.send_timeout,
                limits=settings.limits,
            ),
            NodeReports(
                intake=self.intake,
                figures=self.figures,
                catalog=self.catalog,
                view=self.view,
                policy=self.policy,
            ),
        ]
        self.node_service = NodeService(
            groups=[self.watches.node_rpcs(), self.node_admin, *self.reporting],
            policy=self.policy,
            host_requests=self.host_requests,
            catalog=self.catalog,
            view=self.view,
            intake=self.intake,
            monitor=self.monitor,
            hub=self.hub,
            pools=self.pool_service.messages,
            figures=self.figures,
            clock=self.clock,
            send_timeout=settings.grpc.send_timeout,
            limits=settings.limits,
        )
        self.readiness = health.Readiness(
            listed=lambda: self.view.cache.ready,
            probe=lambda: store.revision(timeout=timeout),
            timeout=timeout,
        )
        services: list[Any] = [self.node_service, self.pool_service]
        ready = ServiceCheck(self.readiness.ready, check_ttl=1.0, check_timeout=timeout + 1.0)
        self.health = Health({service: [ready] for service in services})
        self.server = serving.Server(
            ServerReflection.extend([*services, self.health], pool=reflection_pool()),
            codec=heartbeat_codec.server_codec(max_message_bytes=settings.grpc.max_message_bytes),
            config=server_configuration(settings.grpc),
            idle_timeout=settings.grpc.idle_timeout,
        )
        auth.install(self.server, self.policy)
        #: The bound port (``GrpcSettings.port`` 0 picks a free one); 0 until serving.
        self.port = 0
        self.http: http_server.HttpServer | None = None
        self.gate: gate.Gate | None = None
        #: The read-only status page (``/status`` on the HTTP port).
        self.status_page: status_page.StatusPage | None = None
        if settings.http.enabled:
            #: Each HTTPS connection's client certificate, for the gate (qvdc.http.tls).
            certificates = http_tls.PeerCertificates() if settings.http_tls else None
            self.gate = gate.Gate(
                self.policy,
                view=self.view,
                secure=settings.http_tls,
                agent_networks=gate.parse_networks(settings.http.unauthenticated_node_networks),
                certificate_of=certificates.of if certificates is not None else None,
            )
            connect_app = connect_face.ConnectApp(
                services,
                max_message_bytes=settings.grpc.max_message_bytes,
                grpc_only_hint=f" (port {settings.grpc.port})" if settings.grpc.port else "",
                gate=self.gate,
            )
            self.status_page = status_page.StatusPage(
                view=self.view,
                heard_at=self.monitor.last_heartbeat_wall,
                gate=self.gate,
                replica_id=self.replica_id,
            )
            router = http_server.Router(
                connect_app=connect_app,
                readiness=self.readiness,
                listed=lambda: self.view.cache.ready,
                pages={"/metrics": self.metrics.page, status_page.PREFIX: self.status_page},
            )
            self.http = http_server.HttpServer(
                router,
                keep_alive_timeout=settings.http.keep_alive_timeout,
                close_timeout=settings.http.close_timeout,
                max_connections=settings.http.max_connections,
                read_timeout=settings.http.read_timeout,
                certificates=certificates,
            )
        #: The HTTP server's bound port (``HttpSettings.port`` 0: a free one); 0 until bound.
        self.http_port = 0
        #: The gRPC server's TLS context, reloadable (None: plain text, ``tls.mode`` off).
        self.tls = server_tls(settings.tls)
        #: Set while the server accepts calls.
        self.serving = asyncio.Event()
        self._listening = False
        self._runner: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _on_lead_change(self, leading: bool) -> None:
        self.monitor.leader = leading
        if leading:
            self.pool_events.reset()
        eventlog.event_to(
            self.events.record,
            log,
            "leader.acquired" if leading else "leader.lost",
            "replica %s %s the aggregation leader",
            self.replica_id,
            "is now" if leading else "is no longer",
            replica_id=self.replica_id,
        )

    def _root_loops(self) -> list[tuple[Coroutine[Any, Any, None], str]]:
        return [
            (self.view.run(), "view"),
            (self.committer.run(), "host-status-committer"),
            (self.events.run(), "event-history-writer"),
            (self.monitor.run(), "liveness-monitor"),
            (self.deletions.run(), "pool-deletions"),
            (self.forwarder.serve(), "call-relay"),
            (
                self.election.run(lead=self.aggregator.run, on_lead_change=self._on_lead_change),
                "election",
            ),
            *self._tls_loops(),
        ]

    def _tls_loops(self) -> list[tuple[Coroutine[Any, Any, None], str]]:
        interval = self.settings.tls.reload_interval
        if self.tls is None or interval == 0:
            return []
        return [(self.tls.watch(interval=interval), "tls-reloader")]

    def reload_tls(self, *, reason: str) -> bool:
        """Load the TLS files again for new connections (SIGHUP); established ones keep
        theirs. False (logged) if they could not be loaded: the old ones stay in use."""
        if self.tls is None:
            log.info("%s: TLS is off, nothing to reload", reason)
            return False
        return self.tls.try_reload(reason=reason)

    async def run(self, *, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then shut down (see the module docstring).

        Raises :class:`RootTaskEnded` if a root task ended first, and what the
        start-up raised (the initial listing timed out, the port is taken).
        """
        roots: list[asyncio.Task[None]] = []
        ended = asyncio.Event()
        early = RootWatch(ended.set)  # a root ending before the shutdown is a failure
        try:
            async with asyncio.TaskGroup() as group:
                for coro, name in self._root_loops():
                    root = create_guarded_task(coro, name=name, logger=log, group=group)
                    roots.append(early.watch(root))
                try:
                    await self._serve_http()
                    await first_of(
                        self.view.wait_ready(timeout=READY_TIMEOUT), stop.wait(), ended.wait()
                    )
                    if not (stop.is_set() or ended.is_set()):
                        await self._serve()
                        await first_of(stop.wait(), ended.wait())
                finally:
                    early.stopping = True
                    log.info("QvDC replica %s stopping", self.replica_id)
                    await self.watches.close()  # watch streams end UNAVAILABLE: clients re-watch
                    await self._close_server()
                    await self._close_http()
                    for root in roots:
                        root.cancel()
        except BaseExceptionGroup as errors:
            failed = [
                t.get_name() for t in roots if t.done() and not t.cancelled() and t.exception()
            ]
            if failed:
                raise RootTaskEnded(f"root task {', '.join(failed)} crashed") from errors
            if len(errors.exceptions) == 1:  # the start-up's own error, unwrapped
                raise errors.exceptions[0] from None
            raise
        ended_badly = [
            f"{t.get_name()} {'was cancelled unrequested' if t.cancelled() else 'returned'}"
            for t in roots
            if t in early.ended_early or not t.cancelled()  # not cancelled: it swallowed ours
        ]
        if ended_badly:
            raise RootTaskEnded(f"root task {', '.join(ended_badly)}")

    async def _serve(self) -> None:
        grpc = self.settings.grpc
        sock = await bind_socket(grpc.host, grpc.port)
        try:
            await self.server.start(sock=sock, ssl=self.tls.context if self.tls else None)
        except BaseException:
            sock.close()
            raise
        self._listening = True
        self.port = int(sock.getsockname()[1])
        self.serving.set()
        mode = self.settings.tls.effective_mode
        log.info(
            "QvDC replica %s serving on %s:%d (%s)",
            self.replica_id,
            grpc.host,
            self.port,
            {"mtls": "TLS, client certificates required", "tls": "TLS"}.get(mode, "PLAIN TEXT"),
        )
        if mode == "off":
            log.warning(
                "gRPC is PLAIN TEXT (tls.mode off): anyone who can reach %s:%d can act as any "
                "node or operator; see docs/security.md",
                grpc.host,
                self.port,
            )
        auth.announce(self.policy)

    async def _serve_http(self) -> None:
        """Bind and serve the HTTP server (health at once, RPCs once the view is listed)."""
        if self.http is None:
            return
        http = self.settings.http
        sock = await bind_socket(http.host, http.port)
        context = None
        if self.settings.http_tls and self.tls is not None:
            context = http_tls.FollowingContext(self.tls).context
        try:
            await self.http.start(sock=sock, ssl_context=context)
        except BaseException:
            sock.close()
            raise
        self.http_port = int(sock.getsockname()[1])
        log.info(
            "QvDC replica %s serving Connect/HTTP%s on %s:%d",
            self.replica_id,
            "S" if context is not None else " (plain text)",
            http.host,
            self.http_port,
        )
        if self.gate is not None:
            self.gate.announce()

    async def _close_http(self) -> None:
        if self.status_page is not None:
            self.status_page.close()  # its event streams end, so the close need not wait
        if self.http is not None:
            await self.http.close()

    async def _close_server(self) -> None:
        """Stop accepting calls, cancel the running handlers and wait for them (bounded)."""
        if not self._listening:
            return
        self._listening = False
        self.serving.clear()
        self.server.close()
        try:
            async with asyncio.timeout(SERVER_CLOSE_TIMEOUT):
                await self.server.wait_closed()
        except TimeoutError:
            log.warning("gRPC handlers still running %g s after close", SERVER_CLOSE_TIMEOUT)

    async def start(self) -> None:
        """Run the replica in a background task; return once it serves, or raise what
        it failed with before that."""
        if self._runner is not None:
            raise RuntimeError("the replica is already running")
        runner = self._runner = asyncio.create_task(
            self.run(stop=self._stop), name=f"replica-{self.replica_id}"
        )
        serving = asyncio.create_task(self.serving.wait(), name="wait-serving")
        try:
            await asyncio.wait({runner, serving}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled while starting: stop what started
            self._runner = None
            await cancel_and_wait(runner)
            raise
        finally:
            await cancel_and_wait(serving)
        if runner.done():
            self._runner = None
            runner.result()
            raise RuntimeError("the replica stopped before it served")

    async def stop(self) -> None:
        """Stop what :meth:`start` started and wait for the shutdown; raise what the
        replica failed with meanwhile. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stop.set()
        await runner


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


def server_tls(settings: TlsSettings) -> tls.ReloadableServerContext | None:
    """The server's reloadable TLS context from the settings (None: plain text)."""
    if settings.effective_mode == "off":
        return None
    assert settings.cert is not None and settings.key is not None  # TlsSettings checks
    return tls.ReloadableServerContext(
        cert=settings.cert,
        key=settings.key,
        ca=settings.client_ca,
        require_client_cert=settings.require_client_cert,
    )


def keyring(settings: ControllerSettings) -> sealing.Keyring:
    """The keys pool secrets are sealed with (SealError naming a bad key file)."""
    return sealing.Keyring.from_files(
        key_file=settings.secrets.key_file, old_key_files=settings.secrets.old_key_files
    )


def _check_keyring(settings: ControllerSettings) -> bool:
    """Load the secrets keys once before starting, and say what secrets will do."""
    try:
        keys = keyring(settings)
    except sealing.SealError as error:
        log.error("cannot load the secrets key: %s", error)
        return False
    if keys.current is None:
        log.warning(
            "no secrets key configured (secrets.key_file): pools carrying a secret (a CHAP "
            "password) are refused; `qvdcctl secrets new-key FILE` makes one"
        )
    else:
        older = len(keys.key_ids) - 1
        log.info(
            "pool secrets sealed with key %s%s",
            keys.current.id,
            f", opening {older} older key(s) too" if older else "",
        )
    return True


class ControllerFactory(Protocol):
    """Builds the replica around a connected store (``Controller`` itself, by default)."""

    def __call__(self, *, store: EtcdStore, settings: ControllerSettings) -> Controller: ...


async def main(settings: ControllerSettings, *, factory: ControllerFactory = Controller) -> int:
    """Run one replica until SIGTERM/SIGINT or a failure; returns the exit code.
    SIGHUP reloads the TLS certificate, key and client CA for new connections.

    TLS must be chosen (``tls.cert`` or ``tls.mode``, even ``off``): without either, and
    with TLS files that cannot be loaded, it logs why and returns ``EXIT_INVALID``."""
    if not settings.tls.chosen:
        log.error(
            "no TLS configured: give tls.cert, tls.key and tls.client_ca (--tls-cert, "
            "--tls-key, --tls-client-ca; qvdcctl certs init makes a dev set), or plain text "
            "explicitly with tls.mode off (--tls-mode off)"
        )
        return EXIT_INVALID
    try:
        server_tls(settings.tls)
    except (OSError, ssl.SSLError, ValueError) as error:
        log.error("cannot load the TLS certificate %s: %s", settings.tls.cert, error)
        return EXIT_INVALID
    if not _check_keyring(settings):
        return EXIT_INVALID
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    running = asyncio.Event()  # the replica's run() has started: it honours ``stop`` itself
    forced = False

    async def serve() -> None:
        async with running_store(settings) as store:
            controller = factory(store=store, settings=settings)
            controllers.append(controller)
            running.set()
            await controller.run(stop=stop)

    replica = asyncio.create_task(serve(), name="replica")
    controllers: list[Controller] = []

    def on_hangup() -> None:
        if controllers:
            controllers[-1].reload_tls(reason="SIGHUP")
        else:
            log.info("SIGHUP before the replica started: nothing to reload yet")

    def on_signal(signum: signal.Signals) -> None:
        nonlocal forced
        if not stop.is_set():
            log.info("received %s: stopping", signum.name)
            stop.set()
            if not running.is_set():
                replica.cancel()  # starting etcd or connecting to it: abandon the start-up
        else:
            log.warning("received %s while stopping: forcing exit", signum.name)
            forced = True
            replica.cancel()

    handled = (signal.SIGTERM, signal.SIGINT)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await asyncio.wait({replica})
    finally:
        for signum in (*handled, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await cancel_and_wait(replica)  # still running only if main() itself is cancelled
    if replica.cancelled():
        log.info("QvDC replica %s", "stopped (forced)" if forced else "stopped")
        return EXIT_FORCED if forced else EXIT_STOPPED
    exc = replica.exception()
    if exc is None:
        log.info("QvDC replica stopped")
        return EXIT_STOPPED
    if isinstance(exc, RootTaskEnded):
        log.error("QvDC replica stopped: %s (see the traceback above)", exc)
    else:
        log.error("QvDC replica failed", exc_info=exc)
    return EXIT_FAILED
