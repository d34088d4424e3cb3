"""The status page: pools, their per-host rows and the nodes, live, read-only, on the HTTP port.

Served under ``/status`` (:class:`qvdc.http.server.Router`'s ``pages``):

* ``GET /status``: one static HTML page (``static/status.html``) with its script and
  style sheet (``/status/status.js``, ``/status/status.css``, package data); no build
  step, no third-party code. The script renders with ``textContent`` only, never
  ``innerHTML``, and the page's Content-Security-Policy allows no inline script and no
  other origin, so a hostile hostname, mount path or message shows as text.
* ``GET /status/snapshot.json``: the state the page shows, as JSON (also for ``curl``).
* ``GET /status/events``: the same as Server-Sent Events: the current state at once,
  then a new one whenever the replica's view changed (etcd's watch: a report that
  materially changed, a row turning stale, a node disabled), at most once per
  ``min_interval``, and at least every ``refresh`` the heartbeat times are looked at
  again. One snapshot is built for all streams; at most ``max_streams`` streams are open
  (503 beyond: the page then polls ``snapshot.json``), and each send has ``send_timeout``:
  a browser that does not read is dropped, and no one else waits for it.

The snapshot comes from the replica's own memory (:class:`qvdc.engines.view.ClusterView`
and the liveness monitor's heartbeat times), never from etcd, and is bounded:
``max_pools`` pools, ``max_rows`` host rows per pool (the rows that are not healthy
first) and ``max_rows_total`` in all, ``max_nodes`` nodes, each list saying how many it
left out. It is built in slices with a yield to the event loop between them, so a page
open on a large fleet does not stall heartbeats. It carries no secret:
pool definitions are not included at all (no backend configuration, so no CHAP password).

Who may see it (docs/security.md): the same callers as ``ListPools``, through the HTTP
port's gate. With authorization on that is an operator, ``viewer`` or ``admin``, by
bearer token over HTTPS: ``Authorization: Bearer <token>``, or, for a browser, HTTP Basic
with the token as the password (the page answers 401 with a Basic challenge, so the
browser asks). GET and HEAD only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import heapq
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from grpclib.const import Status

from qvdc.api import auth
from qvdc.domain.aggregation import shown_phase
from qvdc.domain.model import (
    OPERATOR_PHASES,
    Health,
    HostRow,
    NodePhase,
    PoolAggregate,
    PoolPhase,
    PoolRecord,
)
from qvdc.engines.view import ClusterView
from qvdc.http.gate import Gate
from qvdc.http.server import Receive, Send
from qvdc.kits.tasks import cancel_and_wait
from qvdc.store import keys

log = logging.getLogger(__name__)

PREFIX = "/status"
#: Who may see the page: the callers of this RPC (a read: any operator).
RPC = "/limiquantix.storage.v1.StoragePoolService/ListPools"


_STATIC = {
    "": ("status.html", b"text/html; charset=utf-8"),
    "/status.js": ("status.js", b"text/javascript; charset=utf-8"),
    "/status.css": ("status.css", b"text/css; charset=utf-8"),
}
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
_REALM = b'Basic realm="QvDC status", charset="UTF-8"'
#: Nodes or rows built between two yields to the event loop.
SLICE = 500


@dataclass(frozen=True, slots=True)
class PageLimits:
    """How much one snapshot shows, and how the event streams are paced."""

    max_pools: int = 200
    max_rows: int = 500
    #: Rows of all pools together (the later pools show fewer, saying how many they hide).
    max_rows_total: int = 5000
    max_nodes: int = 1000
    max_streams: int = 32
    min_interval: float = 1.0
    refresh: float = 5.0
    keepalive: float = 15.0
    send_timeout: float = 5.0


def _row_state(row: HostRow, node_phase: NodePhase | None) -> str:
    """The one word a row is coloured by: maintenance and stale win over the health."""
    if node_phase in OPERATOR_PHASES:
        return "maintenance"
    if row.stale:
        return "stale"
    if row.pending:
        return "pending"
    health = row.report.health
    if health is Health.HEALTHY:
        return "healthy"
    if health is Health.DEGRADED:
        return "degraded"
    if health is Health.UNKNOWN:
        return "unknown"
    return "error"


_POOL_STATE = {
    PoolPhase.READY: "healthy",
    PoolPhase.DEGRADED: "degraded",
    PoolPhase.ERROR: "error",
    PoolPhase.PENDING: "pending",
    PoolPhase.UNKNOWN: "unknown",
    PoolPhase.DELETING: "maintenance",
}


def _time(ts: float | None) -> float | None:
    return round(ts, 3) if ts else None


class Snapshots:
    """Builds the page's state from the replica's memory (module docstring)."""

    def __init__(
        self,
        *,
        view: ClusterView,
        heard_at: Callable[[str], float | None],
        limits: PageLimits,
        replica_id: str = "",
    ) -> None:
        self._view = view
        self._heard_at = heard_at
        self._limits = limits
        self._replica_id = replica_id

    def _last_heartbeat(self, node_id: str) -> float | None:
        heard = self._heard_at(node_id)
        if heard is None:
            state = self._view.node_state(node_id)
            heard = state.last_heartbeat_at if state is not None else None
        return heard

    async def build(self) -> dict[str, Any]:
        """The state, built in slices of ``SLICE`` nodes or rows with a yield to the event
        loop between them, so a large fleet does not stall the heartbeat path (the view
        may change meanwhile: the next change builds again)."""
        view = self._view
        limits = self._limits
        hostnames: dict[str, str] = {}
        phases: dict[str, NodePhase] = {}
        listed = view.cache.scan(keys.NODES)  # a list: changes meanwhile do not disturb it
        records = []
        for i, kv in enumerate(listed):
            if i and i % SLICE == 0:
                await asyncio.sleep(0)
            record = view.node(kv.key[len(keys.NODES) :])
            if record is None:
                continue
            records.append(record)
            hostnames[record.id] = record.hostname
            state = view.node_state(record.id)
            phases[record.id] = state.phase if state is not None else NodePhase.UNKNOWN
        nodes: list[dict[str, Any]] = []
        for record in heapq.nsmallest(limits.max_nodes, records, key=lambda n: n.hostname):
            state = view.node_state(record.id)
            nodes.append(
                {
                    "id": record.id,
                    "hostname": record.hostname,
                    "management_ip": record.management_ip,
                    "phase": phases[record.id].name,
                    "live": state.live if state is not None else False,
                    "reason": state.maintenance_reason if state is not None else "",
                    "heartbeat_at": _time(self._last_heartbeat(record.id)),
                    "pools": len(view.assigned_pool_ids(record.id)),
                }
            )
        pools = sorted(view.pools(), key=lambda p: p.name)
        budget = limits.max_rows_total
        shown_pools = []
        for pool in pools[: limits.max_pools]:
            shown = await self._pool(pool, hostnames, phases, max_rows=min(limits.max_rows, budget))
            budget -= len(shown["rows"])
            shown_pools.append(shown)
        return {
            "replica": self._replica_id,
            "listed": view.cache.ready,
            "pools": shown_pools,
            "pools_hidden": max(0, len(pools) - limits.max_pools),
            "nodes": nodes,
            "nodes_hidden": len(records) - len(nodes),
        }

    async def _pool(
        self,
        record: PoolRecord,
        hostnames: Mapping[str, str],
        phases: Mapping[str, NodePhase],
        *,
        max_rows: int,
    ) -> dict[str, Any]:
        stored = self._view.pool_status(record.id)
        aggregate: PoolAggregate | None = stored[0] if stored is not None else None
        assigned = len(record.assigned_node_ids)
        out: dict[str, Any] = {
            "id": record.id,
            "name": record.name,
            "backend": record.backend.name,
            "assigned": assigned,
            "deleting": record.deleting,
        }
        pool_phase = shown_phase(aggregate, deleting=record.deleting)
        if aggregate is None:  # not aggregated yet: just created, or the leader catching up
            out.update(
                phase=pool_phase.name,
                state=_POOL_STATE[pool_phase],
                message="",
                healthy=0,
                rows=[],
            )
            out.update(used_bytes=0, total_bytes=0, volumes=0, rows_hidden=0, updated_at=None)
            return out
        rows = []
        for i, row in enumerate(aggregate.rows):
            if i and i % SLICE == 0:
                await asyncio.sleep(0)
            phase = phases.get(row.node_id)
            rows.append((row, _row_state(row, phase), phase))
        shown = heapq.nsmallest(
            max_rows,
            rows,
            key=lambda r: (r[1] == "healthy", hostnames.get(r[0].node_id, r[0].node_id)),
        )
        cap = aggregate.capacity
        out.update(
            phase=pool_phase.name,
            state=_POOL_STATE.get(pool_phase, "unknown"),
            message=aggregate.error_message,
            healthy=len(aggregate.healthy_node_ids),
            used_bytes=cap.used_bytes,
            total_bytes=cap.total_bytes,
            volumes=aggregate.volume_count,
            updated_at=_time(stored[1] if stored is not None else None),
            rows_hidden=len(rows) - len(shown),
            rows=[
                {
                    "node_id": row.node_id,
                    "hostname": hostnames.get(row.node_id, ""),
                    "health": row.report.health.name,
                    "state": state,
                    "node_phase": phase.name if phase is not None else "UNKNOWN",
                    "stale": row.stale,
                    "assigned": row.assigned,
                    "mount_path": row.report.mount_path,
                    "used_bytes": row.report.used_bytes,
                    "total_bytes": row.report.total_bytes,
                    "volumes": row.report.volume_count,
                    "message": row.report.error_message,
                    "changed_at": _time(row.changed_at),
                    "reported_at": _time(self._last_heartbeat(row.node_id)),
                }
                for row, state, phase in shown
            ],
        )
        return out


def _credentials(headers: Mapping[str, str]) -> str | None:
    """The ``Authorization`` header for the gate: a Basic one becomes the bearer token it
    carries as its password (a browser has no other way to send a token)."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return value
    try:
        decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "Bearer "  # malformed: refused by the gate as an empty token
    return f"Bearer {decoded.partition(':')[2]}"


