"""``qvdcctl``: the operator's command line for QvDC (click + rich, a pure gRPC client).

    qvdcctl [--controller HOST[:PORT]] pools list|get|create|update|delete|assign|unassign|metrics
    qvdcctl nodes list|get|enable|disable
    qvdcctl status | watch [--once] | context show|controller|etcd-endpoint
    qvdcctl certs init|issue-node|issue-operator|issue-server

Pools and nodes are named by id or by name / hostname (resolved with ListPools /
ListNodes). The controller is the ``--controller`` flag, else ``QVDC_CONTROLLER``,
else the context file ``make run`` writes (``$QVDC_CONTEXT``, ``./.run/context.json``,
``~/.config/qvdc/context.json``), else 127.0.0.1:7443; a host without a port
means port 7443.

``--watch`` (``pools list``, ``pools get``, ``nodes list``, ``nodes get``, and ``watch``)
follows the controller's watch RPCs (WatchPools, WatchNodes, WatchNode): the table is
redrawn after each burst of changes (rich Live on a terminal, one frame after another
otherwise; with ``-o json`` one JSON line per update). When the stream ends UNAVAILABLE
or RESOURCE_EXHAUSTED, or the connection breaks, it re-watches with backoff (0.5 s
doubling to 10 s) and the initial state it gets again replaces the table, so a replica
dying loses nothing. Ctrl-C exits 0; ``nodes get --watch`` exits 1 (NOT_FOUND) when the
node is deleted, ``pools get --watch`` 0 when the pool is.
A controller without the watch RPCs (an older build) is an error: run without ``--watch``.

TLS: ``--tls-ca`` (the controller's CA) with the operator's ``--tls-cert``/``--tls-key``
(``QVDCCTL_TLS_CA``/``_CERT``/``_KEY``, else the context file's ``tls_ca``/``tls_cert``/
``tls_key``, relative to the file); plain text only with ``--insecure``
(``QVDCCTL_INSECURE=1``). A call with neither is a usage error (docs/security.md). The
variables are not ``QVDC_TLS_*``: those configure the controller's own ``tls.*``.
An operator without a certificate gives a bearer token instead: ``--token-file``
(``QVDCCTL_TOKEN_FILE``, else the context file's ``token_file``), a file holding an
operator token of the controller's ``auth.tokens_file``; it is sent as
``authorization: Bearer <token>`` on every call, and only over TLS.

Exit status: 0 on success, 1 when the controller answers with an error (its gRPC
status and message are printed), 2 on bad usage, 3 when the controller cannot be
reached. Bad input never ends in a traceback.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import io
import json
import os
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import grpclib.client
import grpclib.const
import grpclib.exceptions
import yaml
from grpclib.exceptions import GRPCError
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from protos.google import protobuf
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc import cli_certs, cli_secrets
from qvdc.transport import tls

RPC_TIMEOUT = 10.0
DEFAULT_PORT = 7443
DEFAULT_CONTROLLER = f"127.0.0.1:{DEFAULT_PORT}"
EXIT_OK, EXIT_CONTROLLER, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
VERSION = "0.1.0"

T = TypeVar("T")

HEALTH_STYLE = {
    "HEALTHY": "green",
    "READY": "green",
    "DEGRADED": "yellow",
    "PENDING": "yellow",
    "MAINTENANCE": "cyan",
    "DRAINING": "cyan",
    "UNKNOWN": "magenta",
    "STALE": "magenta",
}


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _age(ts: dt.datetime | None, now: dt.datetime) -> str:
    if ts is None:
        return "-"
    seconds = max(0, int((now - ts).total_seconds()))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _styled(word: str) -> Text:
    return Text(word, style=HEALTH_STYLE.get(word.split(" ")[0], "red"))


def _render(table: Table, *, color: bool) -> str:
    buf = io.StringIO()
    console = Console(
        file=buf, width=220, force_terminal=color, no_color=not color, highlight=False
    )
    console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


def render_pools(
    pools: Sequence[storage.StoragePool],
    *,
    nodes: Sequence[compute.Node] = (),
    now: dt.datetime | None = None,
    wide: bool = False,
    color: bool = False,
) -> str:
    """The pool table: one row per pool, then one indented row per host.

    A host row says STALE when its report is not live and MAINTENANCE / DRAINING
    when the operator disabled the node, so neither hides behind HEALTHY.
    """
    now = now or dt.datetime.now(tz=dt.UTC)
    node_phase = {n.id: (n.status or compute.NodeStatus()).phase.name for n in nodes}
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("POOL / HOST", "BACKEND", "PHASE", "USED / TOTAL", "VOLS", "HOSTS / PATH"):
        table.add_column(col, no_wrap=True)
    table.add_column("CHANGED", no_wrap=True)
    if wide:
        table.add_column("ID", no_wrap=True)
    if not pools:
        table.add_row("(no pools)", *[""] * (len(table.columns) - 1))
    for pool in pools:
        status = pool.status or storage.StoragePoolStatus()
        cap = status.capacity or storage.StorageCapacity()
        backend = pool.spec.backend.type.name if pool.spec and pool.spec.backend else "-"
        assigned = len(pool.spec.assigned_node_ids) if pool.spec else 0
        row: list[str | Text] = [
            pool.name,
            backend,
            _styled(status.phase.name),
            f"{human_bytes(cap.used_bytes)} / {human_bytes(cap.total_bytes)}",
            str(status.volume_count),
            f"{len(status.healthy_node_ids)}/{assigned} healthy",
            "",
        ]
        table.add_row(*row, *([pool.id] if wide else []))
        if status.error_message:
            table.add_row(Text(f"  ! {status.error_message}", style="red"))
        for host in status.host_statuses:
            flags = []
            if host.stale:
                flags.append("STALE")
            if node_phase.get(host.node_id) in ("MAINTENANCE", "DRAINING"):
                flags.append(node_phase[host.node_id])
            if not host.assigned:
                flags.append("unassigned")
            health = host.health.name + (f" ({', '.join(flags)})" if flags else "")
            word = flags[0] if flags and flags[0] != "unassigned" else host.health.name
            hrow: list[str | Text] = [
                f"  {host.hostname or host.node_id[:8]}",
                "",
                Text(health, style=HEALTH_STYLE.get(word, "red")),
                f"{human_bytes(host.used_bytes)} / {human_bytes(host.total_bytes)}",
                str(host.volume_count),
                (host.mount_path or "-")
                + (f"  {host.error_message}" if host.error_message else ""),
                _age(host.last_changed, now),
            ]
            table.add_row(*hrow, *([host.node_id] if wide else []))
    return _render(table, color=color)


def node_roles(node: compute.Node) -> str:
    """``compute,storage,control-plane`` (the roles set), plus ``unschedulable``."""
    spec = node.spec or compute.NodeSpec()
    role = spec.role or compute.NodeRole()
    names = [
        n
        for n, on in (
            ("compute", role.compute),
            ("storage", role.storage),
            ("control-plane", role.control_plane),
        )
        if on
    ]
    if spec.scheduling is not None and not spec.scheduling.schedulable:
        names.append("unschedulable")
    return ",".join(names)


def node_taints(node: compute.Node) -> str:
    """``key=value:Effect,...`` as ``nodes taint`` takes them."""
    scheduling = (node.spec or compute.NodeSpec()).scheduling or compute.SchedulingConfig()
    effects = {
        compute.TaintEffect.NO_SCHEDULE: "NoSchedule",
        compute.TaintEffect.PREFER_NO_SCHEDULE: "PreferNoSchedule",
        compute.TaintEffect.NO_EXECUTE: "NoExecute",
    }
    return ",".join(
        f"{t.key}{'=' + t.value if t.value else ''}:{effects.get(t.effect, t.effect.name)}"
        for t in scheduling.taints
    )


def render_nodes(nodes: Sequence[compute.Node], *, wide: bool = False, color: bool = False) -> str:
    table = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("HOSTNAME", "PHASE", "MANAGEMENT IP", "LAST HEARTBEAT", "ID"):
        table.add_column(col, no_wrap=True)
    if wide:
        for col in ("ROLES", "TAINTS", "LABELS"):
            table.add_column(col, no_wrap=True)
    if not nodes:
        table.add_row("(no nodes)", "", "", "", "", *(["", "", ""] if wide else []))
    for node in nodes:
        st = node.status or compute.NodeStatus()
        beat = st.last_heartbeat.isoformat(timespec="seconds") if st.last_heartbeat else "-"
        extra = (
            [
                node_roles(node) or "-",
                node_taints(node) or "-",
                ",".join(f"{k}={v}" for k, v in sorted(node.labels.items())),
            ]
            if wide
            else []
        )
        table.add_row(
            node.hostname, _styled(st.phase.name), node.management_ip or "-", beat, node.id, *extra
        )
    return _render(table, color=color)


# ---- endpoint and context ---------------------------------------------------------------


def context_paths() -> list[Path]:
    env = os.environ.get("QVDC_CONTEXT")
    if env:
        return [Path(env)]
    return [Path.cwd() / ".run" / "context.json", Path.home() / ".config/qvdc/context.json"]


def load_context() -> dict[str, Any]:
    return load_context_file()[0]


def load_context_file() -> tuple[dict[str, Any], Path | None]:
    """The first readable context file's contents, and its path."""
    for path in context_paths():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data, path
    return {}, None


