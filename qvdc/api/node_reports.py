"""NotifyStorageChange and SyncFullState: the upstream agent's other pool reports.

Both are node RPCs (``auth.NODE_RPCS``: a node reports only for itself, by ``node_id``)
and go through the same intake as heartbeats (``qvdc.engines.intake``), so a report
they carry is compared, written and aggregated exactly like one in a heartbeat, and
counts as a sign of life. An unknown node is NOT_FOUND (it must register first).

**NotifyStorageChange** (node_id, pool, event_type, timestamp_unix): one pool's report,
applied as a delta heartbeat listing only that pool. STORAGE_CHANGE_UNMOUNTED records the
row as UNMOUNTED whatever health the report carries. ``timestamp_unix`` is not used:
times are the controller's own. The ack: ``acknowledged`` true; ``action`` ``applied``,
or ``ignored`` with ``error`` saying why (a pool the controller does not know).

**SyncFullState** (the pool part): ``storage_pools`` applied as a full heartbeat (an
assigned pool left out becomes UNMOUNTED "pool not reported by host"; an unassigned one
the host no longer reports loses its row); ``host_info``'s CPU and memory figures become
the node's latest figures (GetNodeMetrics). ``pools_reconciled``: the reported pools
assigned to the node. ``conflicts`` (resource_type ``storage_pool``): ``missing_on_node``
for an assigned pool not reported, ``missing_in_db`` for a reported pool that is not
assigned to the node or not defined at all. VMs are out of this slice: ``vms`` is
ignored and ``vms_reconciled/discovered/lost`` are 0. ``state_hash`` is not used.
"""

from __future__ import annotations

from collections.abc import Sequence

from protos.limiquantix.compute import v1 as compute
from qvdc.api import auth, convert
from qvdc.api.rpc_groups import Rpc
from qvdc.domain import errors
from qvdc.engines.catalog import Catalog
from qvdc.engines.figures import NodeFigures
from qvdc.engines.intake import HeartbeatIntake
from qvdc.engines.view import ClusterView

MiB = 1 << 20
_Change = compute.StorageChangeEventType
_UNMOUNTED = compute.StoragePoolStatusReportHealthStatus.HEALTH_UNMOUNTED


class NodeReports:
    """The RPC group (:mod:`qvdc.api.rpc_groups`)."""

    def __init__(
        self,
        *,
        intake: HeartbeatIntake,
        figures: NodeFigures,
        catalog: Catalog,
        view: ClusterView,
        policy: auth.Policy | None,
    ) -> None:
        self._intake = intake
        self._figures = figures
        self._catalog = catalog
        self._view = view
        self._policy = policy

    def rpcs(self) -> Sequence[Rpc]:
        return [
            Rpc(
                "NotifyStorageChange",
                self.notify_storage_change,
                compute.StorageChangeNotification,
                compute.StorageChangeAck,
            ),
            Rpc(
                "SyncFullState",
                self.sync_full_state,
                compute.SyncFullStateRequest,
                compute.SyncFullStateResponse,
            ),
        ]

    async def _known_node(self, rpc: str, request: object, node_id: str) -> None:
        if not node_id:
            raise errors.InvalidArgument("is required", field="node_id")
        if not self._view.has_node(node_id):
            await self._catalog.catch_up()
        auth.check_request(self._policy, rpc, request)
        self._intake.require_node(node_id)

    def _resolve(self, ref: str) -> str | None:
        """The id of the pool a report names (by id, or by name as upstream's agent may)."""
        if not ref:
            return None
        if self._view.pool(ref) is not None:
            return ref
        return self._view.pool_id_by_name(ref)

    async def notify_storage_change(
        self, request: compute.StorageChangeNotification
    ) -> compute.StorageChangeAck:
        await self._known_node("NotifyStorageChange", request, request.node_id)
        report = request.pool
        if report is None:
            raise errors.InvalidArgument("is required", field="pool")
        if not report.pool_id:
            raise errors.InvalidArgument("is required", field="pool.pool_id")
        if self._resolve(report.pool_id) is None:
            self._intake.accept(node_id=request.node_id, reports=[], full=False)  # alive
            return compute.StorageChangeAck(
                acknowledged=True,
                action="ignored",
                error=f"pool {report.pool_id!r} is not defined on the controller",
            )
        if request.event_type == _Change.STORAGE_CHANGE_UNMOUNTED:
            report = compute.StoragePoolStatusReport(
                pool_id=report.pool_id,
                health=_UNMOUNTED,
                mount_path=report.mount_path,
                error_message=report.error_message or "unmounted by the host",
            )
        self._intake.accept(
            node_id=request.node_id,
            reports=convert.incoming_reports([report]),
            full=False,
            to_report=convert.report_for_pool,
        )
        return compute.StorageChangeAck(acknowledged=True, action="applied")

    async def sync_full_state(
        self, request: compute.SyncFullStateRequest
    ) -> compute.SyncFullStateResponse:
        node_id = request.node_id
        await self._known_node("SyncFullState", request, node_id)
        self._intake.accept(
            node_id=node_id,
            reports=convert.incoming_reports(request.storage_pools),
            full=True,
            to_report=convert.report_for_pool,
        )
        info = request.host_info
        if info is not None and info.memory_total_bytes:
            figures = self._figures.slot(node_id)
            figures.cpu_usage_percent = info.cpu_usage_percent
            figures.memory_total_mib = info.memory_total_bytes // MiB
            used = max(0, info.memory_total_bytes - info.memory_available_bytes)
            figures.memory_used_mib = used // MiB
        assigned = set(self._intake.assignment(node_id).pool_ids)
        conflicts: list[compute.SyncConflict] = []
        reported: set[str] = set()
        for report in request.storage_pools:
            pool_id = self._resolve(report.pool_id)
            if pool_id is None:
                conflicts.append(
                    _conflict(
                        report.pool_id,
                        "missing_in_db",
                        "not defined on the controller: the report is ignored",
                    )
                )
                continue
            if pool_id in reported:
                continue
            reported.add(pool_id)
            if pool_id not in assigned:
                conflicts.append(
                    _conflict(
                        pool_id,
                        "missing_in_db",
                        "not assigned to this node: its row is kept, not counted in the "
                        "pool's phase or capacity",
                    )
                )
        for pool_id in sorted(assigned - reported):
            conflicts.append(
                _conflict(
                    pool_id,
                    "missing_on_node",
                    "assigned to this node but not reported: its row is UNMOUNTED",
                )
            )
        return compute.SyncFullStateResponse(
            acknowledged=True,
            pools_reconciled=len(reported & assigned),
            conflicts=conflicts,
        )


def _conflict(pool_id: str, kind: str, why: str) -> compute.SyncConflict:
    return compute.SyncConflict(
        resource_type="storage_pool",
        resource_id=pool_id,
        conflict_type=kind,
        message=f"pool {pool_id!r}: {why}",
    )