class StatusPage:
    """The ASGI handler of ``/status`` (module docstring). :meth:`close` ends the event
    streams, so that the server's shutdown does not wait for browsers."""

    def __init__(
        self,
        *,
        view: ClusterView,
        heard_at: Callable[[str], float | None],
        gate: Gate | None,
        replica_id: str = "",
        limits: PageLimits | None = None,
    ) -> None:
        self.limits = limits or PageLimits()
        self._snapshots = Snapshots(
            view=view, heard_at=heard_at, limits=self.limits, replica_id=replica_id
        )
        self._gate = gate
        self._static: dict[str, bytes] = {}
        self._body = b""
        self._version = 0
        self._built = float("-inf")
        self._dirty = True
        self._changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._building = asyncio.Lock()
        #: Open event streams.
        self.streams = 0
        view.subscribe(self._on_change)

    def _on_change(self, *_args: object) -> None:
        self._dirty = True
        self._changed.set()

    def close(self) -> None:
        """End every event stream (each sends its last chunk) and refuse new ones."""
        self._closing.set()

    # --- the state --------------------------------------------------------------------

    async def current(self) -> tuple[bytes, int]:
        """The latest state as JSON and its version, rebuilt when the view changed (at most
        once per ``min_interval``) or ``refresh`` has passed; one build at a time, shared
        by every stream and request that asks meanwhile."""
        async with self._building:
            now = time.monotonic()
            age = now - self._built
            if (self._dirty and age >= self.limits.min_interval) or age >= self.limits.refresh:
                self._dirty = False
                self._changed.clear()
                self._built = now
                try:
                    state = await self._snapshots.build()
                except BaseException:  # cancelled (the server closing) or failed: next time
                    self._dirty = True
                    raise
                body = json.dumps(state, separators=(",", ":")).encode()
                if body != self._body:
                    self._body = body
                    self._version += 1
            return self._body, self._version

    def _framed(self, body: bytes) -> bytes:
        """``body`` with the server's time, for ages that do not depend on the browser's clock."""
        return b'{"now":%.3f,"state":%s}' % (time.time(), body)

    async def _next_change(self) -> None:
        """Return when :meth:`current` may have something new."""
        limits = self.limits
        while True:
            now = time.monotonic()
            if self._dirty:
                await asyncio.sleep(max(0.0, self._built + limits.min_interval - now))
                return
            refresh_in = self._built + limits.refresh - now
            if refresh_in <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(refresh_in):
                    await self._changed.wait()

    # --- HTTP -------------------------------------------------------------------------

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        path = scope["path"][len(PREFIX) :]
        if scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, b"GET only\n", extra=[(b"allow", b"GET, HEAD")])
            return
        if path not in (*_STATIC, "/", "/snapshot.json", "/events"):
            await _answer(send, 404, b"not found\n")
            return
        if not await self._admitted(scope, send):
            return
        head = scope["method"] == "HEAD"
        if path == "/snapshot.json":
            body, _ = await self.current()
            await _answer(send, 200, self._framed(body), b"application/json", head=head)
        elif path == "/events":
            await self._events(receive, send, head=head)
        else:
            name, kind = _STATIC[path.rstrip("/")]
            await _answer(send, 200, self._asset(name), kind, head=head)

    def _asset(self, name: str) -> bytes:
        data = self._static.get(name)
        if data is None:
            data = resources.files("qvdc.http").joinpath("static", name).read_bytes()
            self._static[name] = data
        return data

    async def _admitted(self, scope: Mapping[str, Any], send: Send) -> bool:
        if self._gate is None:
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else None
        try:
            self._gate(RPC, None, authorization=_credentials(headers), client=peer)
        except auth.Denied as denied:
            text = f"{denied.message}\n".encode()
            if denied.status is Status.UNAUTHENTICATED:
                extra = [(b"www-authenticate", _REALM)]
                await _answer(send, 401, text, extra=extra)
            else:
                await _answer(send, 403, text)
            return False
        return True

    async def _events(self, receive: Receive, send: Send, *, head: bool) -> None:
        limits = self.limits
        if self._closing.is_set() or self.streams >= limits.max_streams:
            why = "stopping" if self._closing.is_set() else f"{limits.max_streams} open already"
            text = f"no more status streams ({why}); poll {PREFIX}/snapshot.json\n".encode()
            await _answer(send, 503, text, extra=[(b"retry-after", b"10")])
            return
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"x-accel-buffering", b"no"),
            *_SECURITY_HEADERS,
        ]
        if head:
            await _answer(send, 200, b"", b"text/event-stream; charset=utf-8", head=True)
            return
        self.streams += 1
        gone = asyncio.ensure_future(_disconnected(receive))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            async with asyncio.timeout(limits.send_timeout):
                await send({"type": "http.response.start", "status": 200, "headers": headers})
            sent, last_send = 0, time.monotonic()
            while True:
                body, version = await self.current()
                chunk = b""
                if version != sent:
                    chunk = b"retry: 3000\nevent: state\ndata: %s\n\n" % self._framed(body)
                    sent = version
                elif time.monotonic() - last_send >= limits.keepalive:
                    chunk = b": keepalive\n\n"
                if chunk:
                    async with asyncio.timeout(limits.send_timeout):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    last_send = time.monotonic()
                change = asyncio.ensure_future(self._next_change())
                try:
                    await asyncio.wait({change, gone, closing}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await cancel_and_wait(change)
                if gone.done():
                    return
                if closing.done():
                    async with asyncio.timeout(limits.send_timeout):
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
        except TimeoutError:
            log.info(
                "dropped a status-page stream: its client took over %g s to take an update",
                limits.send_timeout,
            )
        finally:
            self.streams -= 1
            await cancel_and_wait(gone, closing)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(
    send: Send,
    status: int,
    body: bytes,
    kind: bytes = b"text/plain; charset=utf-8",
    *,
    head: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", kind),
        (b"content-length", str(len(body)).encode()),
        *_SECURITY_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})