TLS_KEYS = ("tls_ca", "tls_cert", "tls_key", "token_file")
"""The context file's credential fields (paths, relative to the file's directory)."""


def tls_files(
    flags: dict[str, Path | None], context: dict[str, Any], where: Path | None
) -> dict[str, Path | None]:
    """``tls_ca``/``tls_cert``/``tls_key``/``token_file``: each flag (or its variable), else
    the context's."""
    out: dict[str, Path | None] = {}
    for key in TLS_KEYS:
        value = flags.get(key)
        if value is None and isinstance(context.get(key), str) and context[key]:
            value = Path(context[key])
            if where is not None and not value.is_absolute():
                value = where.parent / value
        out[key] = value
    return out


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host[:port]`` (``[v6]:port`` too); the port defaults to 7443."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise click.BadParameter(f"'{text}': no host", param_hint="--controller")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise click.BadParameter(f"'{text}': the port must be 1-65535", param_hint="--controller")
    return host, int(port_text)


class Ctx:
    def __init__(
        self,
        controller: str,
        *,
        tls_files: dict[str, Path | None] | None = None,
        insecure: bool = False,
    ) -> None:
        self.controller = controller
        self.host, self.port = parse_endpoint(controller)
        self.color = sys.stdout.isatty()
        self.tls_files = tls_files or {}
        self.insecure = insecure

    def metadata(self) -> dict[str, str] | None:
        """``authorization: Bearer <token>`` from ``--token-file`` (None without one); a
        usage error if the file cannot be read, holds no token, or the call is plain text."""
        path = self.tls_files.get("token_file")
        if path is None:
            return None
        if self.insecure:
            _fail(EXIT_USAGE, "--token-file needs TLS: a token is never sent in plain text")
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            _fail(EXIT_USAGE, f"cannot read the token file {path}: {exc}")
            raise AssertionError("unreachable") from exc
        if not token or any(c.isspace() for c in token) or not token.isprintable():
            _fail(EXIT_USAGE, f"the token file {path} holds no token (one line, no spaces)")
        return {"authorization": f"Bearer {token}"}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (None with ``--insecure``); a usage error without either."""
        if self.insecure:
            return None
        ca, cert, key = (self.tls_files.get(k) for k in TLS_KEYS[:3])
        if ca is None:
            _fail(
                EXIT_USAGE,
                "no TLS configured: give --tls-ca (and --tls-cert/--tls-key), or --insecure "
                "for a plain-text controller",
            )
            raise AssertionError("unreachable")
        try:
            return tls.client_context(ca=ca, cert=cert, key=key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            _fail(EXIT_USAGE, f"cannot load the TLS files ({ca}, {cert}, {key}): {exc}")
            raise AssertionError("unreachable") from exc


def _fail(code: int, message: str) -> None:
    click.echo(f"qvdcctl: {message}", err=True)
    raise SystemExit(code)


def rpc(ctx: Ctx, body: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``body`` with a connected client; map errors to the documented exit codes."""

    context = ctx.ssl_context()
    metadata = ctx.metadata()

    async def go() -> T:
        channel = grpclib.client.Channel(ctx.host, ctx.port, ssl=context)
        try:
            return await body(Client(channel, metadata=metadata))
        finally:
            tls.close_at_once(channel)  # the loop ends next: no TLS close_notify exchange

    try:
        return asyncio.run(go())
    except GRPCError as exc:
        _fail(EXIT_CONTROLLER, f"{exc.status.name}: {exc.message}")
    except (OSError, TimeoutError, grpclib.exceptions.StreamTerminatedError) as exc:
        hint = ""
        if context is not None and isinstance(exc, grpclib.exceptions.StreamTerminatedError):
            # TLS 1.3: a refused client certificate shows as the connection closed.
            hint = " (over TLS: the controller may have refused this client's certificate)"
        _fail(EXIT_UNREACHABLE, f"cannot reach the controller at {ctx.controller}: {exc}{hint}")
    raise AssertionError("unreachable")


class Client:
    def __init__(
        self, channel: grpclib.client.Channel, *, metadata: dict[str, str] | None = None
    ) -> None:
        #: The call metadata every RPC carries (the bearer token): pass it to raw calls too.
        self.metadata = metadata
        self.pools = storage.StoragePoolServiceStub(channel, timeout=RPC_TIMEOUT, metadata=metadata)
        self.nodes = compute.NodeServiceStub(channel, timeout=RPC_TIMEOUT, metadata=metadata)

    async def all_pools(self) -> list[storage.StoragePool]:
        out: list[storage.StoragePool] = []
        token = ""
        while True:
            page = await self.pools.list_pools(
                storage.ListPoolsRequest(page_size=1000, page_token=token)
            )
            out.extend(page.pools)
            token = page.next_page_token
            if not token:
                return out

    async def all_nodes(self) -> list[compute.Node]:
        out: list[compute.Node] = []
        token = ""
        while True:
            page = await self.nodes.list_nodes(
                compute.ListNodesRequest(page_size=1000, page_token=token)
            )
            out.extend(page.nodes)
            token = page.next_page_token
            if not token:
                return out

    async def pool(self, ref: str) -> storage.StoragePool:
        pools = await self.all_pools()
        found = next((p for p in pools if p.id == ref), None) or next(
            (p for p in pools if p.name == ref), None
        )
        if found is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"no pool named or with id '{ref}'")
        return found

    async def node(self, ref: str) -> compute.Node:
        nodes = await self.all_nodes()
        found = next((n for n in nodes if n.id == ref), None) or next(
            (n for n in nodes if n.hostname == ref), None
        )
        if found is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"no node with hostname or id '{ref}'")
        return found


