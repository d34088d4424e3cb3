"""Node administration RPCs of NodeService: UpdateNode, UpdateLabels, AddTaint, RemoveTaint,
DrainNode and DecommissionNode (an RPC group, :mod:`qvdc.api.rpc_groups`).

Each one is an operator change (:mod:`qvdc.api.auth`: operator admins only, node
certificates refused) written to etcd through the catalog with a compare on the record's
mod revision, answered with the node as GetNode then shows it, and written to the audit
log. The rules are pure functions in :mod:`qvdc.domain.node_admin`; what each RPC does
here compared with upstream is in docs/upstream.md ("Node administration").

* **UpdateNode** changes ``spec.scheduling`` (schedulable, taints) and ``spec.role`` by
  its mask (empty mask: every field the request sets). Fields an operator set survive the
  node's re-registration.
* **UpdateLabels** adds and removes labels; **AddTaint** adds a taint or replaces the one
  with its key; **RemoveTaint** of an unknown key is NOT_FOUND naming it.
* **DrainNode** sets the phase DRAINING: the node takes no new pool assignment
  (FAILED_PRECONDITION naming it), keeps the pools it has (nothing is detached), and
  heartbeats never end the phase; EnableNode does. The response carries the node and no
  VM lists (this slice runs no VMs: upstream's "migrated" list migrated nothing).
* **DecommissionNode** is refused while pools are assigned (naming them) unless
  ``force``, which unassigns the node from each first; then the node's keys go (record,
  name, status, host rows), every replica ends its heartbeat stream with NOT_FOUND
  ("node decommissioned", :meth:`qvdc.api.node_service.NodeService`), and registering
  the hostname again makes a new node with a new id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from protos.google import protobuf as pb
from protos.limiquantix.compute import v1 as compute
from qvdc.api import auth, convert
from qvdc.api.rpc_groups import Rpc
from qvdc.domain import errors, node_admin
from qvdc.domain.limits import Limits
from qvdc.domain.node_admin import Taint
from qvdc.engines.catalog import Catalog, Document
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.view import ClusterView


def taints_of(messages: Sequence[compute.Taint]) -> list[Taint]:
    return [Taint(key=t.key, value=t.value, effect=int(t.effect)) for t in messages]


def taint_messages(taints: Sequence[Taint]) -> list[compute.Taint]:
    return [
        compute.Taint(key=t.key, value=t.value, effect=compute.TaintEffect(t.effect))
        for t in taints
    ]


def _scheduling(document: Document) -> compute.SchedulingConfig:
    spec = document.get("spec") or {}
    return compute.SchedulingConfig.from_dict(
        spec.get("scheduling") or {}, ignore_unknown_fields=True
    )


def _with_scheduling(document: Document, scheduling: compute.SchedulingConfig) -> Document:
    spec = dict(document.get("spec") or {})
    spec["scheduling"] = scheduling.to_dict()
    return node_admin.mark_operator_set({**document, "spec": spec}, ["scheduling"])


#: The annotation RegisterNode keeps the agent's ``agent_endpoint`` in (Node has no field
#: for it; upstream dropped it).
AGENT_ENDPOINT_ANNOTATION = "qvdc.io/agent-endpoint"


def check_registration(request: compute.RegisterNodeRequest) -> None:
    """RegisterNode's fields beyond upstream's: taints (as AddTaint's, one per key) and the
    agent endpoint (text without spaces or control characters; its length is bounded by
    :mod:`qvdc.api.limits`)."""
    node_admin.validate_taints(taints_of(request.taints), field="taints")
    endpoint = request.agent_endpoint
    if endpoint and (not endpoint.isprintable() or any(c.isspace() for c in endpoint)):
        raise errors.InvalidArgument(
            "must not contain spaces or control characters", field="agent_endpoint"
        )


def registration_annotations(request: compute.RegisterNodeRequest) -> dict[str, str]:
    """The annotations a registration stores (the agent endpoint, when sent)."""
    if request.agent_endpoint:
        return {AGENT_ENDPOINT_ANNOTATION: request.agent_endpoint}
    return {}


#: Where a node document keeps the host's huge pages. betterproto2's JSON mapping cannot
#: carry ``HugePagesInfo``'s fields (``pages_2mb_total`` becomes ``pages2MbTotal`` on the way
#: out and is unknown on the way back), so the Node JSON would drop them: they are stored
#: here by their proto names and put back by :func:`node_from_document`.
HUGE_PAGES_KEY = "qvdcHugePages"
_HUGE_PAGES_FIELDS = ("pages_2mb_total", "pages_2mb_free", "pages_1gb_total", "pages_1gb_free")


def keep_huge_pages(document: Document, request: compute.RegisterNodeRequest) -> Document:
    """``document`` with the registration's huge pages kept (see :data:`HUGE_PAGES_KEY`)."""
    memory = request.memory_info
    pages = memory.huge_pages if memory is not None else None
    out = {k: v for k, v in document.items() if k != HUGE_PAGES_KEY}
    if pages is not None:
        kept = {name: getattr(pages, name) for name in _HUGE_PAGES_FIELDS if getattr(pages, name)}
        if kept:
            out[HUGE_PAGES_KEY] = kept
    return out


def node_from_document(document: Mapping[str, Any]) -> compute.Node:
    """The ``Node`` a stored document holds (status not filled in), huge pages included."""
    node = compute.Node.from_dict(document, ignore_unknown_fields=True)
    kept = document.get(HUGE_PAGES_KEY)
    if isinstance(kept, Mapping):
        pages = compute.HugePagesInfo(
            **{
                name: int(value)
                for name in _HUGE_PAGES_FIELDS
                if isinstance(value := kept.get(name), int) and not isinstance(value, bool)
            }
        )
        if node.spec is None:
            node.spec = compute.NodeSpec()
        if node.spec.memory is None:
            node.spec.memory = compute.MemoryInfo()
        node.spec.memory.huge_pages = pages
    return node


def _required(value: str, field: str) -> None:
    if not value:
        raise errors.InvalidArgument("required", field=field)


class NodeAdmin:
    """The group: construct in :mod:`qvdc.app`, pass to ``NodeService(groups=[...])``."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        view: ClusterView,
        monitor: LivenessMonitor,
        limits: Limits | None = None,
    ) -> None:
        self._catalog = catalog
        self._view = view
        self._monitor = monitor
        self._limits = Limits() if limits is None else limits

    def rpcs(self) -> Sequence[Rpc]:
        return [
            Rpc("UpdateNode", self.update_node, compute.UpdateNodeRequest, compute.Node),
            Rpc("UpdateLabels", self.update_labels, compute.UpdateLabelsRequest, compute.Node),
            Rpc("AddTaint", self.add_taint, compute.AddTaintRequest, compute.Node),
            Rpc("RemoveTaint", self.remove_taint, compute.RemoveTaintRequest, compute.Node),
            Rpc("DrainNode", self.drain_node, compute.DrainNodeRequest, compute.DrainNodeResponse),
            Rpc(
                "DecommissionNode",
                self.decommission_node,
                compute.DecommissionNodeRequest,
                pb.Empty,
            ),
        ]

    async def _node(self, node_id: str) -> compute.Node:
        document, state = await self._catalog.node(node_id)
        node = node_from_document(document)
        node.status = convert.node_status(
            state,
            last_heartbeat=self._monitor.last_heartbeat_wall(node_id),
            assigned_pool_ids=sorted(self._view.assigned_pool_ids(node_id)),
        )
        return node

    # --- the RPCs -------------------------------------------------------------------------

    async def update_node(self, request: compute.UpdateNodeRequest) -> compute.Node:
        _required(request.id, "id")
        paths = list(request.update_mask.paths) if request.update_mask is not None else []
        leaves = node_admin.fields_to_update(
            paths,
            scheduling_given=request.scheduling is not None,
            role_given=request.role is not None,
        )
        given = request.scheduling or compute.SchedulingConfig()
        taints = taints_of(given.taints)
        if "scheduling.taints" in leaves:
            node_admin.validate_taints(taints, field="scheduling.taints")

        def mutate(document: Document) -> Document:
            if "role" in leaves:
                spec = dict(document.get("spec") or {})
                spec["role"] = (request.role or compute.NodeRole()).to_dict()
                document = node_admin.mark_operator_set({**document, "spec": spec}, ["role"])
            if leaves & {"scheduling.schedulable", "scheduling.taints"}:
                scheduling = _scheduling(document)
                if "scheduling.schedulable" in leaves:
                    scheduling.schedulable = given.schedulable
                if "scheduling.taints" in leaves:
                    scheduling.taints = taint_messages(taints)
                document = _with_scheduling(document, scheduling)
            return document

        await self._catalog.update_node(request.id, mutate)
        auth.audit("UpdateNode", target=f"node {request.id}", detail=", ".join(sorted(leaves)))
        return await self._node(request.id)

    async def update_labels(self, request: compute.UpdateLabelsRequest) -> compute.Node:
        _required(request.node_id, "node_id")
        add, remove = dict(request.add_labels), list(request.remove_labels)
        # Checked before the look-up too, so a bad request is refused as such.
        node_admin.update_labels({}, add=add, remove=remove, max_labels=self._limits.max_labels)

        def mutate(document: Document) -> Document:
            labels = node_admin.update_labels(
                dict(document.get("labels") or {}),
                add=add,
                remove=remove,
                max_labels=self._limits.max_labels,
            )
            return node_admin.mark_operator_set({**document, "labels": labels}, ["labels"])

        await self._catalog.update_node(request.node_id, mutate)
        auth.audit(
            "UpdateLabels",
            target=f"node {request.node_id}",
            detail=f"add {sorted(add)}, remove {sorted(remove)}",
        )
        return await self._node(request.node_id)

    async def add_taint(self, request: compute.AddTaintRequest) -> compute.Node:
        _required(request.node_id, "node_id")
        if request.taint is None:
            raise errors.InvalidArgument("required", field="taint")
        taint = taints_of([request.taint])[0]
        node_admin.validate_taint(taint, field="taint")

        def mutate(document: Document) -> Document:
            scheduling = _scheduling(document)
            scheduling.taints = taint_messages(
                node_admin.add_taint(taints_of(scheduling.taints), taint)
            )
            return _with_scheduling(document, scheduling)

        await self._catalog.update_node(request.node_id, mutate)
        auth.audit(
            "AddTaint",
            target=f"node {request.node_id}",
            detail=f"{taint.key}={taint.value}:{request.taint.effect.name}",
        )
        return await self._node(request.node_id)

    async def remove_taint(self, request: compute.RemoveTaintRequest) -> compute.Node:
        _required(request.node_id, "node_id")
        _required(request.taint_key, "taint_key")

        def mutate(document: Document) -> Document:
            scheduling = _scheduling(document)
            scheduling.taints = taint_messages(
                node_admin.remove_taint(taints_of(scheduling.taints), request.taint_key)
            )
            return _with_scheduling(document, scheduling)

        await self._catalog.update_node(request.node_id, mutate)
        auth.audit("RemoveTaint", target=f"node {request.node_id}", detail=request.taint_key)
        return await self._node(request.node_id)

    async def drain_node(self, request: compute.DrainNodeRequest) -> compute.DrainNodeResponse:
        _required(request.id, "id")
        if request.grace_period_sec < 0:
            raise errors.InvalidArgument(
                f"must not be negative, got {request.grace_period_sec}", field="grace_period_sec"
            )
        await self._catalog.set_operator_phase(
            request.id, maintenance=False, reason="", draining=True
        )
        auth.audit("DrainNode", target=f"node {request.id}")
        # No VMs in this slice: nothing migrated or stopped, and no list says otherwise.
        return compute.DrainNodeResponse(node=await self._node(request.id))

    async def decommission_node(self, request: compute.DecommissionNodeRequest) -> Any:
        _required(request.id, "id")
        unassigned = await self._catalog.decommission_node(request.id, force=request.force)
        auth.audit(
            "DecommissionNode",
            target=f"node {request.id}",
            detail=f"force {request.force}"
            + (f"; unassigned from {', '.join(unassigned)}" if unassigned else ""),
        )
        return pb.Empty()
