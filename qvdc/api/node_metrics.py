"""GetNodeMetrics and StreamNodeMetrics: a node's figures from its own heartbeats.

What a ``NodeMetrics`` holds, and from where:

* ``cpu_usage_percent``, ``load_1m/5m/15m``, ``memory_used_bytes``,
  ``memory_total_bytes`` (``memory_available_bytes`` = total - used) and
  ``vm_running_count``: the node's last heartbeat, as it measured them
  (``qvdc.engines.figures``); memory total falls back to the registration's;
* ``cpu_cores_total``: the registration's CPU threads;
* ``storage_total_bytes`` / ``storage_used_bytes``: the sums over the node's pool rows
  that are HEALTHY or DEGRADED (its last material reports);
* ``cpu_cores_allocated``, ``memory_allocated_bytes``, ``vm_count`` and the network
  counters: 0. This slice does not manage VMs and the heartbeat carries no network
  figures; upstream derived them from VM allocations.

Only current figures are shown. A node that is OFFLINE, or silent past its grace before
the liveness pass marks it, is FAILED_PRECONDITION naming its last heartbeat; one that
has not heartbeated since it registered is FAILED_PRECONDITION too. The figures live on
the replica that receives the node's heartbeats (none are written to etcd per
heartbeat): asked elsewhere, the answer is UNAVAILABLE naming that replica.

StreamNodeMetrics sends the same message at once and then every ``interval_sec``
(0: 2 s; 1 to 3600, else INVALID_ARGUMENT naming ``interval_sec``), and ends with the
GetNodeMetrics status as soon as the figures stop being current.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpclib.server
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from qvdc.api import limits as request_limits
from qvdc.api.errors import guarded, send_timed_out, to_grpc_error
from qvdc.api.rpc_groups import Rpc
from qvdc.domain import errors
from qvdc.domain.limits import Limits
from qvdc.domain.model import Health, NodeId
from qvdc.engines.catalog import Catalog
from qvdc.engines.figures import NodeFigures
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.view import ClusterView
from qvdc.kits.timing import Clock
from qvdc.store import codec

MiB = 1 << 20
DEFAULT_INTERVAL = 2
MAX_INTERVAL = 3600
_COUNTED = (Health.HEALTHY, Health.DEGRADED)
_U64 = 2**64 - 1


class NodeMetricsRpcs:
    """The RPC group (:mod:`qvdc.api.rpc_groups`)."""

    def __init__(
        self,
        *,
        figures: NodeFigures,
        monitor: LivenessMonitor,
        catalog: Catalog,
        view: ClusterView,
        clock: Clock,
        replica_id: str,
        send_timeout: float,
        limits: Limits,
    ) -> None:
        self._figures = figures
        self._monitor = monitor
        self._catalog = catalog
        self._view = view
        self._clock = clock
        self._replica = replica_id
        self._send_timeout = send_timeout
        self._limits = limits

    def rpcs(self) -> Sequence[Rpc]:
        return [
            Rpc(
                "GetNodeMetrics",
                self.get_node_metrics,
                compute.GetNodeMetricsRequest,
                compute.NodeMetrics,
            ),
            Rpc(
                "StreamNodeMetrics",
                self.stream_node_metrics,
                compute.StreamNodeMetricsRequest,
                compute.NodeMetrics,
                Cardinality.UNARY_STREAM,
            ),
        ]

    async def get_node_metrics(self, request: compute.GetNodeMetricsRequest) -> compute.NodeMetrics:
        return await self.metrics(request.id, field="id")

    async def metrics(self, node_id: str, *, field: str) -> compute.NodeMetrics:
        if not node_id:
            raise errors.InvalidArgument("is required", field=field)
        if not self._view.has_node(node_id):
            await self._catalog.catch_up()
        record = self._view.node(node_id)
        if record is None:
            raise errors.NotFound(f"node {node_id!r} not found", field=field)
        return self._current(node_id, record.document, field=field)

    def _current(self, node_id: str, document: Any, *, field: str) -> compute.NodeMetrics:
        state = self._view.node_state(node_id)
        heard = self._monitor.last_heartbeat_wall(node_id)
        last = f"last heartbeat {codec.format_time(heard)}" if heard else "no heartbeat here"
        if state is not None and not state.live:
            raise errors.FailedPrecondition(
                f"node {node_id} is {state.phase.name} and not heartbeating ({last}): "
                "its figures are not current",
                field=field,
            )
        figures = self._figures.latest(node_id)
        if figures is None or heard is None:
            owner = state.owner_replica if state is not None else ""
            if owner and owner != self._replica:
                raise errors.Unavailable(
                    f"node {node_id} heartbeats to replica {owner}; its figures are kept "
                    f"there, not on {self._replica}",
                    field=field,
                )
            raise errors.FailedPrecondition(
                f"node {node_id} has sent no heartbeat to this replica since it registered",
                field=field,
            )
        silent = self._clock.time() - heard
        if not self._monitor.is_live(node_id) or silent > self._monitor.grace_of(NodeId(node_id)):
            raise errors.FailedPrecondition(
                f"node {node_id} has been silent for {silent:.0f} s ({last}): its figures "
                "are not current",
                field=field,
            )
        spec = (document.get("spec") or {}) if isinstance(document, Mapping) else {}
        cpu = spec.get("cpu") or {}
        threads = _uint(cpu.get("totalThreads")) or (
            _uint(cpu.get("sockets"))
            * _uint(cpu.get("coresPerSocket"))
            * max(1, _uint(cpu.get("threadsPerCore")))
        )
        total = figures.memory_total_mib * MiB or _uint(
            (spec.get("memory") or {}).get("totalBytes")
        )
        total = min(total, _U64)
        used = min(figures.memory_used_mib * MiB, total)
        storage_total = storage_used = 0
        for row in self._view.rows_of(node_id).values():
            if row is not None and row.report.health in _COUNTED:
                storage_total += row.report.total_bytes
                storage_used += row.report.used_bytes
        return compute.NodeMetrics(
            node_id=node_id,
            cpu_usage_percent=figures.cpu_usage_percent,
            cpu_cores_total=min(threads, 2**32 - 1),
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_available_bytes=max(0, total - used),
            storage_total_bytes=min(storage_total, _U64),
            storage_used_bytes=min(storage_used, _U64),
            vm_running_count=figures.running_vm_count,
            load_1m=figures.load_1m,
            load_5m=figures.load_5m,
            load_15m=figures.load_15m,
        )

    async def stream_node_metrics(
        self, stream: grpclib.server.Stream[compute.StreamNodeMetricsRequest, compute.NodeMetrics]
    ) -> None:
        request = await stream.recv_message()
        if request is None:
            raise GRPCError(Status.INVALID_ARGUMENT, "empty request stream")

        async def first() -> tuple[float, compute.NodeMetrics]:
            request_limits.check(request, self._limits)
            interval = request.interval_sec or DEFAULT_INTERVAL
            if interval > MAX_INTERVAL:
                raise errors.InvalidArgument(
                    f"must be 1 to {MAX_INTERVAL} seconds (0: {DEFAULT_INTERVAL}), "
                    f"got {request.interval_sec}",
                    field="interval_sec",
                )
            return float(interval), await self.metrics(request.node_id, field="node_id")

        interval, message = await guarded("StreamNodeMetrics", first)
        while True:
            try:
                async with asyncio.timeout(self._send_timeout):
                    await stream.send_message(message)
            except TimeoutError:
                raise to_grpc_error(
                    send_timed_out(self._send_timeout), method="StreamNodeMetrics"
                ) from None
            await asyncio.sleep(interval)
            message = await guarded(
                "StreamNodeMetrics",
                lambda: self.metrics(request.node_id, field="node_id"),
            )


def _uint(value: Any) -> int:
    """A registration figure (protobuf JSON writes 64-bit integers as strings)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0