def _dump(messages: Any, fmt: str) -> str:
    data = [m.to_dict() for m in messages] if isinstance(messages, list) else messages.to_dict()
    if fmt == "yaml":
        return str(yaml.safe_dump(data, sort_keys=True)).rstrip()
    return json.dumps(data, indent=2, sort_keys=True)


output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "wide", "json", "yaml"]),
    default="table",
    show_default=True,
    help="output format",
)
watch_option = click.option(
    "-w",
    "--watch",
    is_flag=True,
    help="follow the controller's watch RPCs until Ctrl-C: redraw on each change "
    "(-o json/yaml: print each update)",
)
interval_option = click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    hidden=True,
    help="ignored: --watch follows the watch RPCs (kept so older scripts still run)",
)


# ---- following the watch RPCs (--watch) -------------------------------------------------

WATCH_BACKOFF_FIRST, WATCH_BACKOFF_MAX = 0.5, 10.0
"""Seconds before the first reconnection of a watch, doubling up to the second."""
MAX_SECONDS = "qvdcctl.max_seconds"
"""``click`` context meta key of the hidden ``--max-seconds`` (tests): --watch ends after it."""
WATCH_SETTLE = 0.1
"""Seconds of quiet after a message before the table is redrawn (a burst is one frame)."""
#: Statuses after which --watch reconnects (a replica stopped, or was too busy or too slow).
WATCH_RETRY = frozenset({grpclib.const.Status.UNAVAILABLE, grpclib.const.Status.RESOURCE_EXHAUSTED})

#: A source of a watched table: its name and how to open its stream on a channel.
WatchSource = tuple[str, Callable[["WatchStubs"], Any]]


class WatchStubs:
    """Stubs without a deadline (a watch lasts until Ctrl-C), with the call metadata."""

    def __init__(self, channel: grpclib.client.Channel, metadata: dict[str, str] | None) -> None:
        self.pools = storage.StoragePoolServiceStub(channel, metadata=metadata)
        self.nodes = compute.NodeServiceStub(channel, metadata=metadata)


def _event(update: Any, fmt: str) -> str:
    """One update for scripts: a JSON line, or a YAML document."""
    data = update.to_dict()
    if fmt == "yaml":
        return "---\n" + str(yaml.safe_dump(data, sort_keys=True)).rstrip()
    return json.dumps(data, sort_keys=True)


def _keyed(update: Any) -> tuple[str, Any, bool]:
    """``(id, object, deleted)`` of a PoolUpdate / NodeUpdate, or of a bare Node (WatchNode)."""
    if isinstance(update, storage.PoolUpdate):
        pool = update.pool or storage.StoragePool()
        return pool.id, pool, update.type == storage.PoolUpdateUpdateType.DELETED
    if isinstance(update, compute.NodeUpdate):
        node = update.node or compute.Node()
        return node.id, node, update.type == compute.NodeUpdateUpdateType.DELETED
    return str(update.id), update, False


class _Redraw:
    """Where frames go: a rich Live display on a terminal, else one frame after another."""

    def __init__(self, *, title: str, live: bool) -> None:
        self.title = title
        self._live: Any = None
        if live:
            self._live = Live(Text(""), auto_refresh=False, screen=False)

    def __enter__(self) -> _Redraw:
        if self._live is not None:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)

    def show(self, text: str, note: str = "") -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        head = f"{self.title}  {stamp}  (watching; Ctrl-C to stop){note}"
        if self._live is not None:
            self._live.update(Text.from_ansi(f"{head}\n{text}"), refresh=True)
        else:
            click.echo(f"{head}\n{text}\n")


def follow(
    ctx: Ctx,
    sources: Sequence[WatchSource],
    frame: Callable[[dict[str, dict[str, Any]]], str],
    *,
    title: str,
    max_updates: int = 0,
    events: str | None = None,
) -> None:
    """Follow the watch streams of ``sources`` until Ctrl-C (exit 0), redrawing ``frame``
    (of each source's objects by id) after every burst of updates; with ``events``
    ("json" / "yaml") print each update instead. On UNAVAILABLE, RESOURCE_EXHAUSTED or a
    broken connection it reconnects with backoff and starts again from the initial state
    the watch sends (the whole truth: nothing is resumed). The first source ending OK (the
    one pool watched was deleted) ends the command with 0. ``max_updates`` (tests) stops
    after that many frames or events."""
    context = ctx.ssl_context()
    metadata = ctx.metadata()
    shown = 0
    answered = [False]  # the controller answered once: later failures re-watch

    async def session(redraw: _Redraw, note: str) -> bool:
        """One connection: True when the watched object is gone (the end)."""
        nonlocal shown
        channel = grpclib.client.Channel(ctx.host, ctx.port, ssl=context)
        stubs = WatchStubs(channel, metadata)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        state: dict[str, dict[str, Any]] = {name: {} for name, _ in sources}

        async def pump(name: str, open_stream: Callable[[WatchStubs], Any]) -> None:
            try:
                async for update in open_stream(stubs):
                    await queue.put((name, update))
                await queue.put((name, None))
            except Exception as exc:  # noqa: BLE001 - handed to the loop below
                await queue.put((name, exc))

        tasks = [asyncio.create_task(pump(name, opener)) for name, opener in sources]
        quiet_start: float | None = WATCH_SETTLE * 5  # nothing matches yet: draw that
        try:
            while True:
                item: tuple[str, Any] | None
                try:
                    item = await asyncio.wait_for(queue.get(), quiet_start)
                except TimeoutError:
                    item = None
                quiet_start = None
                while item is not None:
                    name, update = item
                    if isinstance(update, BaseException):
                        raise update
                    answered[0] = True
                    if update is None:
                        if name != sources[0][0]:
                            raise GRPCError(grpclib.const.Status.UNAVAILABLE, "watch ended")
                        if not events:
                            redraw.show(frame(state), "  (gone)")
                        return True
                    key, obj, deleted = _keyed(update)
                    if deleted:
                        state[name].pop(key, None)
                    else:
                        state[name][key] = obj
                    if events:
                        click.echo(_event(update, events))
                        shown += 1
                        if max_updates and shown >= max_updates:
                            return True
                    try:
                        item = await asyncio.wait_for(queue.get(), WATCH_SETTLE)
                    except TimeoutError:
                        item = None
                if not events:
                    redraw.show(frame(state), note)
                    note = ""
                    shown += 1
                    if max_updates and shown >= max_updates:
                        return True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tls.close_at_once(channel)

    async def go() -> None:
        delay = WATCH_BACKOFF_FIRST
        note = ""
        with _Redraw(title=title, live=sys.stdout.isatty() and not events) as redraw:
            while True:
                try:
                    if await session(redraw, note):
                        return
                    delay = WATCH_BACKOFF_FIRST
                except GRPCError as exc:
                    if exc.status not in WATCH_RETRY:
                        raise
                    why = f"{exc.status.name}: {exc.message}"
                except (OSError, grpclib.exceptions.StreamTerminatedError) as exc:
                    why = f"cannot reach the controller at {ctx.controller}: {exc}"
                    if not answered[0]:
                        _fail(EXIT_UNREACHABLE, why)
                click.echo(f"qvdcctl: watch lost ({why}); re-watching in {delay:g} s", err=True)
                note = "  (re-watched)"
                await asyncio.sleep(delay)
                delay = min(delay * 2, WATCH_BACKOFF_MAX)

    click_ctx = click.get_current_context(silent=True)
    limit = float(click_ctx.meta.get(MAX_SECONDS, 0.0)) if click_ctx is not None else 0.0

    async def bounded() -> None:
        if not limit:
            return await go()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await go()

    try:
        asyncio.run(bounded())
    except GRPCError as exc:
        hint = ""
        if exc.status is grpclib.const.Status.UNIMPLEMENTED:
            hint = " (this controller has no watch RPCs: run without --watch)"
        _fail(EXIT_CONTROLLER, f"{exc.status.name}: {exc.message}{hint}")
    except KeyboardInterrupt:
        raise SystemExit(EXIT_OK) from None


