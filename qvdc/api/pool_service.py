"""StoragePoolService: pool definitions, assignment, aggregate status.

Validation happens here, before anything is stored, and every rejection names
the field (``spec.backend.nfs.server: required``). Definitions are returned in
full, backend configuration included, except secrets: those are write-only, stored
sealed and shown as their ``…_set`` marker (:mod:`qvdc.api.pool_secrets`).
``ListPools`` pages for real: pools are ordered by name and the page token is an opaque
cursor after the last name.
Every change is written to the audit log with who made it (:func:`qvdc.api.auth.audit`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import betterproto2
import grpclib.const

from protos.google import protobuf as pb
from protos.limiquantix.storage import v1 as storage
from qvdc.api import auth, convert, paging, rpc_groups
from qvdc.api.errors import unary
from qvdc.api.pool_secrets import PoolSecrets
from qvdc.domain import errors, limits, secrets, validation
from qvdc.domain.limits import Limits
from qvdc.domain.model import BackendType, PoolRecord
from qvdc.engines import deletion
from qvdc.engines.catalog import Catalog, Document
from qvdc.engines.view import ClusterView
from qvdc.kits.timing import Clock
from qvdc.store import codec, keys

_SPEC_FIELDS = {
    "spec.backend": "backend",
    "spec.defaults": "defaults",
    "spec.qos": "qos",
    "spec.encryption": "encryption",
    "spec.replication": "replication",
    "spec.tiering": "tiering",
    "spec.assigned_node_ids": "assignedNodeIds",
}


def backend_config(message: betterproto2.Message | None) -> dict[str, Any]:
    """A backend config message as the node's backend receives it: proto field names,
    Python values, defaults included (``node.convert.storage_pool_to_spec`` converts the
    same way), so :mod:`storage_backends.configs` judges the same mapping on both sides."""
    if message is None:
        return {}
    return message.to_dict(
        casing=betterproto2.Casing.SNAKE,
        output_format=betterproto2.OutputFormat.PYTHON,
        include_default_values=True,
    )


def validate_spec(spec: storage.StoragePoolSpec | None) -> None:
    if spec is None or spec.backend is None:
        raise errors.InvalidArgument("a backend is required", field="spec.backend")
    kind, config = betterproto2.which_one_of(spec.backend, "config")
    validation.validate_backend(
        backend_type=BackendType(int(spec.backend.type)),
        config_kind=kind or None,
        config=backend_config(config),
    )
    validation.validate_assigned_node_ids(spec.assigned_node_ids)


def _not_deleting(doc: Mapping[str, Any], pool_id: str, *, field: str) -> None:
    if codec.DELETING_KEY in doc:
        raise errors.FailedPrecondition(
            f"pool {limits.quote(pool_id)} is being deleted (DELETING)", field=field
        )


class PoolMessages:
    """Builds ``StoragePool`` messages, memoising the definition per etcd revision
    (heartbeat responses carry full pool definitions): :meth:`definition` with its secrets
    redacted, for operators; :meth:`for_node` with them opened, only for the heartbeat
    responses of the nodes the pool is assigned to."""

    def __init__(self, *, view: ClusterView, secrets: PoolSecrets) -> None:
        self._view = view
        self._secrets = secrets
        self._specs: dict[str, tuple[int, storage.StoragePool]] = {}
        self._node_specs: dict[str, tuple[int, storage.StoragePool]] = {}
        view.subscribe(self._forget_deleted)

    def _forget_deleted(self, key: str, old: object, new: object) -> None:
        if new is None and key.startswith(keys.POOLS):
            self._specs.pop(key[len(keys.POOLS) :], None)
            self._node_specs.pop(key[len(keys.POOLS) :], None)

    def _memoised(
        self,
        memos: dict[str, tuple[int, storage.StoragePool]],
        record: PoolRecord,
        shown: Callable[[Any], dict[str, Any]],
    ) -> storage.StoragePool:
        revision = self._view.mod_revision(keys.pool(record.id))
        memo = memos.get(record.id)
        if memo is None or memo[0] != revision:
            document = shown(record.document)
            message = storage.StoragePool.from_dict(document, ignore_unknown_fields=True)
            memo = (revision, message)
            memos[record.id] = memo
        return memo[1]

    def definition(self, record: PoolRecord) -> storage.StoragePool:
        return self._memoised(self._specs, record, self._secrets.for_operator)

    def for_node(self, record: PoolRecord) -> storage.StoragePool:
        return self._memoised(self._node_specs, record, self._secrets.for_node)

    def full(self, record: PoolRecord) -> storage.StoragePool:
        base = self.definition(record)
        stored = self._view.pool_status(record.id)
        agg, updated_at = stored if stored is not None else (None, 0.0)
        hostnames: dict[str, str] = {}
        if agg is not None:
            for row in agg.rows:
                node = self._view.node(row.node_id)
                if node is not None:
                    hostnames[row.node_id] = node.hostname
        status = convert.pool_status(
            agg, deleting=record.deleting, updated_at=updated_at, hostnames=hostnames
        )
        return storage.StoragePool(
            id=base.id,
            name=base.name,
            project_id=base.project_id,
            description=base.description,
            labels=base.labels,
            spec=base.spec,
            status=status,
            created_at=base.created_at,
            updated_at=base.updated_at,
        )


class StoragePoolService:
    def __init__(
        self,
        *,
        catalog: Catalog,
        view: ClusterView,
        clock: Clock,
        send_timeout: float,
        limits: Limits | None = None,
        pool_secrets: PoolSecrets | None = None,
        groups: Sequence[rpc_groups.RpcGroup] = (),
    ) -> None:
        self._limits = Limits() if limits is None else limits
        #: Further RPCs, each group in its own module (:mod:`qvdc.api.rpc_groups`).
        self._groups = list(groups)
        self._catalog = catalog
        self._send_timeout = send_timeout
        self._view = view
        self._clock = clock
        # No keyring: every request carrying a secret is refused (FAILED_PRECONDITION).
        self._secrets = pool_secrets or PoolSecrets()
        self.messages = PoolMessages(view=view, secrets=self._secrets)

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        prefix = "/limiquantix.storage.v1.StoragePoolService/"
        table: list[tuple[str, Callable[[Any], Any], type, type]] = [
            ("CreatePool", self.create_pool, storage.CreatePoolRequest, storage.StoragePool),
            ("GetPool", self.get_pool, storage.GetPoolRequest, storage.StoragePool),
            ("ListPools", self.list_pools, storage.ListPoolsRequest, storage.ListPoolsResponse),
            ("UpdatePool", self.update_pool, storage.UpdatePoolRequest, storage.StoragePool),
            ("DeletePool", self.delete_pool, storage.DeletePoolRequest, pb.Empty),
            (
                "GetPoolMetrics",
                self.get_pool_metrics,
                storage.GetPoolMetricsRequest,
                storage.PoolMetrics,
            ),
            ("AssignPoolToNode", self.assign, storage.AssignPoolToNodeRequest, storage.StoragePool),
            (
                "UnassignPoolFromNode",
                self.unassign,
                storage.UnassignPoolFromNodeRequest,
                storage.StoragePool,
            ),
        ]
        mapping = {
            prefix + name: grpclib.const.Handler(
                unary(name, fn, send_timeout=self._send_timeout, limits=self._limits),
                grpclib.const.Cardinality.UNARY_UNARY,
                req,
                resp,
            )
            for name, fn, req, resp in table
        }
        mapping.update(
            rpc_groups.handlers(
                prefix, self._groups, send_timeout=self._send_timeout, limits=self._limits
            )
        )
        return mapping

    async def create_pool(self, request: storage.CreatePoolRequest) -> storage.StoragePool:
        validation.validate_pool_name(request.name)
        validation.validate_description(request.description)
        validation.validate_labels(request.labels, field="labels")
        validate_spec(request.spec)
        now = convert.timestamp(self._clock.time())
        pool = storage.StoragePool(
            id=str(uuid.uuid4()),
            name=request.name,
            project_id=request.project_id,
            description=request.description,
            labels=dict(request.labels),
            spec=request.spec,
            created_at=now,
            updated_at=now,
        )
        record = await self._catalog.create_pool(
            self._secrets.sealed_new(convert.pool_document(pool))
        )
        auth.audit(
            "CreatePool", target=f"pool {record.id}", detail=f"name {limits.quote(request.name)}"
        )
        return self.messages.full(record)

    async def get_pool(self, request: storage.GetPoolRequest) -> storage.StoragePool:
        return self.messages.full(await self._catalog.pool(request.id))

    async def list_pools(self, request: storage.ListPoolsRequest) -> storage.ListPoolsResponse:
        want_type = (
            BackendType(int(request.backend_type))
            if request.filter_backend_type or int(request.backend_type) != 0
            else None
        )
        matches = [
            p
            for p in self._view.pools()
            if self._matches(p, request=request, backend_type=want_type)
        ]
        page, next_token, total = paging.paginate(
            matches,
            key=lambda p: p.name,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return storage.ListPoolsResponse(
            pools=[self.messages.full(p) for p in page],
            next_page_token=next_token,
            total_count=total,
        )

    @staticmethod
    def _matches(
        pool: PoolRecord, *, request: storage.ListPoolsRequest, backend_type: BackendType | None
    ) -> bool:
        doc = pool.document
        if request.project_id and doc.get("projectId", "") != request.project_id:
            return False
        labels = doc.get("labels") or {}
        if any(labels.get(k) != v for k, v in request.labels.items()):
            return False
        return backend_type is None or pool.backend == backend_type

    async def update_pool(self, request: storage.UpdatePoolRequest) -> storage.StoragePool:
        current = await self._catalog.pool(request.id)
        paths = list(request.update_mask.paths) if request.update_mask else []
        for i, path in enumerate(paths):
            known = path in ("description", "labels", "spec", *_SPEC_FIELDS)
            if not known and secrets.by_path(path) is None:
                raise errors.InvalidArgument(
                    f"unknown path {limits.quote(path)}", field=f"update_mask.paths[{i}]"
                )
        validation.validate_description(request.description)
        validation.validate_labels(request.labels, field="labels")
        new_spec = request.spec.to_dict() if request.spec is not None else {}
        now = convert.timestamp(self._clock.time())

        def mutate(doc: Document) -> Document:
            old = doc
            doc = dict(doc)
            spec = dict(doc.get("spec") or {})
            if paths:
                if "description" in paths:
                    doc["description"] = request.description
                if "labels" in paths:
                    doc["labels"] = dict(request.labels)
                if "spec" in paths:
                    spec = dict(new_spec)
                for path, key in _SPEC_FIELDS.items():
                    if path in paths:
                        if key in new_spec:
                            spec[key] = new_spec[key]
                        else:
                            spec.pop(key, None)
            else:
                if request.description:
                    doc["description"] = request.description
                if request.labels:
                    doc["labels"] = dict(request.labels)
                spec.update(new_spec)
            doc["spec"] = spec
            check, doc = self._secrets.updated(
                old=old, new=doc, request_spec=new_spec, mask_paths=paths
            )
            merged = storage.StoragePoolSpec.from_dict(check["spec"], ignore_unknown_fields=True)
            validate_spec(merged)
            if (
                merged.backend is not None
                and BackendType(int(merged.backend.type)) != current.backend
            ):
                raise errors.FailedPrecondition(
                    f"cannot change the backend type of an existing pool "
                    f"({current.backend.name} -> {BackendType(int(merged.backend.type)).name}); "
                    "create a new pool",
                    field="spec.backend.type",
                )
            doc["updatedAt"] = now.isoformat().replace("+00:00", "Z") if now else ""
            _not_deleting(old, request.id, field="id")  # after validation: bad input first
            return doc

        record = await self._catalog.update_pool(request.id, mutate)
        auth.audit(
            "UpdatePool",
            target=f"pool {record.id}",
            detail=f"paths {', '.join(paths)}" if paths else "merge",
        )
        return self.messages.full(record)

    async def delete_pool(self, request: storage.DeletePoolRequest) -> pb.Empty:
        """Refused with volumes unless ``force``. With live assigned hosts the pool becomes
        DELETING and is removed once they detached it (:mod:`qvdc.engines.deletion`);
        with none, at once. Deleting a DELETING pool again changes nothing."""
        record = await self._catalog.pool(request.id)
        if record.deleting:
            return pb.Empty()
        hosts = deletion.live_assigned(self._view, record.id)
        detail = "force" if request.force else ""
        if not hosts:
            await self._catalog.delete_pool(request.id, force=request.force)
        else:
            busy = {
                node: s.report.volume_count
                for node, s in self._view.host_statuses(record.id).items()
                if s.report.volume_count > 0
            }
            if busy and not request.force:
                raise errors.FailedPrecondition(
                    f"pool {limits.quote(record.name)} still holds {sum(busy.values())} "
                    f"volume(s) on {len(busy)} host(s); delete them or set force",
                    field="force",
                )
            await deletion.begin(self._catalog, record, hosts=hosts, now=self._clock.time())
            detail = ", ".join([*([detail] if detail else []), f"DELETING, {len(hosts)} host(s)"])
        auth.audit("DeletePool", target=f"pool {request.id}", detail=detail)
        return pb.Empty()

    async def get_pool_metrics(self, request: storage.GetPoolMetricsRequest) -> storage.PoolMetrics:
        record = await self._catalog.pool(request.id)
        stored = self._view.pool_status(record.id)
        metrics = storage.PoolMetrics(pool_id=record.id)
        if stored is not None:
            agg = stored[0]
            metrics.total_bytes = agg.capacity.total_bytes
            metrics.used_bytes = agg.capacity.used_bytes
            metrics.available_bytes = agg.capacity.available_bytes
            metrics.provisioned_bytes = agg.capacity.provisioned_bytes
            metrics.volume_count = agg.volume_count
        return metrics

    async def assign(self, request: storage.AssignPoolToNodeRequest) -> storage.StoragePool:
        if request.pool_id and (current := self._view.pool(request.pool_id)) is not None:
            _not_deleting(current.document, request.pool_id, field="pool_id")
        record = await self._catalog.assign(request.pool_id, request.node_id)
        auth.audit("AssignPoolToNode", target=f"pool {record.id}", detail=f"node {request.node_id}")
        return self.messages.full(record)

    async def unassign(self, request: storage.UnassignPoolFromNodeRequest) -> storage.StoragePool:
        record = await self._catalog.unassign(request.pool_id, request.node_id)
        auth.audit(
            "UnassignPoolFromNode", target=f"pool {record.id}", detail=f"node {request.node_id}"
        )
        return self.messages.full(record)
