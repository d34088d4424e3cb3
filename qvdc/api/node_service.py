"""NodeService: registration, node queries, operator phases and heartbeats.

Two heartbeat channels:

* ``UpdateHeartbeat`` (unary, upstream-compatible): full reports every time;
  the response always carries the assigned pool ids and full definitions.
* ``StreamHeartbeat`` (bidi, the node daemon's normal channel): the first
  heartbeat on a stream is full, later ones are deltas. Every heartbeat is
  answered (same ``sequence``). Full pool definitions are sent only when the
  node's assignment (pool ids and their definitions' revisions)
  changed since the last one sent on this stream; ``assigned_pool_ids`` is
  always there and is authoritative. When an assignment or an assigned pool's
  definition changes, an unsolicited response is pushed at once.

One stream per node: a stream whose first heartbeat names a node that already has
a stream on this replica replaces it; the old one ends with ABORTED ("replaced by a
newer stream from <address>"), so a node (or an impostor stopped by
:mod:`qvdc.api.auth`) never has two sessions receiving its pushes. A node whose record
is deleted (DecommissionNode, through any replica: this one sees it in its view) has its
stream ended with NOT_FOUND.

Authorization (:mod:`qvdc.api.auth`): the RPC-level check ran before a handler; the
node handlers check that the request names the caller's node (a stream once, on its
first heartbeat), and the operator handlers write an audit line per change.

A delta heartbeat arriving first on a new stream (the node thinks it is
continuing a session this replica never saw) is processed and answered with
``request_full_sync``.

Every send is bounded (``GrpcSettings.send_timeout``): a node that stops reading
fills its HTTP/2 window and the send waits; past the bound its stream ends with
UNAVAILABLE. One :class:`SendWatchdog` timer serves every stream, armed only
while a send is in flight, because a timer per send would cost each heartbeat
reply more than the rest of its answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import grpclib.const
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from qvdc.api import auth, convert, paging, rpc_groups
from qvdc.api import limits as request_limits
from qvdc.api import node_admin as admin
from qvdc.api.errors import guarded, send_timed_out, to_grpc_error, unary
from qvdc.api.host_requests import HostRequests
from qvdc.api.pool_service import PoolMessages
from qvdc.domain import errors, node_admin, validation
from qvdc.domain.limits import Limits
from qvdc.domain.model import NodeId, NodeState
from qvdc.engines import liveness
from qvdc.engines.catalog import Catalog
from qvdc.engines.figures import NodeFigures
from qvdc.engines.intake import Assignment, HeartbeatIntake
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.push import PushHub
from qvdc.engines.view import ClusterView
from qvdc.kits.tasks import cancel_and_wait
from qvdc.kits.timing import Clock
from qvdc.security.identity import Kind
from qvdc.store import codec, keys

log = logging.getLogger(__name__)

_VMS = "this slice manages storage pools and hosts, not virtual machines"
#: Upstream's VM RPCs: UNIMPLEMENTED with the reason (:class:`rpc_groups.OutOfScope`).
OUT_OF_SCOPE = rpc_groups.OutOfScope(
    [
        (
            "SyncNodeVMs",
            compute.SyncNodeVMsRequest,
            compute.SyncNodeVMsResponse,
            grpclib.const.Cardinality.UNARY_UNARY,
            _VMS,
        ),
        (
            "NotifyVMChange",
            compute.VmChangeNotification,
            compute.VmChangeAck,
            grpclib.const.Cardinality.UNARY_UNARY,
            _VMS,
        ),
    ]
)


def node_message(
    node_id: str,
    document: Mapping[str, Any],
    state: NodeState | None,
    *,
    view: ClusterView,
    heard_at: Callable[[str], float | None],
) -> compute.Node:
    """The ``Node`` message operators see (GetNode, ListNodes, the watches)."""
    node = admin.node_from_document(document)
    node.status = convert.node_status(
        state,
        last_heartbeat=heard_at(node_id),
        assigned_pool_ids=sorted(view.assigned_pool_ids(node_id)),
    )
    return node


class NodeService:
    def __init__(
        self,
        *,
        catalog: Catalog,
        view: ClusterView,
        intake: HeartbeatIntake,
        monitor: LivenessMonitor,
        hub: PushHub,
        pools: PoolMessages,
        clock: Clock,
        send_timeout: float,
        limits: Limits | None = None,
        policy: auth.Policy | None = None,
        groups: Sequence[rpc_groups.RpcGroup] = (),
        figures: NodeFigures | None = None,
        host_requests: HostRequests | None = None,
    ) -> None:
        self._limits = Limits() if limits is None else limits
        #: Each node's latest heartbeat figures (GetNodeMetrics; nothing written per heartbeat).
        self.figures = NodeFigures(view=view) if figures is None else figures
        #: Requests to hosts over their open streams (ListPoolFiles, ReconnectPool).
        self.host_requests = HostRequests() if host_requests is None else host_requests
        #: Further RPCs, each group in its own module (:mod:`qvdc.api.rpc_groups`).
        self._groups = [*groups, OUT_OF_SCOPE]
        self._policy = policy
        #: The open stream of each node (one per node: a newer one replaces it).
        self._streams: dict[str, _StreamSession] = {}
        #: Heartbeats accepted on streams (the intake counts all of them), for qvdc.metrics.
        self.stream_heartbeats = 0
        self._catalog = catalog
        self._view = view
        self._intake = intake
        self._monitor = monitor
        self._hub = hub
        self._pools = pools
        self._clock = clock
        self._send_timeout = send_timeout
        self._watchdog = SendWatchdog(timeout=send_timeout)
        view.subscribe(self._on_view_change)

    def _on_view_change(self, key: str, old: Any, new: Any) -> None:
        """A node's record deleted (DecommissionNode, through any replica): the node's
        stream here ends with NOT_FOUND, and its liveness is no longer judged here."""
        if new is None and key.startswith(keys.NODES):
            node_id = key[len(keys.NODES) :]
            self._monitor.forget(NodeId(node_id))
            session = self._streams.get(node_id)
            if session is not None:
                session.end(GRPCError(Status.NOT_FOUND, f"node {node_id} decommissioned"))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        prefix = "/limiquantix.compute.v1.NodeService/"
        table: list[tuple[str, Callable[[Any], Any], type, type]] = [
            ("RegisterNode", self.register_node, compute.RegisterNodeRequest, compute.Node),
            ("GetNode", self.get_node, compute.GetNodeRequest, compute.Node),
            ("ListNodes", self.list_nodes, compute.ListNodesRequest, compute.ListNodesResponse),
            ("EnableNode", self.enable_node, compute.EnableNodeRequest, compute.Node),
            ("DisableNode", self.disable_node, compute.DisableNodeRequest, compute.Node),
            (
                "UpdateHeartbeat",
                self.update_heartbeat,
                compute.UpdateHeartbeatRequest,
                compute.UpdateHeartbeatResponse,
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
        mapping[prefix + "StreamHeartbeat"] = grpclib.const.Handler(
            self.stream_heartbeat,
            grpclib.const.Cardinality.STREAM_STREAM,
            compute.UpdateHeartbeatRequest,
            compute.UpdateHeartbeatResponse,
        )
        mapping.update(
            rpc_groups.handlers(
                prefix, self._groups, send_timeout=self._send_timeout, limits=self._limits
            )
        )
        return mapping

    # --- registration and queries -------------------------------------------------

    async def register_node(self, request: compute.RegisterNodeRequest) -> compute.Node:
        validation.validate_hostname(request.hostname)
        ip = validation.normalize_management_ip(request.management_ip)
        validation.validate_labels(request.labels, field="labels")
        admin.check_registration(request)
        who = auth.check_request(self._policy, "RegisterNode", request)
        now = codec.format_time(self._clock.time())

        def build(node_id: str, old: Mapping[str, Any] | None) -> dict[str, Any]:
            if old is not None and who is not None and who.kind is Kind.BOOTSTRAP:
                # Registered meanwhile (another replica): a token adds nodes, never takes one.
                auth.deny_reregistration(who, request.hostname)
            spec = compute.NodeSpec(
                cpu=request.cpu_info,
                memory=request.memory_info,
                storage=list(request.storage_devices),
                network=list(request.network_devices),
                role=request.role or compute.NodeRole(compute=True),
                scheduling=compute.SchedulingConfig(schedulable=True, taints=list(request.taints)),
            )
            doc = compute.Node(
                id=node_id,
                hostname=request.hostname,
                management_ip=ip,
                labels=dict(request.labels),
                annotations=admin.registration_annotations(request),
                spec=spec,
            ).to_dict()
            doc["createdAt"] = (old or {}).get("createdAt") or now
            doc["updatedAt"] = now
            if request.heartbeat_interval_ms:  # its own interval: see the monitor's grace
                doc[liveness.REQUESTED_INTERVAL_KEY] = request.heartbeat_interval_ms
            if old is not None and not request.labels:
                doc["labels"] = dict(old.get("labels") or {})  # keep labels unless re-sent
            doc = admin.keep_huge_pages(doc, request)
            return node_admin.merge_registration(old, doc)  # what an operator set stays

        node_id, created = await self._catalog.register_node(hostname=request.hostname, build=build)
        caller = auth.caller()
        log.info(
            "%s node %s (%s, %s) by %s",
            "registered" if created else "re-registered",
            node_id,
            request.hostname,
            ip,
            caller.describe() if caller is not None else "an in-process caller",
        )
        return await self._node_message(node_id)

    async def _node_message(self, node_id: str) -> compute.Node:
        document, state = await self._catalog.node(node_id)
        return node_message(
            node_id, document, state, view=self._view, heard_at=self._monitor.last_heartbeat_wall
        )

    async def get_node(self, request: compute.GetNodeRequest) -> compute.Node:
        return await self._node_message(request.id)

    async def list_nodes(self, request: compute.ListNodesRequest) -> compute.ListNodesResponse:
        phases = {int(p) for p in request.phases}
        matches = []
        for record in self._view.nodes():
            if any(record.labels.get(k) != v for k, v in request.labels.items()):
                continue
            state = self._view.node_state(record.id)
            if phases and (state is None or int(state.phase) not in phases):
                continue
            if not node_admin.role_matches(
                (record.document.get("spec") or {}).get("role"),
                compute_only=request.compute_only,
                storage_only=request.storage_only,
                control_plane_only=request.control_plane_only,
            ):
                continue
            matches.append(record)
        page, next_token, total = paging.paginate(
            matches,
            key=lambda r: r.hostname,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return compute.ListNodesResponse(
            nodes=[await self._node_message(r.id) for r in page],
            next_page_token=next_token,
            total_count=total,
        )

    async def enable_node(self, request: compute.EnableNodeRequest) -> compute.Node:
        await self._catalog.set_operator_phase(request.id, maintenance=False, reason="")
        auth.audit("EnableNode", target=f"node {request.id}")
        return await self._node_message(request.id)

    async def disable_node(self, request: compute.DisableNodeRequest) -> compute.Node:
        await self._catalog.set_operator_phase(request.id, maintenance=True, reason=request.reason)
        auth.audit("DisableNode", target=f"node {request.id}", detail=f"reason {request.reason!r}")
        return await self._node_message(request.id)

    # --- heartbeats -------------------------------------------------------------------

    def _response(
        self,
        assignment: Assignment,
        *,
        node_id: str,
        sequence: int,
        with_pools: bool,
        unsolicited: bool = False,
        full_sync: bool = False,
    ) -> compute.UpdateHeartbeatResponse:
        pools = []
        if with_pools:
            for pool_id in assignment.pool_ids:
                record = self._view.pool(pool_id)
                if record is not None:
                    pools.append(self._pools.for_node(record))
        return compute.UpdateHeartbeatResponse(
            acknowledged=True,
            server_time_unix=int(self._clock.time()),
            heartbeat_interval_secs=self._monitor.told_interval_secs(node_id),
            assigned_pool_ids=list(assignment.pool_ids),
            request_full_sync=full_sync,
            assigned_pools=pools,
            sequence=sequence,
            unsolicited=unsolicited,
        )

    def _accept(self, request: compute.UpdateHeartbeatRequest, *, full: bool) -> None:
        self._intake.accept(
            node_id=request.node_id,
            reports=convert.incoming_reports(request.storage_pools),
            full=full,
            removed=request.removed_pool_ids,
            to_report=convert.report_for_pool,
        )
        self.figures.observe(request.node_id, request)

    async def _known_node(self, node_id: str) -> None:
        """A node registered moments ago through another replica may not be in
        this replica's view yet: catch up once before the intake says NOT_FOUND."""
        if node_id and not self._view.has_node(node_id):
            await self._catalog.catch_up()

    async def update_heartbeat(
        self, request: compute.UpdateHeartbeatRequest
    ) -> compute.UpdateHeartbeatResponse:
        await self._known_node(request.node_id)
        auth.check_request(self._policy, "UpdateHeartbeat", request)
        self._accept(request, full=True)  # the unary path always carries full reports
        assignment = self._intake.assignment(request.node_id)
        return self._response(
            assignment, node_id=request.node_id, sequence=request.sequence, with_pools=True
        )

    def stream_heartbeat(
        self,
        stream: grpclib.server.Stream[
            compute.UpdateHeartbeatRequest, compute.UpdateHeartbeatResponse
        ],
    ) -> Coroutine[Any, Any, None]:
        """The handler grpclib awaits: the session's own coroutine, not one wrapping it
        (a suspended coroutine is a quarter of a KB, and every host keeps a stream open)."""
        return _StreamSession(self, stream).serve()

    def _claim(self, session: _StreamSession, *, peer: str) -> None:
        """``session`` is now its node's stream; the one it replaces is ended."""
        old = self._streams.get(session.node_id)
        self._streams[session.node_id] = session
        self.host_requests.attach(session.node_id, session._send)
        if old is not None and old is not session:
            log.info(
                "heartbeat stream of node %s replaced by a newer one from %s",
                session.node_id,
                peer or "another connection",
            )
            old.end(
                GRPCError(
                    Status.ABORTED,
                    f"replaced by a newer stream from {peer or 'another connection'}",
                )
            )

    def _release(self, session: _StreamSession) -> None:
        if self._streams.get(session.node_id) is session:
            del self._streams[session.node_id]
            self.host_requests.detach(session.node_id, session._send)

    @property
    def open_streams(self) -> int:
        """Heartbeat streams open on this replica (one per node)."""
        return len(self._streams)