def _max_updates(f: Callable[..., Any]) -> Callable[..., Any]:
    """Hidden options for tests: stop after N frames / updates, or after S seconds."""
    f = click.option(
        "--max-seconds",
        type=click.FloatRange(min=0),
        default=0.0,
        hidden=True,
        expose_value=False,
        callback=lambda ctx, _param, value: ctx.meta.__setitem__(MAX_SECONDS, value),
    )(f)
    return click.option("--max-updates", type=click.IntRange(min=0), default=0, hidden=True)(f)


max_updates_option = _max_updates


def _pool_frame(output: str, color: bool) -> Callable[[dict[str, dict[str, Any]]], str]:
    def frame(state: dict[str, dict[str, Any]]) -> str:
        listed = sorted(state["pools"].values(), key=lambda p: p.name)
        nodes = list(state.get("nodes", {}).values())
        return render_pools(listed, nodes=nodes, wide=output == "wide", color=color)

    return frame


def _follow_pools(ctx: Ctx, output: str, *, pool_id: str = "", max_updates: int = 0) -> None:
    """``pools list --watch`` / ``pools get --watch``: WatchPools, and WatchNodes for the
    MAINTENANCE / DRAINING marks of host rows (a table only)."""
    sources: list[WatchSource] = [
        ("pools", lambda s: s.pools.watch_pools(storage.WatchPoolsRequest(pool_id=pool_id)))
    ]
    events = output if output in ("json", "yaml") else None
    if events is None:
        sources.append(("nodes", lambda s: s.nodes.watch_nodes(compute.WatchNodesRequest())))
    follow(
        ctx,
        sources,
        _pool_frame(output, ctx.color),
        title=f"QvDC {ctx.controller}",
        max_updates=max_updates,
        events=events,
    )


# ---- commands ---------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--controller",
    envvar="QVDC_CONTROLLER",
    default=None,
    metavar="HOST[:PORT]",
    help="controller address (env QVDC_CONTROLLER, then the context file, then 127.0.0.1:7443)",
)
@click.option(
    "--tls-ca",
    envvar="QVDCCTL_TLS_CA",
    type=click.Path(path_type=Path),
    default=None,
    help="CA of the controller's certificate (env QVDCCTL_TLS_CA, then the context file)",
)
@click.option(
    "--tls-cert",
    envvar="QVDCCTL_TLS_CERT",
    type=click.Path(path_type=Path),
    default=None,
    help="operator certificate (env QVDCCTL_TLS_CERT, then the context file)",
)
@click.option(
    "--tls-key",
    envvar="QVDCCTL_TLS_KEY",
    type=click.Path(path_type=Path),
    default=None,
    help="its private key (env QVDCCTL_TLS_KEY, then the context file)",
)
@click.option(
    "--token-file",
    envvar="QVDCCTL_TOKEN_FILE",
    type=click.Path(path_type=Path),
    default=None,
    help="a file holding an operator bearer token, for an operator without a certificate "
    "(env QVDCCTL_TOKEN_FILE, then the context file's token_file); sent only over TLS",
)
@click.option(
    "--insecure",
    envvar="QVDCCTL_INSECURE",
    is_flag=True,
    help="plain text, no TLS (env QVDCCTL_INSECURE=1)",
)
@click.version_option(VERSION, prog_name="qvdcctl")
@click.pass_context
def cli(
    ctx: click.Context,
    controller: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    token_file: Path | None,
    insecure: bool,
) -> None:
    """Operate a QvDC controller. Exit: 0 ok, 1 controller error, 2 usage, 3 unreachable."""
    context, where = load_context_file()
    endpoint = controller or str(context.get("controller") or DEFAULT_CONTROLLER)
    flags = {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key, "token_file": token_file}
    ctx.obj = Ctx(endpoint, tls_files=tls_files(flags, context, where), insecure=insecure)


pass_ctx = click.make_pass_decorator(Ctx)


@cli.group()
def pools() -> None:
    """Storage pools."""


@pools.command("list")
@output_option
@watch_option
@interval_option
@max_updates_option
@pass_ctx
def pools_list(ctx: Ctx, output: str, watch: bool, interval: float, max_updates: int) -> None:
    """Pools and their per-host rows."""
    if watch:
        _follow_pools(ctx, output, max_updates=max_updates)
        return

    def render() -> str:
        async def body(c: Client) -> tuple[list[storage.StoragePool], list[compute.Node]]:
            return await c.all_pools(), await c.all_nodes()

        listed, nodes = rpc(ctx, body)
        if output in ("json", "yaml"):
            return _dump(listed, output)
        return render_pools(listed, nodes=nodes, wide=output == "wide", color=ctx.color)

    click.echo(render())


@pools.command("get")
@click.argument("pool")
@output_option
@watch_option
@max_updates_option
@pass_ctx
def pools_get(ctx: Ctx, pool: str, output: str, watch: bool, max_updates: int) -> None:
    """One pool (by name or id); the table view, or its full JSON / YAML."""
    if watch:
        found = rpc(ctx, lambda c: c.pool(pool))
        _follow_pools(ctx, output, pool_id=found.id, max_updates=max_updates)
        return

    async def body(c: Client) -> tuple[storage.StoragePool, list[compute.Node]]:
        found = await c.pool(pool)
        return await c.pools.get_pool(storage.GetPoolRequest(id=found.id)), await c.all_nodes()

    got, nodes = rpc(ctx, body)
    if output in ("json", "yaml"):
        click.echo(_dump(got, output))
    else:
        click.echo(render_pools([got], nodes=nodes, wide=output == "wide", color=ctx.color))


