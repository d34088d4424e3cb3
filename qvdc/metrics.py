"""Prometheus metrics of a QvDC replica, served as ``GET /metrics`` on its HTTP port.

Nothing on the heartbeat path touches a metric object. The engines keep plain integer
counters they already had for tests and the benchmark (``HeartbeatIntake.heartbeats``,
``LivenessMonitor.freezes``, ``EtcdStore.error_counts``, ...), and the collectors here
read them, and the view's pools and nodes, when Prometheus scrapes: a heartbeat costs
the one ``+= 1`` it always cost, with no label look-up and no lock. The one metric
observed as things happen is the aggregation lag histogram, from the aggregator's write
path (``Aggregator(on_lag=...)``), which is the leader's and not per heartbeat.

Each :class:`ControllerMetrics` has its own :class:`CollectorRegistry` (not the
process-wide default one), so several replicas in one process (the tests) each
report their own numbers. Counters start at 0 when the replica starts.

The metric catalogue (names, types, labels and meaning) is in docs/operations.md,
"Metrics"; ``deploy/prometheus/alerts.yml`` alerts on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from qvdc.domain.aggregation import shown_phase
from qvdc.domain.model import NodePhase, PoolPhase
from qvdc.engines.aggregator import Aggregator
from qvdc.engines.committer import GroupCommitter
from qvdc.engines.eventstore import EventStore
from qvdc.engines.intake import HeartbeatIntake
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.push import PushHub
from qvdc.engines.view import ClusterView
from qvdc.http.server import Receive, Send
from qvdc.store import keys
from qvdc.store.etcd import EtcdStore

#: Buckets of the aggregation lag (seconds): a report is normally in its pool's
#: aggregate within tens of milliseconds (commit delay + watch + one pass); seconds
#: mean etcd is slow or the leader is loaded.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class IntakeCollector:
    """Heartbeats and host reports taken by this replica (``HeartbeatIntake`` counters)."""

    def __init__(
        self,
        intake: HeartbeatIntake,
        committer: GroupCommitter,
        streamed: Callable[[], int] = lambda: 0,
    ) -> None:
        self._intake = intake
        self._committer = committer
        self._streamed = streamed

    def collect(self) -> Iterable[Metric]:
        intake = self._intake
        heartbeats = CounterMetricFamily(
            "qvdc_heartbeats_received",
            "Heartbeats accepted from registered nodes, by transport: stream "
            "(StreamHeartbeat) or unary (UpdateHeartbeat over gRPC or Connect).",
            labels=["transport"],
        )
        streamed = self._streamed()
        heartbeats.add_metric(["stream"], streamed)
        heartbeats.add_metric(["unary"], max(0, intake.heartbeats - streamed))
        yield heartbeats
        reports = CounterMetricFamily(
            "qvdc_host_reports",
            "Pool reports in accepted heartbeats, by what was done with them: written "
            "(a material change, queued for etcd), unchanged (skipped: not material), "
            "unknown_pool (names no pool).",
            labels=["result"],
        )
        unchanged = intake.reports_seen - intake.reports_written - intake.unknown_reports
        reports.add_metric(["written"], intake.reports_written)
        reports.add_metric(["unchanged"], max(0, unchanged))
        reports.add_metric(["unknown_pool"], intake.unknown_reports)
        yield reports
        yield CounterMetricFamily(
            "qvdc_host_status_writes",
            "Host-status rows queued for etcd: material reports, plus UNMOUNTED rows for "
            "assigned pools a full heartbeat left out.",
            value=intake.material_changes,
        )
        ops = CounterMetricFamily(
            "qvdc_host_status_ops",
            "Host-status puts and deletes the group committer sent to etcd, by result "
            "(committed, or refused by etcd and replaced by an ERROR row).",
            labels=["result"],
        )
        ops.add_metric(["committed"], self._committer.ops_committed)
        ops.add_metric(["refused"], self._committer.ops_refused)
        yield ops
        yield GaugeMetricFamily(
            "qvdc_host_status_pending_writes",
            "Host-status writes waiting for the group committer.",
            value=self._committer.backlog,
        )


class StreamsCollector:
    """Heartbeat streams on this replica (``PushHub``) and watch streams (``WatchHub``)."""

    def __init__(self, hub: PushHub, watch_streams: Callable[[], int] = lambda: 0) -> None:
        self._hub = hub
        self._watch_streams = watch_streams

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "qvdc_heartbeat_streams_opened",
            "Heartbeat streams opened on this replica (a node's first connection and every "
            "reconnection).",
            value=self._hub.opened,
        )
        yield GaugeMetricFamily(
            "qvdc_heartbeat_streams_open",
            "Heartbeat streams open on this replica now.",
            value=self._hub.open_streams,
        )
        yield GaugeMetricFamily(
            "qvdc_watch_streams_open",
            "WatchPools, WatchNodes and WatchNode calls open on this replica now (refused "
            "over limits.max_watch_streams).",
            value=self._watch_streams(),
        )


class LivenessCollector:
    """The liveness freeze and leadership (``LivenessMonitor``)."""

    def __init__(self, monitor: LivenessMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterable[Metric]:
        monitor = self._monitor
        yield GaugeMetricFamily(
            "qvdc_liveness_frozen",
            "1 while this replica's liveness is frozen (every live node went silent in one "
            "pass: nobody is marked OFFLINE until a heartbeat arrives), else 0.",
            value=1 if monitor.mass_outage else 0,
        )
        yield CounterMetricFamily(
            "qvdc_liveness_freezes",
            "Liveness freezes this replica started (event liveness.frozen).",
            value=monitor.freezes,
        )
        yield GaugeMetricFamily(
            "qvdc_leader",
            "1 while this replica is the aggregation leader, else 0.",
            value=1 if monitor.leader else 0,
        )


class ViewCollector:
    """Pools by phase and nodes by phase, counted from the replica's view at scrape time."""

    def __init__(self, view: ClusterView) -> None:
        self._view = view

    def collect(self) -> Iterable[Metric]:
        view = self._view
        if not view.cache.ready:
            return  # an empty view would read as "no pools": report nothing instead
        pools: Counter[str] = Counter({phase.name: 0 for phase in PoolPhase})
        for pool in view.pools():
            stored = view.pool_status(pool.id)
            aggregate = stored[0] if stored is not None else None
            pools[shown_phase(aggregate, deleting=pool.deleting).name] += 1
        family = GaugeMetricFamily(
            "qvdc_pools",
            "Pools by phase, as GetPool shows them (PENDING: not aggregated yet).",
            labels=["phase"],
        )
        for name, count in sorted(pools.items()):
            family.add_metric([name], count)
        yield family
        nodes: Counter[str] = Counter({phase.name: 0 for phase in NodePhase})
        stated = 0
        for state in view.node_states():
            nodes[state.phase.name] += 1
            stated += 1
        registered = sum(1 for _ in view.cache.scan(keys.NODES))
        nodes[NodePhase.PENDING.name] += max(0, registered - stated)
        family = GaugeMetricFamily(
            "qvdc_nodes",
            "Registered nodes by phase (PENDING: registered, no liveness state yet).",
            labels=["phase"],
        )
        for name, count in sorted(nodes.items()):
            family.add_metric([name], count)
        yield family