class SendWatchdog:
    """Ends heartbeat streams whose sends stall for more than ``timeout`` seconds.

    A session calls :meth:`begin` before a send and :meth:`end` after it. One timer,
    armed by the first send that finds none, checks every ``timeout / 4`` s and
    :meth:`_StreamSession.expire` s the sessions whose oldest send is older than
    ``timeout``; it re-arms only while sends are in flight. Sends almost always
    complete without waiting, so this costs a dict entry per send, not a timer.
    """

    __slots__ = ("_since", "_timer", "timeout")

    def __init__(self, *, timeout: float) -> None:
        self.timeout = timeout
        self._since: dict[_StreamSession, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def begin(self, session: _StreamSession) -> None:
        if session not in self._since:
            self._since[session] = time.monotonic()
            if self._timer is None:
                self._arm()

    def end(self, session: _StreamSession) -> None:
        self._since.pop(session, None)

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self.timeout / 4, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        cutoff = time.monotonic() - self.timeout
        expired = [session for session, since in self._since.items() if since < cutoff]
        for session in expired:
            del self._since[session]
            session.expire()
        if self._since:
            self._arm()


class _StreamSession:
    """One open StreamHeartbeat: answers heartbeats and pushes assignment changes."""

    __slots__ = (
        "_ending",
        "_push_due",
        "_pusher",
        "_send_lock",
        "_sending",
        "_sent",
        "_stream",
        "_svc",
        "_task",
        "node_id",
    )

    def __init__(self, service: NodeService, stream: grpclib.server.Stream[Any, Any]) -> None:
        self._svc = service
        self._stream = stream
        self._send_lock = asyncio.Lock()
        self._sent: Assignment | None = None  # what the node was last sent
        self._pusher: asyncio.Task[None] | None = None  # only while a push is being sent
        self._push_due = False
        self._sending = 0  # sends in flight: a reply and a push may overlap
        # The task serving the stream; None once the watchdog expired the stream.
        self._task: asyncio.Task[Any] | None = None
        # What the stream ends with when ended from outside (None: the watchdog's verdict).
        self._ending: GRPCError | None = None
        self.node_id = ""

    async def _send(self, response: compute.UpdateHeartbeatResponse) -> None:
        watchdog = self._svc._watchdog
        if self._sending == 0:
            watchdog.begin(self)
        self._sending += 1
        lock = self._send_lock  # a push and a reply must not interleave their frames
        try:
            await lock.acquire()
            try:
                await self._stream.send_message(response)
            finally:
                lock.release()
        finally:
            self._sending -= 1
            if self._sending == 0:
                watchdog.end(self)

    def expire(self) -> None:
        """The watchdog's verdict: a send has waited too long. End the stream: a partly
        sent message cannot be followed by another, so the serving task is cancelled
        and :meth:`serve` answers UNAVAILABLE."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    def end(self, error: GRPCError) -> None:
        """End the stream with ``error`` (a newer stream of the node replaced it)."""
        self._ending = error
        self.expire()

    def _reply(
        self, *, sequence: int, unsolicited: bool = False, full_sync: bool = False
    ) -> compute.UpdateHeartbeatResponse | None:
        assignment = self._svc._intake.assignment(self.node_id)
        changed = assignment is not self._sent and assignment != self._sent
        if unsolicited and not changed:
            return None
        self._sent = assignment
        return self._svc._response(
            assignment,
            node_id=self.node_id,
            sequence=sequence,
            with_pools=changed,
            unsolicited=unsolicited,
            full_sync=full_sync,
        )

    def _wake(self) -> None:
        """The hub's callback: the assignment may have changed; push it if it did."""
        self._push_due = True
        if self._pusher is None:
            self._pusher = asyncio.create_task(self._push(), name=f"push-{self.node_id}")

    async def _push(self) -> None:
        try:
            while self._push_due:
                self._push_due = False
                response = self._reply(sequence=0, unsolicited=True)
                if response is not None:
                    await self._send(response)
        except Exception as exc:  # noqa: BLE001 - the stream's own loop reports its failure
            log.info("push to node %s failed: %r", self.node_id, exc)
        finally:
            self._pusher = None

    async def serve(self) -> None:
        opened = False
        recv = self._stream.recv_message
        task = self._task = asyncio.current_task()
        try:
            while (request := await recv()) is not None:
                if not self.node_id:
                    await guarded("StreamHeartbeat", functools.partial(self._first, request))
                    self._svc._hub.open(self.node_id, self._wake)
                    opened = True
                elif request.node_id and request.node_id != self.node_id:
                    raise to_grpc_error(
                        errors.InvalidArgument(
                            "must not change on an open stream", field="node_id"
                        ),
                        method="StreamHeartbeat",
                    )
                elif request.list_files_result is not None:
                    self._answered(request)  # a host's answer, not a heartbeat
                else:
                    await self._heartbeat(request)
                del request  # waiting for the next one must not keep this one (per host)
        except asyncio.CancelledError:
            # The watchdog's cancellation, and nobody else's: the node stopped reading.
            if self._task is None and task is not None and task.uncancel() == 0:
                if self._ending is not None:
                    raise self._ending from None
                raise to_grpc_error(
                    send_timed_out(self._svc._send_timeout), method="StreamHeartbeat"
                ) from None
            raise
        finally:
            self._task = None
            if self.node_id:
                self._svc._release(self)
            self._svc._watchdog.end(self)
            if opened:
                self._svc._hub.close(self.node_id, self._wake)
            if self._pusher is not None:
                await cancel_and_wait(self._pusher)

    def _answered(self, request: compute.UpdateHeartbeatRequest) -> None:
        """The host answered a request (:mod:`qvdc.api.host_requests`); bounded like a
        heartbeat, and an answer over its bounds ends the stream the same way."""
        try:
            request_limits.check(request, self._svc._limits)
        except Exception as exc:
            raise to_grpc_error(exc, method="StreamHeartbeat") from exc
        assert request.list_files_result is not None
        self._svc.host_requests.answer(self.node_id, request.list_files_result)

    async def _first(self, request: compute.UpdateHeartbeatRequest) -> None:
        request_limits.check(request, self._svc._limits)
        await self._svc._known_node(request.node_id)
        auth.check_request(self._svc._policy, "StreamHeartbeat", request)
        self._svc._intake.require_node(request.node_id)
        self.node_id = request.node_id
        caller = auth.caller()
        self._svc._claim(self, peer=caller.peer if caller is not None else "")
        log.debug("heartbeat stream opened by node %s", self.node_id)
        await self._heartbeat(request, first=True)

    async def _heartbeat(
        self, request: compute.UpdateHeartbeatRequest, first: bool = False
    ) -> None:
        # guarded(), inlined: this runs for every heartbeat of every node.
        try:
            if not first:
                request_limits.check(request, self._svc._limits)
            self._svc._accept(request, full=not request.delta)
            self._svc.stream_heartbeats += 1
            response = self._reply(sequence=request.sequence, full_sync=first and request.delta)
            assert response is not None
            await self._send(response)
        except (GRPCError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise to_grpc_error(exc, method="StreamHeartbeat") from exc