def _backend(
    local_dir: str | None,
    nfs: str | None,
    iscsi: str | None,
    ceph: str | None,
    opts: dict[str, Any],
) -> storage.StorageBackend:
    chosen = [b for b in (local_dir, nfs, iscsi, ceph) if b is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --local-dir, --nfs, --iscsi, --ceph-rbd")
    create_path = False if opts["no_create_path"] else None
    if local_dir is not None:
        return storage.StorageBackend(
            type=storage.StorageBackendBackendType.LOCAL_DIR,
            local_dir=storage.LocalDirConfig(
                path=local_dir,
                capacity_gib=opts["capacity_gib"],
                require_mountpoint=opts["require_mountpoint"],
                mount_point=opts["mount_point"],
                create_path=create_path,
            ),
        )
    if nfs is not None:
        server, sep, export = nfs.partition(":")
        if not sep or not server or not export.startswith("/"):
            raise click.BadParameter(f"'{nfs}': expected SERVER:/EXPORT", param_hint="--nfs")
        return storage.StorageBackend(
            type=storage.StorageBackendBackendType.NFS,
            nfs=storage.NfsConfig(
                server=server,
                export_path=export,
                version=opts["nfs_version"],
                options=opts["nfs_options"],
                mount_point=opts["mount_point"],
                create_path=create_path,
            ),
        )
    if iscsi is not None:
        portal, sep, target = iscsi.partition("/")
        if not sep or not portal or not target:
            raise click.BadParameter(
                f"'{iscsi}': expected PORTAL/IQN (host:3260/iqn....)", param_hint="--iscsi"
            )
        user = opts["chap_user"]
        password = opts["chap_password"]
        if opts["chap_password_file"] is not None:
            if password:
                raise click.UsageError("give --chap-password or --chap-password-file, not both")
            password = _secret_file(opts["chap_password_file"], param_hint="--chap-password-file")
        return storage.StorageBackend(
            type=storage.StorageBackendBackendType.ISCSI,
            iscsi=storage.IscsiConfig(
                portal=portal,
                target=target,
                lun=opts["lun"],
                chap_enabled=bool(user),
                chap_user=user,
                chap_password=password,
            ),
        )
    assert ceph is not None
    if not opts["monitor"]:
        raise click.UsageError("--ceph-rbd needs at least one --monitor HOST[:PORT]")
    return storage.StorageBackend(
        type=storage.StorageBackendBackendType.CEPH_RBD,
        ceph=storage.CephConfig(
            pool_name=ceph,
            monitors=list(opts["monitor"]),
            user=opts["ceph_user"],
            keyring_path=opts["keyring"],
            namespace=opts["namespace"],
            cluster_id=opts["cluster_id"],
            secret_uuid=opts["secret_uuid"],
            key=_ceph_key(opts["ceph_key_file"]),
        ),
    )


def _read_text(path: Path, *, param_hint: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint=param_hint) from None


def _secret_file(path: Path, *, param_hint: str) -> str:
    """A secret kept alone in ``path`` (one line; surrounding whitespace dropped). Read
    from a file, not a flag, so it is in no shell history or process list."""
    secret = _read_text(path, param_hint=param_hint).strip()
    if not secret or "\n" in secret:
        raise click.BadParameter(
            f"{path} must hold the secret alone, on one line", param_hint=param_hint
        )
    return secret


def _ceph_key(path: Path | None) -> str:
    """The cephx key in ``path``: a keyring file's ``key = ...`` line, or the key alone.
    Read from a file, not a flag, so it is in no shell history or process list."""
    if path is None:
        return ""
    text = _read_text(path, param_hint="--ceph-key-file")
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "key":
            return value.strip()
    stripped = text.strip()
    if stripped and "\n" not in stripped and "[" not in stripped:
        return stripped
    raise click.BadParameter(
        f"{path} holds no 'key = ...' line and is not a bare key", param_hint="--ceph-key-file"
    )


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{pair}': expected KEY=VALUE", param_hint="--label")
        out[key] = value
    return out


@pools.command("create")
@click.argument("name")
@click.option("--local-dir", metavar="PATH", help="local directory pool at PATH")
@click.option("--nfs", metavar="SERVER:/EXPORT", help="NFS pool")
@click.option(
    "--iscsi", metavar="PORTAL/IQN", help="iSCSI pool, e.g. 10.0.0.5:3260/iqn.2024-01.x:t"
)
@click.option("--ceph-rbd", "ceph", metavar="RADOS_POOL", help="Ceph RBD pool (needs --monitor)")
@click.option("--capacity-gib", type=click.IntRange(min=0), default=0, help="local-dir quota")
@click.option("--require-mountpoint", is_flag=True, help="local-dir PATH must be a mount point")
@click.option("--mount-point", default="", metavar="DIR", help="local-dir/NFS mount point")
@click.option("--no-create-path", is_flag=True, help="never create a missing path / mount point")
@click.option("--nfs-version", default="", help="NFS version (3, 4, 4.1, 4.2)")
@click.option("--nfs-options", default="", help="extra NFS mount options")
@click.option("--lun", type=click.IntRange(min=0), default=0, help="iSCSI LUN")
@click.option("--chap-user", default="", help="iSCSI CHAP user (enables CHAP)")
@click.option(
    "--chap-password",
    default="",
    help="iSCSI CHAP password (visible in the process list: prefer --chap-password-file)",
)
@click.option(
    "--chap-password-file",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="a file holding the iSCSI CHAP password alone (write-only, like every secret)",
)
@click.option("--monitor", multiple=True, metavar="HOST[:PORT]", help="Ceph monitor (repeatable)")
@click.option("--ceph-user", default="", help="Ceph user (e.g. admin)")
@click.option("--keyring", default="", metavar="PATH", help="Ceph keyring path")
@click.option("--namespace", default="", help="RBD namespace")
@click.option("--cluster-id", default="", help="Ceph cluster id")
@click.option("--secret-uuid", default="", help="libvirt secret holding the Ceph key")
@click.option(
    "--ceph-key-file",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE",
    help="a keyring (or bare key) whose cephx key the pool's nodes get (write-only; not "
    "with --keyring)",
)
@click.option("--assign", multiple=True, metavar="NODE", help="node hostname or id (repeatable)")
@click.option("--description", default="")
@click.option("--label", multiple=True, metavar="KEY=VALUE")
@pass_ctx
def pools_create(
    ctx: Ctx,
    /,
    name: str,
    local_dir: str | None,
    nfs: str | None,
    iscsi: str | None,
    ceph: str | None,
    assign: tuple[str, ...],
    description: str,
    label: tuple[str, ...],
    **opts: Any,
) -> None:
    """Create a pool with one backend."""
    backend = _backend(local_dir, nfs, iscsi, ceph, opts)
    labels = _labels(label)

    async def body(c: Client) -> tuple[storage.StoragePool, list[str]]:
        hosts = [await c.node(ref) for ref in assign]
        created = await c.pools.create_pool(
            storage.CreatePoolRequest(
                name=name,
                description=description,
                labels=labels,
                spec=storage.StoragePoolSpec(
                    backend=backend, assigned_node_ids=[h.id for h in hosts]
                ),
            )
        )
        return created, [h.hostname for h in hosts]

    created, hostnames = rpc(ctx, body)
    suffix = f", assigned to {', '.join(hostnames)}" if hostnames else ""
    click.echo(f"pool {created.name} (id {created.id}) created{suffix}")


@pools.command("update")
@click.argument("pool")
@click.option("--description", default=None)
@click.option("--label", multiple=True, metavar="KEY=VALUE", help="replaces all labels")
@click.option("--capacity-gib", type=click.IntRange(min=0), default=None, help="local-dir quota")
@pass_ctx
def pools_update(
    ctx: Ctx, pool: str, description: str | None, label: tuple[str, ...], capacity_gib: int | None
) -> None:
    """Change a pool's description, labels or local-dir quota."""
    labels = _labels(label)
    if description is None and not label and capacity_gib is None:
        raise click.UsageError("nothing to update: give --description, --label or --capacity-gib")

    async def body(c: Client) -> storage.StoragePool:
        found = await c.pool(pool)
        paths: list[str] = []
        spec = None
        if description is not None:
            paths.append("description")
        if label:
            paths.append("labels")
        if capacity_gib is not None:
            backend = found.spec.backend if found.spec else None
            if backend is None or backend.local_dir is None:
                raise click.UsageError("--capacity-gib applies to local-dir pools only")
            backend.local_dir.capacity_gib = capacity_gib
            spec = storage.StoragePoolSpec(backend=backend)
            paths.append("spec.backend")
        return await c.pools.update_pool(
            storage.UpdatePoolRequest(
                id=found.id,
                description=description or "",
                labels=labels,
                spec=spec,
                update_mask=protobuf.FieldMask(paths=paths),
            )
        )

    updated = rpc(ctx, body)
    click.echo(f"pool {updated.name} (id {updated.id}) updated")


@pools.command("delete")
@click.argument("pool")
@click.option("--force", is_flag=True, help="delete even though hosts still report volumes")
@pass_ctx
def pools_delete(ctx: Ctx, pool: str, force: bool) -> None:
    """Delete a pool."""

    async def body(c: Client) -> storage.StoragePool:
        found = await c.pool(pool)
        await c.pools.delete_pool(storage.DeletePoolRequest(id=found.id, force=force))
        return found

    found = rpc(ctx, body)
    click.echo(f"pool {found.name} (id {found.id}) deleted")


def _assignment(ctx: Ctx, pool: str, node: str, *, assign: bool) -> None:
    async def body(c: Client) -> tuple[storage.StoragePool, compute.Node]:
        p, n = await c.pool(pool), await c.node(node)
        if assign:
            await c.pools.assign_pool_to_node(
                storage.AssignPoolToNodeRequest(pool_id=p.id, node_id=n.id)
            )
        else:
            await c.pools.unassign_pool_from_node(
                storage.UnassignPoolFromNodeRequest(pool_id=p.id, node_id=n.id)
            )
        return p, n

    p, n = rpc(ctx, body)
    click.echo(f"pool {p.name} {'assigned to' if assign else 'unassigned from'} {n.hostname}")


@pools.command("assign")
@click.argument("pool")
@click.argument("node")
@pass_ctx
def pools_assign(ctx: Ctx, pool: str, node: str) -> None:
    """Assign POOL (name or id) to NODE (hostname or id)."""
    _assignment(ctx, pool, node, assign=True)


@pools.command("unassign")
@click.argument("pool")
@click.argument("node")
@pass_ctx
def pools_unassign(ctx: Ctx, pool: str, node: str) -> None:
    """Unassign POOL (name or id) from NODE (hostname or id)."""
    _assignment(ctx, pool, node, assign=False)


@pools.command("metrics")
@click.argument("pool")
@output_option
@pass_ctx
def pools_metrics(ctx: Ctx, pool: str, output: str) -> None:
    """A pool's capacity and volume counters (GetPoolMetrics)."""

    async def body(c: Client) -> storage.PoolMetrics:
        found = await c.pool(pool)
        return await c.pools.get_pool_metrics(storage.GetPoolMetricsRequest(id=found.id))

    m = rpc(ctx, body)
    if output in ("json", "yaml"):
        click.echo(_dump(m, output))
        return
    table = Table(box=None, pad_edge=False, show_header=False)
    for key, value in (
        ("total", human_bytes(m.total_bytes)),
        ("used", human_bytes(m.used_bytes)),
        ("available", human_bytes(m.available_bytes)),
        ("provisioned", human_bytes(m.provisioned_bytes)),
        ("volumes", str(m.volume_count)),
        ("snapshots", str(m.snapshot_count)),
    ):
        table.add_row(key, value)
    click.echo(_render(table, color=ctx.color))


@pools.command("files")
@click.argument("pool")
@click.argument("path", default="")
@click.option("--page-size", type=click.IntRange(0, 500), default=0, help="entries per call")
@output_option
@pass_ctx
def pools_files(ctx: Ctx, pool: str, path: str, page_size: int, output: str) -> None:
    """A pool's files at PATH (relative to its root), listed by one of its live hosts
    (ListPoolFiles); every page is fetched."""

    async def body(c: Client) -> list[storage.PoolFileEntry]:
        found = await c.pool(pool)
        entries: list[storage.PoolFileEntry] = []
        token = ""
        while True:
            page = await c.pools.list_pool_files(
                storage.ListPoolFilesRequest(
                    pool_id=found.id, path=path, page_size=page_size, page_token=token
                )
            )
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries

    entries = rpc(ctx, body)
    if output in ("json", "yaml"):
        click.echo(_dump(storage.ListPoolFilesResponse(entries=entries), output))
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "TYPE", "SIZE", "MODIFIED", "MODE"):
        table.add_column(column, no_wrap=True)
    if not entries:
        table.add_row("(empty)", "", "", "", "")
    for e in entries:
        name = e.name + ("/" if e.is_directory else "")
        size = "-" if e.is_directory else human_bytes(e.size_bytes)
        table.add_row(name, e.file_type, size, e.modified_at, e.permissions)
    click.echo(_render(table, color=ctx.color))