class StoreCollector:
    """Failed etcd calls (``EtcdStore.error_counts``)."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "qvdc_etcd_errors",
            "Failed etcd calls by operation (get, list, put, delete, txn, watch, grant, "
            "refresh, revoke, revision, compact) and kind (timeout, unavailable, compacted, "
            "lease_not_found, too_large, refused), the ones handled inside the store too.",
            labels=["operation", "kind"],
        )
        for (operation, kind), count in sorted(self._counts().items()):
            family.add_metric([operation, kind], count)
        yield family


class AggregatorCollector:
    """The leader's aggregate writes (``Aggregator``)."""

    def __init__(self, aggregator: Aggregator) -> None:
        self._aggregator = aggregator

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "qvdc_pool_aggregates_written",
            "Pool aggregates (poolstatus) this replica wrote while leading.",
            value=self._aggregator.written,
        )


class EventsCollector:
    """The event history (``EventStore``): stored, dropped, waiting, followed."""

    def __init__(self, events: EventStore) -> None:
        self._events = events

    def collect(self) -> Iterable[Metric]:
        events = self._events
        yield CounterMetricFamily(
            "qvdc_events_stored",
            "Events this replica wrote to the event history in etcd.",
            value=events.written,
        )
        yield CounterMetricFamily(
            "qvdc_events_dropped",
            "Events this replica could not keep (its queue full, or etcd did not take them); "
            "they are still in the log.",
            value=events.dropped,
        )
        yield GaugeMetricFamily(
            "qvdc_events_queued",
            "Events waiting to be written to the history.",
            value=events.queued,
        )
        yield GaugeMetricFamily(
            "qvdc_event_streams_open",
            "StreamEvents calls open on this replica now.",
            value=events.subscribers,
        )


class ControllerMetrics:
    """One replica's registry: the lag histogram now, the collectors once the engines
    exist (:meth:`watch`); :meth:`page` serves it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.aggregation_lag = Histogram(
            "qvdc_aggregation_lag_seconds",
            "Seconds from a host report's arrival at a replica (its row's changed_at) to "
            "its pool's aggregate being current in etcd (written, or found unchanged), "
            "observed by the leader.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )

    def observe_lag(self, seconds: float) -> None:
        """``Aggregator(on_lag=...)``: one report's aggregation lag."""
        self.aggregation_lag.observe(max(0.0, seconds))

    def watch(
        self,
        *,
        store: EtcdStore,
        view: ClusterView,
        intake: HeartbeatIntake,
        committer: GroupCommitter,
        monitor: LivenessMonitor,
        aggregator: Aggregator,
        hub: PushHub,
        stream_heartbeats: Callable[[], int] = lambda: 0,
        watch_streams: Callable[[], int] = lambda: 0,
        events: EventStore | None = None,
    ) -> None:
        """Register the collectors reading these engines at scrape time
        (``stream_heartbeats()``: how many of the intake's heartbeats came on streams;
        ``watch_streams()``: how many watch calls are open)."""
        for collector in (
            IntakeCollector(intake, committer, stream_heartbeats),
            StreamsCollector(hub, watch_streams),
            LivenessCollector(monitor),
            ViewCollector(view),
            StoreCollector(lambda: store.error_counts),
            AggregatorCollector(aggregator),
        ):
            self.registry.register(collector)
        if events is not None:
            self.registry.register(EventsCollector(events))

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)

    async def page(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        """``GET /metrics`` (an ASGI handler for ``qvdc.http.server.Router``'s pages)."""
        if scope["method"] not in ("GET", "HEAD"):
            status, body, kind = 405, b"GET only\n", b"text/plain; charset=utf-8"
        else:
            status, body, kind = 200, self.render(), CONTENT_TYPE_LATEST.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", kind),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": body if scope["method"] != "HEAD" else b"",
                "more_body": False,
            }
        )
