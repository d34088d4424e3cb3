"""Composition root of the node daemon: settings in, running daemon out.

Wiring (nothing else in the package builds its own collaborators)::

    NodeSettings
      -> StateStore (<state_dir>/assignments.json, node-id)
      -> backends, one per kind, from storage_backends.registry (lazily)
      -> PoolManager (reconciler)  --on_change-->  Heartbeater.wakeup
      -> Prober (bounded concurrent probes, feeds PoolManager.record_probe)
      -> HostFactsCollector (libvirt, refreshed in the background)
      -> ControllerClient (grpclib, endpoint failover)
      -> Heartbeater (registration, heartbeat stream, deltas, pushes)

Start-up order matters for the restart case: the persisted assignments are
loaded *before* anything talks to the controller, so the reconciler
re-attaches this host's pools even while every controller is unreachable.

Runtime: four named root tasks (reconciler, prober, heartbeat, host facts)
run in one ``asyncio.TaskGroup``, each through ``create_guarded_task`` so a
crash is logged with its traceback. If any root task ends - crash, return or
a cancellation the shutdown did not make - the whole daemon stops rather than
running half-broken, and exits 1 (kopf ``run_tasks``);
SIGTERM and SIGINT stop it cleanly. No "leaving" heartbeat is sent: the
controller's liveness grace handles a node that went away.

:meth:`NodeApp.status` returns a snapshot (node id, connected endpoint, every
held pool's last report) for tests and operators.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node import client, heartbeat, hostfacts, metrics, pools, probing
from node import settings as settings_mod
from qvdc.kits import tasks
from qvdc.security import certs
from storage_backends import base, registry


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A point-in-time view of the daemon."""

    node_id: str | None
    #: Endpoint of the open, working heartbeat stream; None while disconnected.
    endpoint: str | None
    heartbeat_interval: float
    #: Every pool held or wanted, with its last report.
    pools: Mapping[str, base.PoolInfo]
    desired: tuple[str, ...]
    attached: tuple[str, ...]
    heartbeats_sent: int
    heartbeats_acknowledged: int


def _convert_option(key: str, value: str) -> Any:
    """String option -> constructor value, by the key's suffix."""
    if key.endswith("_command"):
        return tuple(shlex.split(value))
    if key.endswith(("_port", "_count")):
        return int(value)
    if key.endswith(("_timeout", "_threshold", "_floor")):
        return float(value)
    if key.endswith(("_root", "_path", "_dir")):
        return Path(value)
    return value


def backend_options(kind: str, *, settings: settings_mod.NodeSettings) -> dict[str, Any]:
    """Constructor options the node passes to the backend of ``kind``: the
    defaults derived from the node's settings, then ``--backend-option``s."""
    options: dict[str, Any] = {}
    if kind == base.BackendKind.LOCAL_DIR.value:
        options["pools_root"] = settings.pools_root
    elif kind == base.BackendKind.NFS.value:
        options["mount_root"] = settings.pools_root
    elif kind == base.BackendKind.CEPH_RBD.value:
        options["probe_timeout"] = settings.probe_timeout
    for key, value in settings.backend_options.get(kind, {}).items():
        try:
            options[key] = _convert_option(key, value)
        except ValueError as exc:
            raise settings_mod.SettingsError(f"backend option {kind}.{key}: {exc}") from exc
    return options


class RootTaskEnded(RuntimeError):
    """A root task returned, or was cancelled by anything but the shutdown: exit 1."""