@cli.group()
def nodes() -> None:
    """Hosts running qvdc-node."""


@nodes.command("list")
@output_option
@watch_option
@interval_option
@max_updates_option
@pass_ctx
def nodes_list(ctx: Ctx, output: str, watch: bool, interval: float, max_updates: int) -> None:
    """Nodes and their phase."""
    if watch:

        def frame(state: dict[str, dict[str, Any]]) -> str:
            listed = sorted(state["nodes"].values(), key=lambda n: n.hostname)
            return render_nodes(listed, wide=output == "wide", color=ctx.color)

        source: WatchSource = (
            "nodes",
            lambda s: s.nodes.watch_nodes(compute.WatchNodesRequest()),
        )
        events = output if output in ("json", "yaml") else None
        title = f"QvDC {ctx.controller} nodes"
        follow(ctx, [source], frame, title=title, max_updates=max_updates, events=events)
        return

    def render() -> str:
        listed = rpc(ctx, lambda c: c.all_nodes())
        if output in ("json", "yaml"):
            return _dump(listed, output)
        return render_nodes(listed, wide=output == "wide", color=ctx.color)

    click.echo(render())


@nodes.command("get")
@click.argument("node")
@output_option
@watch_option
@max_updates_option
@pass_ctx
def nodes_get(ctx: Ctx, node: str, output: str, watch: bool, max_updates: int) -> None:
    """One node (by hostname or id); --watch follows it (WatchNode) until it is deleted."""
    found = rpc(ctx, lambda c: c.node(node))
    if watch:

        def frame(state: dict[str, dict[str, Any]]) -> str:
            return render_nodes(
                list(state["node"].values()), wide=output == "wide", color=ctx.color
            )

        source: WatchSource = (
            "node",
            lambda s: s.nodes.watch_node(compute.WatchNodeRequest(node_id=found.id)),
        )
        events = output if output in ("json", "yaml") else None
        title = f"QvDC {ctx.controller} node {found.hostname}"
        follow(ctx, [source], frame, title=title, max_updates=max_updates, events=events)
        return
    if output in ("json", "yaml"):
        click.echo(_dump(found, output))
    else:
        click.echo(render_nodes([found], wide=output == "wide", color=ctx.color))


