"""Catalog: the transactions behind the pool and node APIs.

Every multi-key change is ONE etcd transaction guarded by compares, so two
replicas (or two operators) can never interleave half-applied changes:

* create pool: ``poolnames/<name>`` and ``pools/<id>`` absent, every assigned
  node present -> put pool, name index and ``assignments/<node>/<pool>``;
* update / assign / unassign: ``pools/<id>`` at the mod_revision we read ->
  put the new document and the assignment-index difference; on a lost race
  re-read and re-apply (bounded), like a Kubernetes update conflict;
* delete: the same compare -> delete pool, name, assignments and aggregate;
  per-host rows are removed right after (the intake ignores reports for pools
  that no longer exist, so a straggler row cannot come back);
* register node: by hostname (the node's identity): a new hostname creates
  ``nodes/<id>``, ``nodenames/<host>`` and a live ``nodestatus``; a known one
  keeps its id and refreshes the document.

Reads come from the replica's watch cache; after a write we wait until the
cache has applied our revision, so a caller always reads its own writes.

Errors: every etcd failure becomes a domain error here (``Unavailable``, or
``DeadlineExceeded`` when the call's own deadline cut it short), so the API's one
boundary (``qvdc/api/errors.py``) never sees a store exception.

Deadlines: the API edge runs each call inside :func:`bounded_by` with the time its
caller has left (grpclib's ``stream.deadline``), and every etcd call and view wait
made here gets ``min(etcd timeout, time left)``. A context variable carries it
because the bound belongs to the *call*, and every method on the path (lookups,
catch-ups, conflict retries) must honour it without threading a parameter
through each of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from qvdc.domain import errors, limits, model, node_admin
from qvdc.domain.limits import Limits
from qvdc.domain.model import NodeCondition, NodeId, NodePhase, NodeState, PoolRecord
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.view import ClusterView
from qvdc.kits import eventlog
from qvdc.kits.timing import Clock
from qvdc.store import codec, keys
from qvdc.store.etcd import Compare, EtcdStore, Op, StoreError, StoreTimeout, TxnResult

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 5

#: Seconds a DecommissionNode waits after removing the node before sweeping its host rows
#: once more: a report of the node queued in a replica's group commit when it was removed
#: lands within milliseconds, and would otherwise stay as a row of a node that is gone.
STRAGGLER_SWEEP_DELAY = 0.25

#: A call bounded by its caller's deadline gives up this much before it (at most a tenth of
#: the time left), so its DEADLINE_EXCEEDED reaches the caller before the caller stops
#: listening.
DEADLINE_MARGIN = 0.05

Document = dict[str, Any]

T = TypeVar("T")

#: ``time.monotonic()`` by which the call being served must be answered, or None.
_call_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "qvdc_call_deadline", default=None
)


@contextlib.contextmanager
def bounded_by(remaining: float | None) -> Iterator[None]:
    """Within the block, every etcd call the catalog makes ends within ``remaining``
    seconds from now (the caller's deadline); None leaves the configured timeout alone."""
    if remaining is None:
        yield
        return
    token = _call_deadline.set(time.monotonic() + remaining)
    try:
        yield
    finally:
        _call_deadline.reset(token)


class Catalog:
    def __init__(
        self,
        *,
        store: EtcdStore,
        view: ClusterView,
        monitor: LivenessMonitor,
        clock: Clock,
        timeout: float,
        limits: Limits | None = None,
    ) -> None:
        self._limits = Limits() if limits is None else limits
        self._store = store
        self._view = view
        self._monitor = monitor
        self._clock = clock
        self._timeout = timeout
        #: Also receives the node.phase events of operator changes (the event history,
        #: ``qvdc.engines.eventstore``); set by the composition root.
        self.on_event: eventlog.Sink | None = None

    def _sized(self, kind: str, encoded: bytes) -> bytes:
        """``encoded`` if it fits its document bound (``Limits``), else InvalidArgument:
        refused here, never late by etcd (as UNAVAILABLE) or by a later restart's list."""
        limit = (
            self._limits.max_pool_document_bytes
            if kind == "pool"
            else self._limits.max_node_document_bytes
        )
        if len(encoded) > limit:
            raise errors.InvalidArgument(
                f"the stored {kind} document would be {len(encoded)} bytes, over the limit of "
                f"{limit} bytes (max_{kind}_document_bytes)",
                field=kind,
            )
        return encoded

    def _budget(self) -> float:
        """Seconds the next etcd call may take: the etcd timeout, or less when the call
        being served has a deadline. DeadlineExceeded if that deadline has passed."""
        deadline = _call_deadline.get()
        if deadline is None:
            return self._timeout
        left = deadline - time.monotonic()
        left -= min(DEADLINE_MARGIN, left / 10)
        if left <= 0:
            raise errors.DeadlineExceeded("the call's deadline passed before etcd answered")
        return min(self._timeout, left)

    async def _etcd(self, what: str, call: Callable[[float], Awaitable[T]]) -> T:
        """``await call(timeout)`` (an etcd call or a wait for the view), its StoreError
        raised as the domain error the API reports."""
        timeout = self._budget()
        try:
            return await call(timeout)
        except StoreTimeout as exc:
            if timeout < self._timeout:  # cut short by the caller's deadline
                raise errors.DeadlineExceeded(
                    f"{what}: etcd did not answer within the call's deadline"
                ) from exc
            raise errors.Unavailable(f"etcd unavailable: {exc}") from exc
        except StoreError as exc:
            raise errors.Unavailable(f"etcd unavailable: {exc}") from exc

    async def _txn(self, *, compares: list[Compare], success: list[Op]) -> TxnResult:
        result = await self._etcd(
            "write",
            lambda timeout: self._store.txn(compares=compares, success=success, timeout=timeout),
        )
        if result.succeeded:
            await self._caught_up_to(result.revision)
        return result

    async def _caught_up_to(self, revision: int) -> None:
        await self._etcd(
            "catch up", lambda timeout: self._view.wait_for_revision(revision, timeout=timeout)
        )

    # --- pools --------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Let this replica's view reach etcd's current revision.

        The view follows etcd's watch, so an object just written through another
        replica may not be in it yet. Before answering "not found" we catch up
        once, so a client never sees its own write missing (read-your-writes
        across replicas); hits cost nothing."""
        revision = await self._etcd(
            "read revision", lambda timeout: self._store.revision(timeout=timeout)
        )
        await self._caught_up_to(revision)

    async def pool(self, pool_id: str) -> PoolRecord:
        if not pool_id:
            raise errors.InvalidArgument("id is required", field="id")
        record = self._view.pool(pool_id)
        if record is None:
            await self.catch_up()
            record = self._view.pool(pool_id)
        if record is None:
            raise errors.NotFound(f"pool {limits.quote(pool_id)} not found", field="id")
        return record

    async def _require_nodes(self, node_ids: Sequence[str], *, field: str) -> list[Compare]:
        """Each node exists and takes new pool assignments (not DRAINING or MAINTENANCE).

        Returns compares on each node's status at the mod revision its phase was read at
        (read together, with no await between): the assignment's transaction carries them,
        so a DrainNode landing after this check makes it fail, re-read and refuse."""
        compares = []
        for i, node_id in enumerate(node_ids):
            if not node_id:
                raise errors.InvalidArgument("node id must not be empty", field=f"{field}[{i}]")
            if self._view.node(node_id) is None:
                await self.catch_up()
            record = self._view.node(node_id)
            if record is None:
                raise errors.NotFound(
                    f"node {limits.quote(node_id)} not found", field=f"{field}[{i}]"
                )
            status_key = keys.node_status(node_id)
            state = self._view.node_state(node_id)
            compares.append(Compare.mod_revision(status_key, self._view.mod_revision(status_key)))
            refusal = node_admin.assignment_refusal(
                f"{limits.quote(record.hostname)} ({node_id})",
                state.phase if state is not None else None,
            )
            if refusal is not None:
                raise errors.FailedPrecondition(refusal, field=f"{field}[{i}]")
        return compares

    async def create_pool(self, document: Document) -> PoolRecord:
        """Store a new pool. ``document`` is the StoragePool JSON (id, name, spec, ...)."""
        pool_id = str(document["id"])
        name = str(document["name"])
        assigned = list(document.get("spec", {}).get("assignedNodeIds") or [])
        for attempt in range(MAX_CONFLICT_RETRIES):
            if self._view.pool_id_by_name(name) is not None:
                raise errors.AlreadyExists(
                    f"a pool named {limits.quote(name)} already exists", field="name"
                )
            phases = await self._require_nodes(assigned, field="spec.assigned_node_ids")
            compares = [Compare.absent(keys.pool_name(name)), Compare.absent(keys.pool(pool_id))]
            compares += [Compare.present(keys.node(n)) for n in assigned]
            compares += phases
            encoded = self._sized("pool", codec.encode_pool_document(document))
            success = [
                Op.put(keys.pool(pool_id), encoded),
                Op.put(keys.pool_name(name), pool_id.encode()),
            ] + [Op.put(keys.assignment(n, pool_id), b"") for n in assigned]
            result = await self._txn(compares=compares, success=success)
            if result.succeeded:
                return self._written(pool_id, encoded)
            log.debug("create pool %s lost a race (attempt %d)", name, attempt + 1)
            await self.catch_up()
        raise errors.Conflict(
            f"pool {limits.quote(name)} changed concurrently; retry", field="name"
        )

    async def update_pool(self, pool_id: str, mutate: Callable[[Document], Document]) -> PoolRecord:
        """Apply ``mutate`` (pure: old document -> new document, may raise domain errors)
        to the pool with optimistic concurrency; keep the assignment index in step."""
        for _ in range(MAX_CONFLICT_RETRIES):
            current = await self.pool(pool_id)
            key = keys.pool(pool_id)
            revision = self._view.mod_revision(key)
            new_doc = mutate(dict(current.document))
            new_doc["id"] = pool_id
            new_doc["name"] = current.name
            encoded = self._sized("pool", codec.encode_pool_document(new_doc))
            new_record = codec.decode_pool(encoded)
            old_nodes = set(current.assigned_node_ids)
            new_nodes = set(new_record.assigned_node_ids)
            added = sorted(new_nodes - old_nodes)
            phases = await self._require_nodes(added, field="spec.assigned_node_ids")
            if encoded == codec.encode_pool_document(dict(current.document)):
                return current  # nothing changes: no write
            compares = [Compare.mod_revision(key, revision)]
            compares += [Compare.present(keys.node(n)) for n in added]
            compares += phases
            success = [Op.put(key, encoded)]
            success += [Op.put(keys.assignment(n, pool_id), b"") for n in added]
            success += [
                Op.delete(keys.assignment(n, pool_id)) for n in sorted(old_nodes - new_nodes)
            ]
            result = await self._txn(compares=compares, success=success)
            if result.succeeded:
                return self._written(pool_id, encoded)
            await self.catch_up()
        raise errors.Conflict(
            f"pool {limits.quote(pool_id)} changed concurrently; retry", field="id"
        )

    def _written(self, pool_id: str, encoded: bytes) -> PoolRecord:
        """The pool as this call wrote it: the view's record (it has caught up to the
        write), or the written one if a later change already removed it from the view. The
        leader may finish a DELETING pool whose hosts hold nothing the moment it is marked,
        and the call that marked it succeeded: it must not answer NOT_FOUND."""
        return self._view.pool(pool_id) or codec.decode_pool(encoded)

    async def assign(self, pool_id: str, node_id: str) -> PoolRecord:
        self._check_ids(pool_id, node_id)
        await self.pool(pool_id)
        await self._require_nodes([node_id], field="node_id")

        def add(doc: Document) -> Document:
            spec = dict(doc.get("spec") or {})
            nodes = list(spec.get("assignedNodeIds") or [])
            if node_id not in nodes:
                nodes.append(node_id)
            spec["assignedNodeIds"] = nodes
            return {**doc, "spec": spec}

        return await self.update_pool(pool_id, add)

    async def unassign(self, pool_id: str, node_id: str) -> PoolRecord:
        self._check_ids(pool_id, node_id)
        await self.pool(pool_id)

        def remove(doc: Document) -> Document:
            spec = dict(doc.get("spec") or {})
            nodes = [n for n in spec.get("assignedNodeIds") or [] if n != node_id]
            if nodes:
                spec["assignedNodeIds"] = nodes
            else:
                spec.pop("assignedNodeIds", None)
            return {**doc, "spec": spec}

        return await self.update_pool(pool_id, remove)

    @staticmethod
    def _check_ids(pool_id: str, node_id: str) -> None:
        if not pool_id:
            raise errors.InvalidArgument("pool_id is required", field="pool_id")
        if not node_id:
            raise errors.InvalidArgument("node_id is required", field="node_id")

    async def delete_pool(self, pool_id: str, *, force: bool) -> None:
        for _ in range(MAX_CONFLICT_RETRIES):
            current = await self.pool(pool_id)
            busy = {
                node: s.report.volume_count
                for node, s in self._view.host_statuses(pool_id).items()
                if s.report.volume_count > 0
            }
            if busy and not force:
                total = sum(busy.values())
                raise errors.FailedPrecondition(
                    f"pool {limits.quote(current.name)} still holds {total} volume(s) on "
                    f"{len(busy)} host(s); delete them or set force",
                    field="force",
                )
            key = keys.pool(pool_id)
            success = [Op.delete(key), Op.delete(keys.pool_name(current.name))]
            success += [Op.delete(keys.assignment(n, pool_id)) for n in current.assigned_node_ids]
            success.append(Op.delete(keys.pool_status(pool_id)))
            result = await self._txn(
                compares=[Compare.mod_revision(key, self._view.mod_revision(key))], success=success
            )
            if result.succeeded:
                try:
                    await self._etcd(
                        "delete host rows",
                        lambda timeout: self._store.delete_prefix(
                            keys.host_statuses_of(pool_id), timeout=timeout
                        ),
                    )
                except (errors.Unavailable, errors.DeadlineExceeded) as exc:
                    log.warning("pool %s deleted; its host rows remain (%s)", pool_id, exc)
                return
            await self.catch_up()
        raise errors.Conflict(
            f"pool {limits.quote(pool_id)} changed concurrently; retry", field="id"
        )

    # --- nodes --------------------------------------------------------------------

    async def register_node(
        self, *, hostname: str, build: Callable[[str, Mapping[str, Any] | None], Document]
    ) -> tuple[str, bool]:
        """Register or re-register by hostname. ``build(node_id, old_document)`` returns
        the Node document. Returns ``(node_id, created)``."""
        for _ in range(MAX_CONFLICT_RETRIES):
            existing = self._view.node_id_by_hostname(hostname)
            now = self._clock.time()
            if existing is None:
                node_id = str(uuid.uuid4())
                document = build(node_id, None)
                state = NodeState(
                    node_id=NodeId(node_id),
                    phase=NodePhase.READY,
                    last_heartbeat_at=now,
                    live=True,
                    owner_replica=self._monitor.replica_id,
                    conditions=(
                        NodeCondition(
                            type="Ready",
                            status=True,
                            reason="Registered",
                            message="node registered",
                            at=now,
                        ),
                    ),
                )
                result = await self._txn(
                    compares=[Compare.absent(keys.node_name(hostname))],
                    success=[
                        Op.put(
                            keys.node(node_id),
                            self._sized("node", codec.encode_node_document(document)),
                        ),
                        Op.put(keys.node_name(hostname), node_id.encode()),
                        Op.put(keys.node_status(node_id), codec.encode_node_state(state)),
                    ],
                )
                if result.succeeded:
                    self._monitor.registered(NodeId(node_id))
                    return node_id, True
            else:
                old = self._view.node(existing)
                key = keys.node(existing)
                document = build(existing, old.document if old else None)
                result = await self._txn(
                    compares=[Compare.mod_revision(key, self._view.mod_revision(key))],
                    success=[
                        Op.put(key, self._sized("node", codec.encode_node_document(document)))
                    ],
                )
                if result.succeeded:
                    self._monitor.registered(NodeId(existing))
                    return existing, False
            await self.catch_up()
        raise errors.Conflict(
            f"node {limits.quote(hostname)} changed concurrently; retry", field="hostname"
        )

    async def node(self, node_id: str) -> tuple[Mapping[str, Any], NodeState | None]:
        if not node_id:
            raise errors.InvalidArgument("id is required", field="id")
        record = self._view.node(node_id)
        if record is None:
            await self.catch_up()
            record = self._view.node(node_id)
        if record is None:
            raise errors.NotFound(f"node {limits.quote(node_id)} not found", field="id")
        return record.document, self._view.node_state(node_id)

    async def set_operator_phase(
        self, node_id: str, *, maintenance: bool, reason: str, draining: bool = False
    ) -> None:
        """DisableNode (maintenance on) / EnableNode (maintenance off) / DrainNode
        (``draining``: DRAINING, which EnableNode ends as it ends MAINTENANCE)."""
        await self.node(node_id)
        key = keys.node_status(node_id)
        action = (
            node_admin.OperatorAction.DRAIN
            if draining
            else node_admin.OperatorAction.DISABLE
            if maintenance
            else node_admin.OperatorAction.ENABLE
        )
        maintenance = maintenance or draining
        for _ in range(MAX_CONFLICT_RETRIES):
            current = self._view.node_state(node_id)
            now = self._clock.time()
            live = current.live if current is not None else False
            phase = node_admin.operator_phase(action, live=live)
            if (
                current is not None
                and current.phase == phase
                and (not maintenance or current.maintenance_reason == reason)
            ):
                return
            condition = NodeCondition(
                type="Draining" if draining else "Maintenance",
                status=maintenance,
                reason="Drained" if draining else "Disabled" if maintenance else "Enabled",
                message=reason
                or (
                    "drained by operator"
                    if draining
                    else "disabled by operator"
                    if maintenance
                    else "enabled by operator"
                ),
                at=now,
            )
            state = NodeState(
                node_id=NodeId(node_id),
                phase=phase,
                last_heartbeat_at=current.last_heartbeat_at if current else 0.0,
                live=live,
                owner_replica=current.owner_replica if current else "",
                conditions=model.append_condition(current.conditions if current else (), condition),
                maintenance_reason=reason if maintenance else "",
            )
            result = await self._txn(
                compares=[Compare.mod_revision(key, self._view.mod_revision(key))],
                success=[Op.put(key, codec.encode_node_state(state))],
            )
            if result.succeeded:
                previous = current.phase.name if current is not None else "PENDING"
                eventlog.event_to(
                    self.on_event,
                    log,
                    "node.phase",
                    "node %s: %s -> %s (%s)",
                    node_id,
                    previous,
                    phase.name,
                    condition.message,
                    level=logging.INFO,
                    node_id=node_id,
                    **{"from": previous, "to": phase.name},
                )
                return
            await self.catch_up()
        raise errors.Conflict(
            f"node {limits.quote(node_id)} changed concurrently; retry", field="id"
        )

    async def update_node(self, node_id: str, mutate: Callable[[Document], Document]) -> None:
        """Apply ``mutate`` (pure: old Node document -> new one, may raise domain errors) to
        ``nodes/<id>`` with optimistic concurrency (the mod revision read), as pools are.
        The id, hostname and creation time are the stored ones whatever ``mutate`` says."""
        for _ in range(MAX_CONFLICT_RETRIES):
            document, _state = await self.node(node_id)
            key = keys.node(node_id)
            revision = self._view.mod_revision(key)
            old = dict(document)
            new_doc = mutate(dict(old))
            for fixed in ("id", "hostname", "createdAt"):
                if fixed in old:
                    new_doc[fixed] = old[fixed]
            new_doc["updatedAt"] = codec.format_time(self._clock.time())
            encoded = self._sized("node", codec.encode_node_document(new_doc))
            if {k: v for k, v in new_doc.items() if k != "updatedAt"} == {
                k: v for k, v in old.items() if k != "updatedAt"
            }:
                return  # nothing changes: no write
            result = await self._txn(
                compares=[Compare.mod_revision(key, revision)], success=[Op.put(key, encoded)]
            )
            if result.succeeded:
                return
            await self.catch_up()
        raise errors.Conflict(
            f"node {limits.quote(node_id)} changed concurrently; retry", field="id"
        )

    async def _sweep_rows(self, node_id: str) -> None:
        """Delete the host rows of a removed node that arrived after its removal (see
        :data:`STRAGGLER_SWEEP_DELAY`). Best effort: the node is gone either way."""
        try:
            await asyncio.sleep(min(STRAGGLER_SWEEP_DELAY, max(0.0, self._budget() / 2)))
            await self.catch_up()
            late = [Op.delete(keys.host_status(p, node_id)) for p in self._view.rows_of(node_id)]
            if late and self._view.node(node_id) is None:
                await self._txn(compares=[Compare.absent(keys.node(node_id))], success=late)
                log.info("node %s: %d late host row(s) deleted", node_id, len(late))
        except (errors.Unavailable, errors.DeadlineExceeded) as exc:
            log.warning("node %s removed; a late host row may remain (%s)", node_id, exc)

    async def decommission_node(self, node_id: str, *, force: bool) -> list[str]:
        """Remove a node: refused (FailedPrecondition naming the pools) while pools are
        assigned to it unless ``force``; with ``force`` it is first unassigned from each
        (one compare-and-set per pool). Then one transaction removes ``nodes/<id>``,
        ``nodenames/<host>``, ``nodestatus/<id>``, its assignment index entries and its
        per-pool host rows, so it leaves every view and pool aggregate. Returns the names
        of the pools it was unassigned from."""
        unassigned: list[str] = []
        for _ in range(MAX_CONFLICT_RETRIES):
            document, _state = await self.node(node_id)
            hostname = str(document.get("hostname") or node_id)
            pool_ids = sorted(self._view.assigned_pool_ids(node_id))
            if pool_ids and not force:
                names = sorted(
                    limits.quote(record.name)
                    for p in pool_ids
                    if (record := self._view.pool(p)) is not None
                ) or [limits.quote(p) for p in pool_ids]
                shown = ", ".join(names[:10]) + (
                    f" and {len(names) - 10} more" if len(names) > 10 else ""
                )
                raise errors.FailedPrecondition(
                    f"node {limits.quote(hostname)} still has {len(pool_ids)} pool(s) assigned: "
                    f"{shown}; unassign them or set force",
                    field="force",
                )
            for pool_id in pool_ids:
                try:
                    record = await self.unassign(pool_id, node_id)
                except errors.NotFound:
                    continue  # deleted meanwhile
                unassigned.append(record.name)
            record_now = self._view.node(node_id)
            if record_now is None:
                raise errors.NotFound(f"node {limits.quote(node_id)} not found", field="id")
            if self._view.assigned_pool_ids(node_id):
                continue  # assigned again meanwhile: go round
            key = keys.node(node_id)
            name_key = keys.node_name(record_now.hostname)
            status_key = keys.node_status(node_id)
            success = [Op.delete(key), Op.delete(status_key)]
            if self._view.node_id_by_hostname(record_now.hostname) == node_id:
                success.append(Op.delete(name_key))
            success += [
                Op.delete(keys.host_status(p, node_id)) for p in self._view.rows_of(node_id)
            ]
            result = await self._txn(
                compares=[
                    Compare.mod_revision(key, self._view.mod_revision(key)),
                    Compare.mod_revision(status_key, self._view.mod_revision(status_key)),
                    Compare.mod_revision(name_key, self._view.mod_revision(name_key)),
                ],
                success=success,
            )
            if result.succeeded:
                self._monitor.forget(NodeId(node_id))
                # An assignment committed after our look (its node compare ran before our
                # delete) would name a node that is gone: take it back out.
                for pool_id in self._view.assigned_pool_ids(node_id):
                    with contextlib.suppress(errors.NotFound):
                        await self.unassign(pool_id, node_id)
                await self._sweep_rows(node_id)
                log.info(
                    "node %s (%s) decommissioned%s",
                    node_id,
                    record_now.hostname,
                    f"; unassigned from {', '.join(unassigned)}" if unassigned else "",
                )
                return unassigned
            await self.catch_up()
        raise errors.Conflict(
            f"node {limits.quote(node_id)} changed concurrently; retry", field="id"
        )
