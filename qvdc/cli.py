"""``qvdcctl``: the operator's command line for QvDC.

    qvdcctl [--controller HOST:PORT] pools list | get ID | create NAME ... | delete ID [--force]
                                     | assign POOL NODE | unassign POOL NODE
    qvdcctl nodes list | get ID | disable ID [--reason ...] | enable ID
    qvdcctl watch [--interval S] [--once]     live pool table, one row per host

Exit status: 0 on success, 1 when the controller answers with an error (its
gRPC status and message are printed), 2 on bad usage, 3 when the controller
cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Sequence
from typing import Any

import grpclib.client
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage

RPC_TIMEOUT = 10.0


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


def render_pools(pools: Sequence[storage.StoragePool], *, now: dt.datetime | None = None) -> str:
    """The live pool table: one line per pool, then one indented line per host."""
    now = now or dt.datetime.now(tz=dt.UTC)
    lines = [
        f"{'POOL':<24} {'BACKEND':<10} {'PHASE':<9} {'USED / TOTAL':<24} {'FREE':>10} "
        f"{'VOLS':>5}  HOSTS"
    ]
    if not pools:
        lines.append("(no pools)")
    for pool in pools:
        status = pool.status or storage.StoragePoolStatus()
        cap = status.capacity or storage.StorageCapacity()
        backend = pool.spec.backend.type.name if pool.spec and pool.spec.backend else "-"
        healthy = len(status.healthy_node_ids)
        assigned = len(pool.spec.assigned_node_ids) if pool.spec else 0
        lines.append(
            f"{pool.name:<24} {backend:<10} {status.phase.name:<9} "
            f"{human_bytes(cap.used_bytes) + ' / ' + human_bytes(cap.total_bytes):<24} "
            f"{human_bytes(cap.available_bytes):>10} "
            f"{status.volume_count:>5}  {healthy}/{assigned} healthy"
        )
        if status.error_message:
            lines.append(f"    ! {status.error_message}")
        for row in status.host_statuses:
            flags = []
            if row.stale:
                flags.append("STALE")
            if not row.assigned:
                flags.append("unassigned")
            name = row.hostname or row.node_id[:8]
            health = row.health.name + (f" ({', '.join(flags)})" if flags else "")
            lines.append(
                f"    {name:<20} {health:<22} {row.mount_path or '-':<28} "
                f"{human_bytes(row.used_bytes)} / {human_bytes(row.total_bytes)} "
                f"({human_bytes(row.available_bytes)} free)  "
                f"vols {row.volume_count}  changed {_age(row.last_changed, now)}"
                + (f"  {row.error_message}" if row.error_message else "")
            )
    return "\n".join(lines)


def _print_message(message: Any) -> None:
    print(json.dumps(message.to_dict(), indent=2, sort_keys=True))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qvdcctl", description="Operate a QvDC controller.")
    p.add_argument("--controller", default="127.0.0.1:7443", help="HOST:PORT (default %(default)s)")
    sub = p.add_subparsers(dest="group", required=True)

    pools = sub.add_parser("pools", help="storage pools").add_subparsers(dest="cmd", required=True)
    pools.add_parser("list", help="list pools as a table")
    g = pools.add_parser("get", help="show one pool as JSON")
    g.add_argument("id")
    c = pools.add_parser("create", help="create a pool")
    c.add_argument("name")
    kind = c.add_mutually_exclusive_group(required=True)
    kind.add_argument("--local-dir", metavar="PATH", help="local directory pool at PATH")
    kind.add_argument("--nfs", metavar="SERVER:/EXPORT", help="NFS pool")
    c.add_argument("--capacity-gib", type=int, default=0, help="quota of a local-dir pool")
    c.add_argument(
        "--require-mountpoint",
        action="store_true",
        help="local-dir PATH must be a mount point (UNMOUNTED while nothing is mounted there)",
    )
    c.add_argument(
        "--mount-point",
        default="",
        metavar="DIR",
        help="local-dir: DIR (PATH or a parent) must be a mount point",
    )
    c.add_argument(
        "--no-create-path",
        dest="create_path",
        action="store_false",
        help="never create a missing local-dir PATH or NFS mount point",
    )
    c.add_argument("--assign", action="append", default=[], metavar="NODE_ID")
    c.add_argument("--description", default="")
    d = pools.add_parser("delete", help="delete a pool")
    d.add_argument("id")
    d.add_argument("--force", action="store_true")
    for name in ("assign", "unassign"):
        a = pools.add_parser(name, help=f"{name} a pool to/from a node")
        a.add_argument("pool_id")
        a.add_argument("node_id")

    nodes = sub.add_parser("nodes", help="hosts").add_subparsers(dest="cmd", required=True)
    nodes.add_parser("list", help="list nodes")
    for name in ("get", "enable", "disable"):
        n = nodes.add_parser(name)
        n.add_argument("id")
        if name == "disable":
            n.add_argument("--reason", default="")

    w = sub.add_parser("watch", help="live pool table")
    w.add_argument("--interval", type=float, default=1.0)
    w.add_argument("--once", action="store_true", help="print once and exit")
    return p


async def _list_all_pools(stub: storage.StoragePoolServiceStub) -> list[storage.StoragePool]:
    pools: list[storage.StoragePool] = []
    token = ""
    while True:
        page = await stub.list_pools(
            storage.ListPoolsRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT
        )
        pools.extend(page.pools)
        token = page.next_page_token
        if not token:
            return pools


async def run(args: argparse.Namespace) -> int:
    host, _, port = args.controller.rpartition(":")
    channel = grpclib.client.Channel(host, int(port))
    pools = storage.StoragePoolServiceStub(channel)
    nodes = compute.NodeServiceStub(channel)
    try:
        if args.group == "watch":
            while True:
                table = render_pools(await _list_all_pools(pools))
                if args.once:
                    print(table)
                    return 0
                stamp = dt.datetime.now().strftime("%H:%M:%S")
                clear = "\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n"
                print(
                    f"{clear}QvDC {args.controller}  {stamp}  (Ctrl-C to stop)\n{table}", flush=True
                )
                await asyncio.sleep(args.interval)
        if args.group == "pools":
            if args.cmd == "list":
                print(render_pools(await _list_all_pools(pools)))
            elif args.cmd == "get":
                _print_message(
                    await pools.get_pool(storage.GetPoolRequest(id=args.id), timeout=RPC_TIMEOUT)
                )
            elif args.cmd == "create":
                if args.local_dir is not None:
                    backend = storage.StorageBackend(
                        type=storage.StorageBackendBackendType.LOCAL_DIR,
                        local_dir=storage.LocalDirConfig(
                            path=args.local_dir,
                            capacity_gib=args.capacity_gib,
                            require_mountpoint=args.require_mountpoint,
                            mount_point=args.mount_point,
                            create_path=None if args.create_path else False,
                        ),
                    )
                else:
                    server, _, export = args.nfs.partition(":")
                    backend = storage.StorageBackend(
                        type=storage.StorageBackendBackendType.NFS,
                        nfs=storage.NfsConfig(
                            server=server,
                            export_path=export,
                            create_path=None if args.create_path else False,
                        ),
                    )
                created = await pools.create_pool(
                    storage.CreatePoolRequest(
                        name=args.name,
                        description=args.description,
                        spec=storage.StoragePoolSpec(
                            backend=backend, assigned_node_ids=args.assign
                        ),
                    ),
                    timeout=RPC_TIMEOUT,
                )
                print(created.id)
            elif args.cmd == "delete":
                await pools.delete_pool(
                    storage.DeletePoolRequest(id=args.id, force=args.force), timeout=RPC_TIMEOUT
                )
            elif args.cmd == "assign":
                await pools.assign_pool_to_node(
                    storage.AssignPoolToNodeRequest(pool_id=args.pool_id, node_id=args.node_id),
                    timeout=RPC_TIMEOUT,
                )
            elif args.cmd == "unassign":
                await pools.unassign_pool_from_node(
                    storage.UnassignPoolFromNodeRequest(pool_id=args.pool_id, node_id=args.node_id),
                    timeout=RPC_TIMEOUT,
                )
        elif args.group == "nodes":
            if args.cmd == "list":
                listed = await nodes.list_nodes(
                    compute.ListNodesRequest(page_size=1000), timeout=RPC_TIMEOUT
                )
                print(f"{'ID':<38} {'HOSTNAME':<24} {'PHASE':<12} {'LAST HEARTBEAT'}")
                for node in listed.nodes:
                    st = node.status or compute.NodeStatus()
                    print(
                        f"{node.id:<38} {node.hostname:<24} {st.phase.name:<12} "
                        f"{st.last_heartbeat.isoformat() if st.last_heartbeat else '-'}"
                    )
            elif args.cmd == "get":
                _print_message(
                    await nodes.get_node(compute.GetNodeRequest(id=args.id), timeout=RPC_TIMEOUT)
                )
            elif args.cmd == "disable":
                _print_message(
                    await nodes.disable_node(
                        compute.DisableNodeRequest(id=args.id, reason=args.reason),
                        timeout=RPC_TIMEOUT,
                    )
                )
            elif args.cmd == "enable":
                _print_message(
                    await nodes.enable_node(
                        compute.EnableNodeRequest(id=args.id), timeout=RPC_TIMEOUT
                    )
                )
        return 0
    except GRPCError as exc:
        print(f"qvdcctl: {exc.status.name}: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:
        print(f"qvdcctl: cannot reach the controller at {args.controller}: {exc}", file=sys.stderr)
        return 3
    finally:
        channel.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = asyncio.run(run(args))
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)