@nodes.command("disable")
@click.argument("node")
@click.option("--reason", default="", help="why (kept on the node)")
@pass_ctx
def nodes_disable(ctx: Ctx, node: str, reason: str) -> None:
    """Put a node into maintenance (heartbeats never override it)."""

    async def body(c: Client) -> compute.Node:
        found = await c.node(node)
        return await c.nodes.disable_node(compute.DisableNodeRequest(id=found.id, reason=reason))

    got = rpc(ctx, body)
    click.echo(f"node {got.hostname} disabled ({(got.status or compute.NodeStatus()).phase.name})")


@nodes.command("enable")
@click.argument("node")
@pass_ctx
def nodes_enable(ctx: Ctx, node: str) -> None:
    """Take a node out of maintenance."""

    async def body(c: Client) -> compute.Node:
        found = await c.node(node)
        return await c.nodes.enable_node(compute.EnableNodeRequest(id=found.id))

    got = rpc(ctx, body)
    click.echo(f"node {got.hostname} enabled ({(got.status or compute.NodeStatus()).phase.name})")


_TAINT_EFFECTS = {
    "NoSchedule": compute.TaintEffect.NO_SCHEDULE,
    "PreferNoSchedule": compute.TaintEffect.PREFER_NO_SCHEDULE,
    "NoExecute": compute.TaintEffect.NO_EXECUTE,
}


def label_changes(args: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``k=v`` sets a label, ``k-`` removes one (as kubectl label)."""
    add: dict[str, str] = {}
    remove: list[str] = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key:
            add[key] = value
        elif not sep and arg.endswith("-") and len(arg) > 1:
            remove.append(arg[:-1])
        else:
            raise click.BadParameter(f"'{arg}': expected KEY=VALUE or KEY-", param_hint="LABELS")
    return add, remove


def taint_change(arg: str) -> compute.Taint | str:
    """``KEY[=VALUE]:EFFECT`` is a taint to add; ``KEY-`` the key of one to remove."""
    if arg.endswith("-") and len(arg) > 1 and ":" not in arg and "=" not in arg:
        return arg[:-1]
    pair, sep, effect = arg.rpartition(":")
    key, _, value = pair.partition("=")
    if not sep or not key or effect not in _TAINT_EFFECTS:
        raise click.BadParameter(
            f"'{arg}': expected KEY[=VALUE]:EFFECT (EFFECT one of {', '.join(_TAINT_EFFECTS)}) "
            "or KEY-",
            param_hint="TAINT",
        )
    return compute.Taint(key=key, value=value, effect=_TAINT_EFFECTS[effect])


@nodes.command("drain")
@click.argument("node")
@pass_ctx
def nodes_drain(ctx: Ctx, node: str) -> None:
    """Mark a node DRAINING: it takes no new pools and keeps the ones it has (enable ends it)."""

    async def body(c: Client) -> compute.DrainNodeResponse:
        found = await c.node(node)
        return await c.nodes.drain_node(compute.DrainNodeRequest(id=found.id))

    got = rpc(ctx, body).node or compute.Node()
    click.echo(f"node {got.hostname} draining ({(got.status or compute.NodeStatus()).phase.name})")


@nodes.command("decommission")
@click.argument("node")
@click.option("--force", is_flag=True, help="unassign the node from its pools first")
@pass_ctx
def nodes_decommission(ctx: Ctx, node: str, force: bool) -> None:
    """Remove a node (refused while pools are assigned to it, unless --force)."""

    async def body(c: Client) -> str:
        found = await c.node(node)
        await c.nodes.decommission_node(compute.DecommissionNodeRequest(id=found.id, force=force))
        return found.hostname

    click.echo(f"node {rpc(ctx, body)} decommissioned")


@nodes.command("label")
@click.argument("node")
@click.argument("labels", nargs=-1, required=True)
@pass_ctx
def nodes_label(ctx: Ctx, node: str, labels: tuple[str, ...]) -> None:
    """Set labels (KEY=VALUE) and remove them (KEY-)."""
    add, remove = label_changes(labels)

    async def body(c: Client) -> compute.Node:
        found = await c.node(node)
        return await c.nodes.update_labels(
            compute.UpdateLabelsRequest(node_id=found.id, add_labels=add, remove_labels=remove)
        )

    got = rpc(ctx, body)
    shown = ",".join(f"{k}={v}" for k, v in sorted(got.labels.items())) or "none"
    click.echo(f"node {got.hostname} labels: {shown}")


@nodes.command("taint")
@click.argument("node")
@click.argument("taints", nargs=-1, required=True)
@pass_ctx
def nodes_taint(ctx: Ctx, node: str, taints: tuple[str, ...]) -> None:
    """Add taints (KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute; a known key is
    replaced) and remove them (KEY-)."""
    changes = [taint_change(t) for t in taints]

    async def body(c: Client) -> compute.Node:
        found = await c.node(node)
        got = found
        for change in changes:
            if isinstance(change, str):
                got = await c.nodes.remove_taint(
                    compute.RemoveTaintRequest(node_id=found.id, taint_key=change)
                )
            else:
                got = await c.nodes.add_taint(
                    compute.AddTaintRequest(node_id=found.id, taint=change)
                )
        return got

    got = rpc(ctx, body)
    click.echo(f"node {got.hostname} taints: {node_taints(got) or 'none'}")


def summarize(pools: Sequence[storage.StoragePool], nodes: Sequence[compute.Node]) -> list[str]:
    pool_phases = collections.Counter(
        (p.status or storage.StoragePoolStatus()).phase.name for p in pools
    )
    node_phases = collections.Counter((n.status or compute.NodeStatus()).phase.name for n in nodes)
    lines = [
        f"pools: {len(pools)}  " + "  ".join(f"{k} {v}" for k, v in sorted(pool_phases.items())),
        f"nodes: {len(nodes)}  " + "  ".join(f"{k} {v}" for k, v in sorted(node_phases.items())),
    ]
    bad = [
        f"  pool {p.name} on {h.hostname or h.node_id}: {h.health.name}"
        + (" STALE" if h.stale else "")
        + (f" {h.error_message}" if h.error_message else "")
        for p in pools
        for h in (p.status or storage.StoragePoolStatus()).host_statuses
        if h.assigned and (h.stale or h.health.name != "HEALTHY")
    ] + [
        f"  node {n.hostname}: {(n.status or compute.NodeStatus()).phase.name}"
        for n in nodes
        if (n.status or compute.NodeStatus()).phase.name != "READY"
    ]
    lines.append(f"unhealthy: {len(bad)}" if bad else "unhealthy: none")
    return lines + bad


@cli.command()
@output_option
@pass_ctx
def status(ctx: Ctx, output: str) -> None:
    """Fleet summary: pools by phase, nodes by phase, unhealthy rows."""

    async def body(c: Client) -> tuple[list[storage.StoragePool], list[compute.Node]]:
        return await c.all_pools(), await c.all_nodes()

    listed, nodes = rpc(ctx, body)
    if output in ("json", "yaml"):
        data = {
            "pools": collections.Counter(
                (p.status or storage.StoragePoolStatus()).phase.name for p in listed
            ),
            "nodes": collections.Counter(
                (n.status or compute.NodeStatus()).phase.name for n in nodes
            ),
            "unhealthy": summarize(listed, nodes)[3:],
        }
        data = {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in data.items()}
        text = yaml.safe_dump(data) if output == "yaml" else json.dumps(data, indent=2)
        click.echo(text.rstrip())
        return
    click.echo(f"controller {ctx.controller}")
    click.echo("\n".join(summarize(listed, nodes)))


@cli.command()
@interval_option
@click.option("--once", is_flag=True, help="print once and exit")
@max_updates_option
@click.pass_context
def watch(ctx: click.Context, interval: float, once: bool, max_updates: int) -> None:
    """Live pool table (`pools list --watch`: follows WatchPools and WatchNodes)."""
    ctx.invoke(
        pools_list, output="table", watch=not once, interval=interval, max_updates=max_updates
    )


EVENTS_RETRY = frozenset(
    {grpclib.const.Status.UNAVAILABLE, grpclib.const.Status.RESOURCE_EXHAUSTED}
)
"""Statuses after which ``events --follow`` subscribes again (a replica stopped, or this
client fell behind)."""


#: The health word whose colour an event type shows in.
_EVENT_STYLE = {"NORMAL": "HEALTHY", "WARNING": "DEGRADED", "ERROR": "ERROR"}


def _when(ts: dt.datetime | None) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S") if ts is not None else "-"


def render_events(
    events: Sequence[compute.NodeEvent], hostnames: dict[str, str], *, color: bool = False
) -> str:
    """The event table, newest first (as ListNodeEvents answers)."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TIME", "TYPE", "REASON", "NODE", "MESSAGE"):
        table.add_column(column)
    for e in events:
        kind = e.type.name if e.type is not None else "NORMAL"
        table.add_row(
            _when(e.timestamp),
            Text(kind, style=HEALTH_STYLE.get(_EVENT_STYLE.get(kind, "ERROR"), "red")),
            e.reason,
            hostnames.get(e.node_id, e.node_id),
            e.message,
        )
    return _render(table, color=color)


