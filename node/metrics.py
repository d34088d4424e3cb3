"""Prometheus metrics of the node daemon, and the small listener that serves them.

What is counted already (``HeartbeatStats``, the pool manager's last reports) is read
when Prometheus scrapes, by :class:`NodeCollector`; only probes are observed as they
happen (:meth:`NodeMetrics.observe_probe`, the ``Prober``'s ``on_probe``), one
histogram observation per probe, with each backend's label children bound once.
Each :class:`NodeMetrics` has its own registry, so daemons run side by side in one
process (the tests) report their own numbers.

The listener (``metrics_listen``, off by default) is a plain asyncio server that
answers ``GET /metrics`` and nothing else: one request per connection, the request
head bounded in size (16 KiB) and time (``read_timeout``), ``Connection: close``. It
runs in the daemon's event loop, so it never holds the shutdown up: :meth:`close`
stops listening and cancels the requests in progress. It serves no secret (counts,
durations, pool ids); bind it to loopback or a management network (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import Counter as PromCounter

from node import heartbeat
from storage_backends import base

#: Buckets of the probe duration (seconds): a local directory answers in milliseconds,
#: a network backend in tens of them; the default probe timeout is 2 s.
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)

#: The longest request head the listener reads.
MAX_REQUEST_HEAD = 16 * 1024


class NodeCollector:
    """Heartbeats, streams and pools, read from the daemon at scrape time."""

    def __init__(
        self,
        *,
        stats: heartbeat.HeartbeatStats,
        connected: Callable[[], bool],
        reports: Callable[[], Mapping[str, base.PoolInfo]],
    ) -> None:
        self._stats = stats
        self._connected = connected
        self._reports = reports

    def collect(self) -> Iterable[Metric]:
        stats = self._stats
        for name, value, meaning in (
            ("heartbeats_sent", stats.sent, "Heartbeats sent to the controller."),
            (
                "heartbeats_acknowledged",
                stats.acknowledged,
                "Heartbeats the controller acknowledged.",
            ),
            (
                "stream_connects",
                stats.sessions,
                "Heartbeat streams opened to a controller (the first and every reconnection).",
            ),
            (
                "heartbeat_failures",
                stats.failures,
                "Heartbeat attempts that failed (controller unreachable, stream broken, refused).",
            ),
            ("registrations", stats.registrations, "Registrations with the controller."),
        ):
            yield CounterMetricFamily(f"qvdc_node_{name}", meaning, value=value)
        yield GaugeMetricFamily(
            "qvdc_node_connected",
            "1 while a heartbeat stream to a controller is open and working, else 0.",
            value=1 if self._connected() else 0,
        )
        health: Counter[str] = Counter({h.name: 0 for h in base.PoolHealth})
        for info in self._reports().values():
            health[info.health.name] += 1
        family = GaugeMetricFamily(
            "qvdc_node_pools",
            "Pools this node holds or wants, by the health of their last probe.",
            labels=["health"],
        )
        for name, count in sorted(health.items()):
            family.add_metric([name], count)
        yield family


class NodeMetrics:
    """The daemon's registry: probe metrics, and :class:`NodeCollector` once wired."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._durations = Histogram(
            "qvdc_node_probe_duration_seconds",
            "Seconds one pool probe took, by backend kind (timed-out probes included, at "
            "the time they were given up).",
            labelnames=["backend"],
            buckets=PROBE_BUCKETS,
            registry=self.registry,
        )
        self._failures = PromCounter(
            "qvdc_node_probe_failures",
            "Pool probes that failed, by backend kind: the backend raised, timed out, or "
            "reported the pool ERROR.",
            labelnames=["backend"],
            registry=self.registry,
        )
        # backend kind -> (duration child, failure child): label look-ups once per kind.
        self._children: dict[str, tuple[Histogram, PromCounter]] = {}

    def watch(
        self,
        *,
        stats: heartbeat.HeartbeatStats,
        connected: Callable[[], bool],
        reports: Callable[[], Mapping[str, base.PoolInfo]],
    ) -> None:
        """Register the collector reading the daemon at scrape time."""
        self.registry.register(NodeCollector(stats=stats, connected=connected, reports=reports))

    def observe_probe(self, kind: str, seconds: float, failed: bool) -> None:
        """One probe of a ``kind`` pool took ``seconds``; ``failed``: see the failure help."""
        children = self._children.get(kind)
        if children is None:
            children = (self._durations.labels(kind), self._failures.labels(kind))
            self._children[kind] = children
        children[0].observe(max(0.0, seconds))
        if failed:
            children[1].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` on ``host:port`` (module docstring). ``start()``, then ``close()``."""

    def __init__(
        self,
        *,
        metrics: NodeMetrics,
        host: str,
        port: int,
        logger: logging.Logger,
        read_timeout: float = 10.0,
    ) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._logger = logger
        self._read_timeout = read_timeout
        self._listener: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        #: The bound port (0 until started).
        self.port = 0

    async def start(self) -> None:
        """Listen (raises OSError if the address cannot be bound)."""
        self._listener = await asyncio.start_server(
            self._serve, self._host, self._port, limit=MAX_REQUEST_HEAD
        )
        self.port = int(self._listener.sockets[0].getsockname()[1])
        self._logger.info("metrics on http://%s:%d/metrics", self._host, self.port)

    async def close(self) -> None:
        """Stop listening; cancel requests in progress and wait for them (bounded)."""
        server, self._listener = self._listener, None
        if server is None:
            return
        server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=1.0)
        await server.wait_closed()

    def _answer(self, head: bytes) -> tuple[int, bytes, bytes, bool]:
        """``(status, content type, body, head only)`` for a request head."""
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        text = b"text/plain; charset=utf-8"
        if path != "/metrics":
            return 404, text, b"not found; metrics are at /metrics\n", False
        if method not in ("GET", "HEAD"):
            return 405, text, b"GET only\n", False
        return 200, CONTENT_TYPE_LATEST.encode(), self._metrics.render(), method == "HEAD"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            async with asyncio.timeout(self._read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
                status, kind, body, head_only = self._answer(head)
                reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[status]
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\n".encode()
                    + b"Content-Type: "
                    + kind
                    + f"\r\nContent-Length: {len(body)}\r\n".encode()
                    + b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                    + (b"" if head_only else body)
                )
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a slow, truncated, oversized or vanished request: just close it
        finally:
            if task is not None:
                self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