class NodeApp:
    """The node daemon. Build it, then ``await run()``; ``status()`` at any time."""

    def __init__(
        self,
        *,
        settings: settings_mod.NodeSettings,
        backend_factory: pools.BackendFactory | None = None,
        channel_factory: client.ChannelFactory | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self._logger = logger or logging.getLogger("node")
        log = self._logger
        self.store = pools.StateStore(
            state_dir=settings.state_dir,
            timeout=settings.attach_timeout,
            logger=log.getChild("state"),
        )
        self.pools = pools.PoolManager(
            backend_factory=backend_factory or self._default_backend,
            store=self.store,
            attach_timeout=settings.attach_timeout,
            backoff_initial=settings.attach_backoff_initial,
            backoff_max=settings.attach_backoff_max,
            resync_interval=settings.resync_interval,
            logger=log.getChild("pools"),
        )
        #: This daemon's Prometheus registry (served when ``metrics_listen`` is set).
        self.metrics = metrics.NodeMetrics()
        self.prober = probing.Prober(
            timeout=settings.probe_timeout,
            logger=log.getChild("probing"),
            on_probe=self.metrics.observe_probe,
        )
        self.facts = hostfacts.HostFactsCollector(
            uri=settings.libvirt_uri,
            timeout=settings.hostfacts_timeout,
            hostname_fallback=settings.hostname,
            logger=log.getChild("hostfacts"),
        )
        client_options: dict[str, Any] = {}
        bootstrap = bootstrap_of(settings)
        if channel_factory is None and settings.tls_ca is not None:
            channel_factory = client.tls_channel_factory(
                ca=settings.tls_ca,
                cert=settings.tls_cert,
                key=settings.tls_key,
                cert_optional=bootstrap is not None,
            )
        if channel_factory is not None:
            client_options["channel_factory"] = channel_factory
        if bootstrap is not None:
            client_options["bootstrap"] = bootstrap
        self.client = client.ControllerClient(
            endpoints=settings.endpoints,
            rpc_timeout=settings.rpc_timeout,
            recreate_after=settings.immediate_retries,
            logger=log.getChild("client"),
            **client_options,
        )
        self.heartbeat = heartbeat.Heartbeater(
            settings=settings,
            client=self.client,
            pools=self.pools,
            facts=self.facts,
            store=self.store,
            logger=log.getChild("heartbeat"),
        )
        self.pools.on_change = self.heartbeat.wakeup.set
        self.metrics.watch(
            stats=self.heartbeat.stats,
            connected=lambda: self.heartbeat.connected_endpoint is not None,
            reports=self.pools.reports,
        )
        self.metrics_server: metrics.MetricsServer | None = None
        if settings.metrics_listen is not None:
            host, port = settings_mod.parse_listen(settings.metrics_listen)
            self.metrics_server = metrics.MetricsServer(
                metrics=self.metrics, host=host, port=port, logger=log.getChild("metrics")
            )
        #: Set once every root task runs (a test hook).
        self.started = asyncio.Event()

    def _default_backend(self, kind: str) -> base.StorageBackend:
        return registry.get_backend(kind, **backend_options(kind, settings=self.settings))

    def status(self) -> NodeStatus:
        """Snapshot of node id, connection and pools."""
        return NodeStatus(
            node_id=self.heartbeat.node_id,
            endpoint=self.heartbeat.connected_endpoint,
            heartbeat_interval=self.heartbeat.interval,
            pools=self.pools.reports(),
            desired=tuple(sorted(self.pools.desired)),
            attached=tuple(sorted(self.pools.attached)),
            heartbeats_sent=self.heartbeat.stats.sent,
            heartbeats_acknowledged=self.heartbeat.stats.acknowledged,
        )

    async def run(self, *, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or a root task ends), then shut down cleanly."""
        stop = stop or asyncio.Event()
        s = self.settings
        self._logger.info(
            "node %s starting: controllers %s, state in %s, pools under %s",
            s.hostname,
            ", ".join(s.controllers),
            s.state_dir,
            s.pools_root,
        )
        # A crash leaves the group with its exception; a root that returned or was
        # cancelled by anything but this shutdown is a failure too (exit 1, so a
        # supervisor restarts the daemon), never a quiet stop.
        early = tasks.RootWatch(stop.set)
        try:
            if self.metrics_server is not None:
                await self.metrics_server.start()
            # Local state first: pools come back even with no controller reachable.
            await self.heartbeat.load()
            await self.pools.load()
            await self.facts.collect()
            async with asyncio.TaskGroup() as group:
                roots = [
                    tasks.create_guarded_task(
                        self.pools.run(), name="reconciler", logger=self._logger, group=group
                    ),
                    tasks.create_guarded_task(
                        self.prober.run(
                            targets=self.pools.probe_targets,
                            record=self.pools.record_probe,
                            interval=s.effective_probe_interval,
                        ),
                        name="prober",
                        logger=self._logger,
                        group=group,
                    ),
                    tasks.create_guarded_task(
                        self.heartbeat.run(), name="heartbeat", logger=self._logger, group=group
                    ),
                    tasks.create_guarded_task(
                        self._refresh_facts(), name="hostfacts", logger=self._logger, group=group
                    ),
                ]
                for root in roots:
                    early.watch(root)
                self.started.set()
                await stop.wait()
                early.stopping = True
                self._logger.info("node %s stopping", s.hostname)
                for root in roots:
                    root.cancel()
            if early.ended_early:
                raise RootTaskEnded(
                    f"root task {', '.join(t.get_name() for t in early.ended_early)} "
                    "ended before the daemon was stopped"
                )
        finally:
            if self.metrics_server is not None:
                await self.metrics_server.close()
            await self.heartbeat.close()
            await self.prober.close()
            self.client.close()
            self._logger.info("node %s stopped", s.hostname)

    async def _refresh_facts(self) -> None:
        while True:
            await asyncio.sleep(self.settings.hostfacts_interval)
            await self.facts.collect()


def bootstrap_of(settings: settings_mod.NodeSettings) -> client.Bootstrap | None:
    """The node's bootstrap token setting, if it has one (settings validated the paths)."""
    if settings.bootstrap_token_file is None:
        return None
    assert settings.tls_cert is not None and settings.tls_key is not None
    return client.Bootstrap(
        token_file=settings.bootstrap_token_file, cert=settings.tls_cert, key=settings.tls_key
    )


async def main(settings: settings_mod.NodeSettings) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code (2: TLS neither
    configured nor refused explicitly with ``insecure``, or its files cannot be loaded)."""
    logger = logging.getLogger("node")
    if not settings.tls_chosen:
        logger.error(
            "no TLS configured: give tls_ca, tls_cert and tls_key (--tls-ca, --tls-cert, "
            "--tls-key; qvdcctl certs issue-node makes them), or plain text explicitly "
            "with --insecure"
        )
        return 2
    if settings.insecure:
        logger.warning(
            "talking to the controller in PLAIN TEXT (--insecure): anyone on the path can "
            "read and forge this node's reports; see docs/security.md"
        )
    channels: client.ChannelFactory | None = None
    bootstrap = bootstrap_of(settings)
    if bootstrap is not None and not bootstrap.certificate_present():
        try:
            bootstrap.token()
        except ValueError as exc:
            logger.error("cannot read the bootstrap token: %s", exc)
            return 2
        logger.warning(
            "no certificate at %s yet: registering with the bootstrap token of %s; "
            "heartbeats start once the certificate is there (qvdcctl certs issue-node %s)",
            bootstrap.cert,
            bootstrap.token_file,
            settings.hostname,
        )
    if settings.tls_ca is not None:
        try:
            channels = client.tls_channel_factory(
                ca=settings.tls_ca,
                cert=settings.tls_cert,
                key=settings.tls_key,
                cert_optional=bootstrap is not None,
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            logger.error("cannot load the TLS files: %s", exc)
            return 2
    if settings.tls_cert is not None and (bootstrap is None or bootstrap.certificate_present()):
        names = certs.dns_names(settings.tls_cert.read_bytes())
        if names != [settings.hostname]:
            logger.error(
                "tls_cert %s names %s, not this node's hostname %r: the controller would "
                "refuse every call (qvdcctl certs issue-node %s)",
                settings.tls_cert,
                names,
                settings.hostname,
                settings.hostname,
            )
            return 2
    daemon = NodeApp(settings=settings, logger=logger, channel_factory=channels)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        logger.info("received %s", signum.name)
        stop.set()

    handled = (signal.SIGTERM, signal.SIGINT)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await daemon.run(stop=stop)
    except Exception as exc:  # a root task crashed (already logged by its guard) or start-up failed
        if isinstance(exc, ExceptionGroup):
            logger.error("node daemon stopped because a task failed (see the traceback above)")
        elif isinstance(exc, RootTaskEnded):
            logger.error("node daemon stopped: %s", exc)
        else:
            logger.exception("node daemon failed")
        return 1
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
    return 0
