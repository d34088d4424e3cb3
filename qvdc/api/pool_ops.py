"""ListPoolFiles and ReconnectPool: pool operations carried out by the pool's hosts.

Both reach the hosts over their open heartbeat streams (:mod:`qvdc.api.host_requests`),
never by a second connection to the host.

**ListPoolFiles** lists a directory of the pool through one of its *live* hosts: assigned,
live, and its row HEALTHY or DEGRADED (a read-only pool can still be browsed), tried in
host-name order. The host does the listing (:mod:`node.files`: traversal refused, entries
as upstream's agent, paginated, bounded); this side validates the request first (``..``
and NUL refused, the path bounded so an entry's path stays within the limits), waits at
most :data:`LIST_TIMEOUT` seconds per host, and tries the next host only when one could
not be asked or did not answer in time. A host's refusal (NOT_FOUND, INVALID_ARGUMENT ...)
is returned as it is, prefixed with the host's name. Pages: ``page_size`` 0 means 50, at
most 500; ``next_page_token`` is an opaque cursor after the last entry, valid for the same
path only.

Only the replica holding the host's stream can ask it: a host streaming to another
replica is asked through that replica, relayed through etcd (:mod:`qvdc.api.forwarding`),
so a client gets the same answer from any replica (without a relay, UNAVAILABLE naming
the replica). A host heartbeating without a stream (upstream's agent, unary
``UpdateHeartbeat`` over Connect) is asked as upstream asks it: its
``NodeDaemonService.ListStoragePoolFiles`` on ``<management_ip>:9090``, plain gRPC, bounded
by the same timeout; its whole-directory answer (at most :data:`MAX_AGENT_ANSWER_BYTES`,
refused at its prefix, and :data:`MAX_AGENT_ENTRIES` entries, each field bounded like a
request's) is ordered and paged here.

**ReconnectPool** asks the pool's live assigned hosts whose row is not HEALTHY (ERROR,
UNMOUNTED, DEGRADED, unreported) to detach and attach the pool again at once, skipping
any backoff (``reattach_pool_ids``), and returns the pool; the outcome shows in the
pool's rows as those hosts report. Healthy hosts are left alone (re-attaching an NFS
pool unmounts it); a host streaming to another replica is told through it (the relay).
NOT_FOUND for a missing pool, FAILED_PRECONDITION when no assigned host is live;
UNAVAILABLE naming the hosts that could not be told (after the others were).
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Callable, Sequence

import grpclib.const
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.node import v1 as node_daemon
from protos.limiquantix.storage import v1 as storage
from qvdc.api import auth, paging, rpc_groups
from qvdc.api import limits as request_limits
from qvdc.api.forwarding import Forwarder
from qvdc.api.host_requests import HostRequests
from qvdc.api.pool_service import PoolMessages
from qvdc.domain import errors, limits
from qvdc.domain.limits import Limits
from qvdc.domain.model import Health, PoolRecord
from qvdc.engines.catalog import Catalog
from qvdc.engines.view import ClusterView
from qvdc.transport import bounds

#: Seconds the controller waits for a host's listing (the host gives up at 4 s itself).
LIST_TIMEOUT = 5.0
#: Seconds a re-attach request may take to send.
SEND_TIMEOUT = 5.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Upstream's agent serves NodeDaemonService here (plain gRPC, as upstream dials it).
AGENT_PORT = 9090
#: Entries an agent's whole-directory answer may hold (it does not page).
MAX_AGENT_ENTRIES = 100_000
#: Bytes an agent's answer may declare: refused at its 5-byte prefix, before its body is
#: read (``qvdc.transport.bounds``), so a host cannot make the controller buffer more.
#: Room for MAX_AGENT_ENTRIES entries of about 300 bytes.
MAX_AGENT_ANSWER_BYTES = 32 * 1024 * 1024
#: The longest path asked for: an entry's path (this plus a 255-byte name) stays within
#: the 4096 characters a host's answer may carry.
MAX_PATH = 3800

_LISTABLE = frozenset({Health.HEALTHY, Health.DEGRADED})
#: A host's status code -> the error it becomes here.
_HOST_ERRORS: dict[int, type[errors.DomainError]] = {
    3: errors.InvalidArgument,
    4: errors.DeadlineExceeded,
    5: errors.NotFound,
    8: errors.FailedPrecondition,
    9: errors.FailedPrecondition,
    14: errors.Unavailable,
}


def clean_path(path: str) -> str:
    """The pool-relative path ``path`` names, as the host reads it (node.files)."""
    if ".." in path:
        raise errors.InvalidArgument("contains '..'", field="path")
    if "\x00" in path:
        raise errors.InvalidArgument("contains a NUL character", field="path")
    if len(path) > MAX_PATH:
        raise errors.InvalidArgument(
            f"at most {MAX_PATH} characters, got {len(path)}", field="path"
        )
    relative = posixpath.normpath(path.lstrip("/")) if path.strip("/") else ""
    return "" if relative == "." else relative.lstrip("/")


def _token(path: str, entry: storage.PoolFileEntry) -> str:
    kind = "d" if entry.is_directory else "f"
    return paging.encode_token(f"{path}\x00{kind}{entry.name}")


def _order(is_directory: bool, name: str) -> tuple[bool, str, str]:
    """The listing order hosts page in (``node.files``): directories first, then by name
    without case, ties by name."""
    return (not is_directory, name.casefold(), name)


def _page(
    entries: Sequence[storage.PoolFileEntry], *, more: bool, path: str, current_path: str
) -> storage.ListPoolFilesResponse:
    """One page; its token resumes after its last entry when the listing has more."""
    return storage.ListPoolFilesResponse(
        entries=list(entries),
        current_path=current_path,
        next_page_token=_token(path, entries[-1]) if more and entries else "",
    )


def _cursor(token: str, path: str) -> tuple[bool, str] | None:
    if not token:
        return None
    text = paging.decode_token(token)
    token_path, sep, rest = text.partition("\x00")
    if not sep or not rest or rest[0] not in "df":
        raise errors.InvalidArgument("malformed page token", field="page_token")
    if token_path != path:
        raise errors.InvalidArgument("belongs to the listing of another path", field="page_token")
    return rest[0] == "d", rest[1:]


class PoolOps:
    def __init__(
        self,
        *,
        catalog: Catalog,
        view: ClusterView,
        messages: Callable[[], PoolMessages],
        requests: HostRequests,
        replica_id: str,
        list_timeout: float = LIST_TIMEOUT,
        agent_port: int = AGENT_PORT,
        agent_max_bytes: int = MAX_AGENT_ANSWER_BYTES,
        limits: Limits | None = None,
        forwarder: Forwarder | None = None,
    ) -> None:
        self._forwarder = forwarder
        self._agent_port = agent_port
        self._agent_max_bytes = agent_max_bytes
        self._limits = Limits() if limits is None else limits
        self._catalog = catalog
        self._view = view
        self._messages = messages
        self._requests = requests
        self._replica_id = replica_id
        self._list_timeout = list_timeout

    def rpcs(self) -> Sequence[rpc_groups.Rpc]:
        return [
            rpc_groups.Rpc(
                "ListPoolFiles",
                self.list_pool_files,
                storage.ListPoolFilesRequest,
                storage.ListPoolFilesResponse,
                grpclib.const.Cardinality.UNARY_UNARY,
            ),
            rpc_groups.Rpc(
                "ReconnectPool",
                self.reconnect_pool,
                storage.ReconnectPoolRequest,
                storage.StoragePool,
                grpclib.const.Cardinality.UNARY_UNARY,
            ),
        ]

    # --- helpers ------------------------------------------------------------------------

    async def _pool(self, pool_id: str, *, field: str) -> PoolRecord:
        if not pool_id:
            raise errors.InvalidArgument("is required", field=field)
        try:
            return await self._catalog.pool(pool_id)
        except errors.NotFound as exc:
            raise errors.NotFound(exc.reason, field=field) from None

    def _hostname(self, node_id: str) -> str:
        node = self._view.node(node_id)
        return node.hostname if node is not None else node_id

    def _stale(self, pool_id: str) -> frozenset[str]:
        """The hosts the pool's aggregate shows stale (silent past their grace, which the
        leader sees before the node's OFFLINE transition is written)."""
        stored = self._view.pool_status(pool_id)
        if stored is None:
            return frozenset()
        return frozenset(row.node_id for row in stored[0].rows if row.stale)

    def _live(self, node_id: str, stale: frozenset[str] = frozenset()) -> bool:
        state = self._view.node_state(node_id)
        return state is not None and state.live and node_id not in stale

    def _unreachable(self, node_ids: Sequence[str]) -> errors.DomainError:
        """Why none of ``node_ids`` (live hosts) can be asked from this replica."""
        elsewhere: dict[str, list[str]] = {}
        streamless = []
        for node_id in node_ids:
            state = self._view.node_state(node_id)
            owner = state.owner_replica if state is not None else ""
            if owner and owner != self._replica_id:
                elsewhere.setdefault(owner, []).append(self._hostname(node_id))
            else:
                streamless.append(self._hostname(node_id))
        if elsewhere:
            where = "; ".join(
                f"{', '.join(sorted(hosts))} on replica {replica}"
                for replica, hosts in sorted(elsewhere.items())
            )
            return errors.Unavailable(
                f"the heartbeat streams of the pool's live hosts are on other replicas "
                f"({where}), not on {self._replica_id}: ask that replica"
            )
        return errors.FailedPrecondition(
            f"host(s) {', '.join(sorted(streamless))} have no heartbeat stream (an agent "
            "heartbeating by unary UpdateHeartbeat); only hosts streaming their heartbeats "
            "can be asked"
        )

    # --- ListPoolFiles ------------------------------------------------------------------

    async def list_pool_files(
        self, request: storage.ListPoolFilesRequest
    ) -> storage.ListPoolFilesResponse:
        record = await self._pool(request.pool_id, field="pool_id")
        path = clean_path(request.path)
        if request.page_size < 0:
            raise errors.InvalidArgument("must not be negative", field="page_size")
        limit = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _cursor(request.page_token, path)
        hosts = sorted(self._listable_hosts(record.id), key=self._hostname)
        if not hosts:
            raise errors.FailedPrecondition(
                f"no live host has pool {limits.quote(record.id)} mounted "
                f"({self._describe_hosts(record.id)})",
                field="pool_id",
            )
        reachable = [n for n in hosts if self._requests.connected(n)]
        reachable += [n for n in hosts if n not in reachable and self._relayed(n)]
        if not reachable:
            agents = [n for n in hosts if self._owner(n) in ("", self._replica_id)]
            if not agents:
                raise self._unreachable(hosts)
            return await self._list_through_agents(
                agents, pool_id=record.id, path=path, after=after, limit=limit
            )
        failure: errors.DomainError | None = None
        for node_id in reachable:
            host = self._hostname(node_id)
            question = compute.ListFilesRequest(
                pool_id=record.id,
                path=path,
                after_name=after[1] if after else "",
                after_is_directory=after[0] if after else False,
                limit=limit,
            )
            try:
                if self._requests.connected(node_id):
                    result = await self._requests.list_files(
                        node_id, question, timeout=self._list_timeout, host=host
                    )
                else:
                    assert self._forwarder is not None
                    result = await self._forwarder.list_files(
                        self._owner(node_id),
                        node_id,
                        question,
                        timeout=self._list_timeout,
                        host=host,
                    )
            except (errors.Unavailable, errors.DeadlineExceeded) as exc:
                failure = exc  # this host could not answer: the next one may
                continue
            if result.error_code:
                kind = _HOST_ERRORS.get(result.error_code, errors.Unavailable)
                raise kind(f"host {host}: {result.error_message or 'listing failed'}")
            return _page(
                result.entries[:limit],
                more=result.more or len(result.entries) > limit,
                path=path,
                current_path=result.current_path,
            )
        assert failure is not None
        raise failure

    def _owner(self, node_id: str) -> str:
        state = self._view.node_state(node_id)
        return state.owner_replica if state is not None else ""

    def _relayed(self, node_id: str) -> bool:
        """``node_id`` streams to another replica that can be asked through etcd."""
        owner = self._owner(node_id)
        return self._forwarder is not None and owner not in ("", self._replica_id)

    async def _list_through_agents(
        self,
        node_ids: Sequence[str],
        *,
        pool_id: str,
        path: str,
        after: tuple[bool, str] | None,
        limit: int,
    ) -> storage.ListPoolFilesResponse:
        """Hosts without a heartbeat stream (upstream's agent): its
        ``NodeDaemonService.ListStoragePoolFiles`` on ``<management_ip>:9090``, which
        answers the whole directory; ordered, paged and bounded here."""
        failure: errors.DomainError | None = None
        for node_id in node_ids:
            try:
                answer = await self._ask_agent(node_id, pool_id=pool_id, path=path)
            except (errors.Unavailable, errors.DeadlineExceeded) as exc:
                failure = exc
                continue
            ordered = sorted(answer.entries, key=lambda e: _order(e.is_directory, e.name))
            if after is not None:
                cursor = _order(*after)
                ordered = [e for e in ordered if _order(e.is_directory, e.name) > cursor]
            entries = [
                storage.PoolFileEntry(
                    name=e.name,
                    path=e.path,
                    is_directory=e.is_directory,
                    size_bytes=e.size_bytes,
                    modified_at=e.modified_at,
                    file_type=e.file_type,
                    permissions=e.permissions,
                )
                for e in ordered[:limit]
            ]
            return _page(
                entries, more=len(ordered) > limit, path=path, current_path=answer.current_path
            )
        assert failure is not None
        raise failure

    async def _ask_agent(
        self, node_id: str, *, pool_id: str, path: str
    ) -> node_daemon.ListStoragePoolFilesResponse:
        host = self._hostname(node_id)
        record = self._view.node(node_id)
        address = record.management_ip if record is not None else ""
        if not address:
            raise errors.Unavailable(f"host {host} has no management address to reach")
        where = f"{address}:{self._agent_port}"
        channel = bounds.bounded_channel(
            address, self._agent_port, max_message_bytes=self._agent_max_bytes
        )
        try:
            stub = node_daemon.NodeDaemonServiceStub(channel)
            async with asyncio.timeout(self._list_timeout):
                answer = await stub.list_storage_pool_files(
                    node_daemon.ListStoragePoolFilesRequest(pool_id=pool_id, path=path)
                )
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"host {host}'s agent at {where} did not answer within {self._list_timeout:g}s"
            ) from None
        except GRPCError as exc:
            kind = _HOST_ERRORS.get(exc.status.value, errors.Unavailable)
            if exc.status is Status.UNIMPLEMENTED:
                kind = errors.FailedPrecondition
            said = limits.quote(exc.message or exc.status.name)
            if exc.status is Status.RESOURCE_EXHAUSTED:  # our bound, or the agent's own
                raise errors.FailedPrecondition(
                    f"host {host}'s agent answered too much ({said}); list a subdirectory"
                ) from None
            raise kind(f"host {host}: {said}") from None
        except Exception as exc:  # noqa: BLE001 - connection refused, reset, protocol errors
            raise errors.Unavailable(
                f"cannot reach host {host}'s agent at {where}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            channel.close()
        if len(answer.entries) > MAX_AGENT_ENTRIES:
            raise errors.FailedPrecondition(
                f"host {host}: the directory has more than {MAX_AGENT_ENTRIES} entries; "
                "list a subdirectory"
            )
        try:  # its strings bounded like a request's
            request_limits.check(
                node_daemon.ListStoragePoolFilesResponse(current_path=answer.current_path),
                self._limits,
            )
            for entry in answer.entries:
                request_limits.check(entry, self._limits)
        except errors.InvalidArgument as exc:
            raise errors.Unavailable(
                f"host {host}'s agent answered an invalid listing: {exc}"
            ) from None
        return answer

    def _listable_hosts(self, pool_id: str) -> list[str]:
        out = []
        stale = self._stale(pool_id)
        for node_id in self._view.nodes_assigned_to(pool_id):
            row = self._view.host_status(pool_id, node_id)
            if self._live(node_id, stale) and row is not None and row.report.health in _LISTABLE:
                out.append(node_id)
        return out

    def _describe_hosts(self, pool_id: str) -> str:
        assigned = sorted(self._view.nodes_assigned_to(pool_id), key=self._hostname)
        if not assigned:
            return "it is assigned to no host"
        parts = []
        stale = self._stale(pool_id)
        for node_id in assigned[:8]:
            row = self._view.host_status(pool_id, node_id)
            health = row.report.health.name if row is not None else "not reported"
            parts.append(
                f"{self._hostname(node_id)}: {health}"
                + ("" if self._live(node_id, stale) else ", not live")
            )
        more = f", and {len(assigned) - 8} more" if len(assigned) > 8 else ""
        return "assigned hosts " + "; ".join(parts) + more

    # --- ReconnectPool ------------------------------------------------------------------

    async def reconnect_pool(self, request: storage.ReconnectPoolRequest) -> storage.StoragePool:
        record = await self._pool(request.id, field="id")
        assigned = sorted(self._view.nodes_assigned_to(record.id), key=self._hostname)
        stale = self._stale(record.id)
        live = [n for n in assigned if self._live(n, stale)]
        if not live:
            raise errors.FailedPrecondition(
                f"no live host to re-attach pool {limits.quote(record.id)} on "
                f"({self._describe_hosts(record.id)})",
                field="id",
            )
        targets = []
        for node_id in live:
            row = self._view.host_status(record.id, node_id)
            if row is None or row.report.health is not Health.HEALTHY:
                targets.append(node_id)
        sent: list[str] = []
        missed: list[str] = []
        for node_id in targets:
            if self._requests.connected(node_id) or not self._relayed(node_id):
                ok = await self._requests.reattach(node_id, [record.id], timeout=SEND_TIMEOUT)
            else:
                assert self._forwarder is not None
                ok = await self._forwarder.reattach(
                    self._owner(node_id),
                    node_id,
                    [record.id],
                    timeout=SEND_TIMEOUT,
                    host=self._hostname(node_id),
                )
            (sent if ok else missed).append(node_id)
        auth.audit(
            "ReconnectPool",
            target=f"pool {record.id}",
            detail=(
                f"re-attach sent to {', '.join(self._hostname(n) for n in sent)}"
                if sent
                else "every live host is HEALTHY: nothing to re-attach"
                if not targets
                else "re-attach sent to no host"
            ),
        )
        if missed:
            raise self._unreachable(missed)
        return self._messages().full(await self._catalog.pool(record.id))