def _event_line(event: compute.SystemEvent) -> str:
    """One streamed event, as a line: time, severity, event name, node, message."""
    meta = event.metadata
    severity = event.severity.name if event.severity is not None else "INFO"
    who = meta.get("hostname") or meta.get("node_id") or meta.get("pool_id") or "-"
    name = meta.get("event", "-")
    return f"{_when(event.timestamp)}  {severity:<7}  {name:<14}  {who}  {event.message}"


@cli.command()
@click.option("--node", "node_ref", metavar="NODE", help="only this node (hostname or id)")
@click.option("-f", "--follow", is_flag=True, help="print new events as they happen until Ctrl-C")
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=1, max=1000),
    default=50,
    show_default=True,
    help="events listed (newest first; per node without --node)",
)
@output_option
@click.option("--max-events", type=click.IntRange(min=0), default=0, hidden=True)
@pass_ctx
def events(
    ctx: Ctx, node_ref: str | None, follow: bool, limit: int, output: str, max_events: int
) -> None:
    """Each node's events (OFFLINE, recovered, phase changes, its pool rows' health),
    newest first; --follow streams new ones (StreamEvents: pool phases and the replicas'
    own events too), reconnecting if the replica goes away."""
    if follow:
        _follow_events(ctx, node_ref, output, max_events)
        return

    async def body(c: Client) -> tuple[list[compute.NodeEvent], dict[str, str]]:
        listed = [await c.node(node_ref)] if node_ref else await c.all_nodes()
        found: list[compute.NodeEvent] = []
        for n in listed:
            answer = await c.nodes.list_node_events(
                compute.ListNodeEventsRequest(node_id=n.id, limit=limit)
            )
            found.extend(answer.events)
        found.sort(
            key=lambda e: e.timestamp or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True
        )
        return found[:limit], {n.id: n.hostname for n in listed}

    found, hostnames = rpc(ctx, body)
    if output in ("json", "yaml"):
        click.echo(_dump(found, output))
    else:
        click.echo(render_events(found, hostnames, color=ctx.color))


def _follow_events(ctx: Ctx, node_ref: str | None, output: str, max_events: int) -> None:
    context = ctx.ssl_context()
    metadata = ctx.metadata()
    shown = 0

    async def session(node_id: str) -> None:
        nonlocal shown
        channel = grpclib.client.Channel(ctx.host, ctx.port, ssl=context)
        try:
            stub = compute.NodeServiceStub(channel, metadata=metadata)  # no deadline
            async for event in stub.stream_events(compute.StreamEventsRequest(node_id=node_id)):
                if event.metadata.get("marker"):
                    continue  # "subscribed": from here on nothing is missed
                if output == "json":
                    click.echo(json.dumps(event.to_dict(), sort_keys=True))
                elif output == "yaml":
                    click.echo(
                        "---\n" + str(yaml.safe_dump(event.to_dict(), sort_keys=True)).rstrip()
                    )
                else:
                    click.echo(_event_line(event))
                shown += 1
                if max_events and shown >= max_events:
                    return
            raise GRPCError(grpclib.const.Status.UNAVAILABLE, "the event stream ended")
        finally:
            tls.close_at_once(channel)

    async def go() -> None:
        node_id = ""
        if node_ref:
            channel = grpclib.client.Channel(ctx.host, ctx.port, ssl=context)
            try:
                node_id = (await Client(channel, metadata=metadata).node(node_ref)).id
            finally:
                tls.close_at_once(channel)
        delay = 0.5
        while True:
            try:
                await session(node_id)
                return
            except GRPCError as exc:
                if exc.status not in EVENTS_RETRY:
                    raise
                why = f"{exc.status.name}: {exc.message}"
            except (OSError, grpclib.exceptions.StreamTerminatedError) as exc:
                if not shown:
                    raise
                why = f"cannot reach the controller at {ctx.controller}: {exc}"
            click.echo(
                f"qvdcctl: event stream lost ({why}); subscribing again in {delay:g} s "
                "(events meanwhile: qvdcctl events)",
                err=True,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    try:
        asyncio.run(go())
    except GRPCError as exc:
        _fail(EXIT_CONTROLLER, f"{exc.status.name}: {exc.message}")
    except (OSError, TimeoutError, grpclib.exceptions.StreamTerminatedError) as exc:
        _fail(EXIT_UNREACHABLE, f"cannot reach the controller at {ctx.controller}: {exc}")
    except KeyboardInterrupt:
        raise SystemExit(EXIT_OK) from None


@cli.group()
def context() -> None:
    """The context file `make run` writes (controller, etcd endpoint, prefix)."""


@context.command("show")
def context_show() -> None:
    """The context in use, as JSON."""
    click.echo(json.dumps(load_context(), indent=2, sort_keys=True))


@context.command("controller")
@pass_ctx
def context_controller(ctx: Ctx) -> None:
    """The controller address qvdcctl uses."""
    click.echo(ctx.controller)


@context.command("etcd-endpoint")
def context_etcd() -> None:
    """The etcd endpoint of the context (for `etcdctl --endpoints=...`)."""
    endpoint = load_context().get("etcd")
    if not endpoint:
        _fail(EXIT_CONTROLLER, "no etcd endpoint in the context file (is `make run` running?)")
    click.echo(str(endpoint))


cli.add_command(cli_certs.certs_group, name="certs")
cli.add_command(cli_secrets.secrets_group, name="secrets")


def main(argv: Sequence[str] | None = None) -> None:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="qvdcctl")
    except KeyboardInterrupt:
        raise SystemExit(0) from None
