"""``qvdcctl … --watch`` against a real controller: an initial table, then a change seen
through the watch RPCs (not polled); JSON lines per update; ``pools get --watch`` ending
when the pool is deleted; re-watching when the replica behind the address is replaced;
Ctrl-C on a real ``qvdcctl`` process exits 0."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import grpclib.server
from click.testing import CliRunner, Result

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc import cli
from qvdc.app import Controller
from qvdc.settings import EtcdSettings, GrpcSettings
from qvdc.store import keys
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import (
    TIMEOUT,
    controller_settings,
    create_request,
    eventually,
    register_request,
)

#: The nodes registered here never heartbeat, and the frames drawn are counted: an
#: OFFLINE node (after the default 3 s grace, on a slow machine) would draw one more.
CONTROLLER_GRACE = 60.0


def invoke(port: int, *argv: str) -> Result:
    # --max-seconds: a failing test must not leave a thread watching for ever.
    args = ["--insecure", "--controller", f"127.0.0.1:{port}", *argv, "--max-seconds", "25"]
    return CliRunner().invoke(cli.cli, args)


async def start_cli(port: int, *argv: str) -> asyncio.Task[Result]:
    # qvdcctl runs its own event loop: drive it from a thread while the controller serves.
    return asyncio.create_task(asyncio.to_thread(invoke, port, *argv))


async def watching(controller: Controller, streams: int) -> None:
    """The CLI's watch streams are open and its first frame is drawn."""
    await eventually(
        lambda: asyncio.sleep(0, controller.watches.open_streams),
        lambda n: n >= streams,
        what="the CLI's watch streams",
    )
    await asyncio.sleep(1.0)  # past the settle time: the initial frame is out


async def settled(controller: Controller, pool_id: str) -> None:
    """The new pool's first status is written (else it arrives as an extra update)."""
    await eventually(
        lambda: asyncio.sleep(0, controller.view.pool_status(pool_id)),
        lambda stored: stored is not None,
        what="the pool's status",
    )


def frames(output: str) -> list[str]:
    """The frames a non-terminal --watch prints: each starts with its title line."""
    parts = output.split("QvDC 127.0.0.1:")[1:]
    return [p for p in parts if "(watching; Ctrl-C to stop)" in p]


async def test_pools_list_watch_draws_the_initial_table_then_a_change(
    controller: Controller, pools: storage.StoragePoolServiceStub
) -> None:
    a = await pools.create_pool(create_request("wcli-a"), timeout=TIMEOUT)
    await settled(controller, a.id)
    task = await start_cli(controller.port, "pools", "list", "--watch", "--max-updates", "2")
    await watching(controller, 2)  # WatchPools and WatchNodes
    await pools.create_pool(create_request("wcli-b"), timeout=TIMEOUT)
    result = await asyncio.wait_for(task, 15)
    assert result.exit_code == 0, result.output
    first, second = frames(result.output)
    assert "wcli-a" in first and "wcli-b" not in first
    assert "wcli-a" in second and "wcli-b" in second
    assert "LOCAL_DIR" in second
    await eventually(
        lambda: asyncio.sleep(0, controller.watches.open_streams),
        lambda n: n == 0,
        what="the CLI's streams closed",
    )


async def test_watch_json_prints_one_line_per_update(
    controller: Controller, pools: storage.StoragePoolServiceStub
) -> None:
    a = await pools.create_pool(create_request("wjson"), timeout=TIMEOUT)
    await settled(controller, a.id)
    task = await start_cli(
        controller.port, "pools", "list", "--watch", "-o", "json", "--max-updates", "2"
    )
    await watching(controller, 1)
    await pools.update_pool(
        storage.UpdatePoolRequest(id=a.id, description="changed"), timeout=TIMEOUT
    )
    result = await asyncio.wait_for(task, 15)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert lines[0]["pool"]["id"] == a.id and lines[0].get("type", "ADDED") == "ADDED"
    assert lines[1]["type"] == "MODIFIED"


async def test_pools_get_watch_ends_when_the_pool_is_deleted(
    controller: Controller, pools: storage.StoragePoolServiceStub
) -> None:
    a = await pools.create_pool(create_request("wgone"), timeout=TIMEOUT)
    await pools.create_pool(create_request("wstays"), timeout=TIMEOUT)
    await settled(controller, a.id)
    task = await start_cli(controller.port, "pools", "get", "wgone", "--watch")
    await watching(controller, 2)
    await pools.delete_pool(storage.DeletePoolRequest(id=a.id, force=True), timeout=TIMEOUT)
    result = await asyncio.wait_for(task, 15)
    assert result.exit_code == 0, result.output
    drawn = frames(result.output)
    assert "wgone" in drawn[0] and "wstays" not in drawn[0]
    assert "(gone)" in drawn[-1] and "(no pools)" in drawn[-1]


async def test_nodes_list_watch_shows_maintenance(
    controller: Controller, nodes: compute.NodeServiceStub
) -> None:
    node = await nodes.register_node(register_request("wcli-host"), timeout=TIMEOUT)
    task = await start_cli(controller.port, "nodes", "list", "--watch", "--max-updates", "2")
    await watching(controller, 1)
    await nodes.disable_node(compute.DisableNodeRequest(id=node.id, reason="x"), timeout=TIMEOUT)
    result = await asyncio.wait_for(task, 15)
    assert result.exit_code == 0, result.output
    first, second = frames(result.output)
    assert "wcli-host" in first and "MAINTENANCE" not in first
    assert "MAINTENANCE" in second


async def test_nodes_get_watch_follows_one_node_until_it_is_deleted(
    controller: Controller, nodes: compute.NodeServiceStub, store: EtcdStore
) -> None:
    node = await nodes.register_node(register_request("wcli-one"), timeout=TIMEOUT)
    await nodes.register_node(register_request("wcli-other"), timeout=TIMEOUT)
    task = await start_cli(controller.port, "nodes", "get", "wcli-one", "--watch")
    await watching(controller, 1)
    await nodes.disable_node(compute.DisableNodeRequest(id=node.id, reason="x"), timeout=TIMEOUT)
    await asyncio.sleep(0.5)
    await store.delete(keys.node(node.id))
    result = await asyncio.wait_for(task, 15)
    assert result.exit_code == 1, result.output  # WatchNode ends NOT_FOUND: the node is gone
    assert "NOT_FOUND" in result.output and "was deleted" in result.output
    drawn = [f for f in result.output.split("QvDC 127.0.0.1:")[1:] if "(watching" in f]
    assert "wcli-one" in drawn[0] and "wcli-other" not in drawn[0]
    assert "MAINTENANCE" not in drawn[0] and "MAINTENANCE" in drawn[-1]


async def test_the_cli_rewatches_when_the_replica_behind_its_address_is_replaced(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> None:
    base = controller_settings(etcd_settings)
    first = Controller(store=store, settings=dataclasses.replace(base, replica_id="c1"))
    await first.start()
    port = first.port
    second_store = await EtcdStore.connect(settings=etcd_settings)
    second = Controller(
        store=second_store,
        settings=dataclasses.replace(
            base, replica_id="c2", grpc=GrpcSettings(host="127.0.0.1", port=port)
        ),
    )
    try:
        a = await first.pool_service.create_pool(create_request("wr-a"))
        await settled(first, a.id)
        task = await start_cli(port, "pools", "list", "--watch", "--max-updates", "3")
        await watching(first, 2)
        await first.stop()  # the CLI's streams end UNAVAILABLE; it re-watches with backoff
        # A change while nothing serves the address (through a replica elsewhere).
        elsewhere = Controller(store=store, settings=dataclasses.replace(base, replica_id="c3"))
        await elsewhere.start()
        try:
            b = await elsewhere.pool_service.create_pool(create_request("wr-b"))
            await settled(elsewhere, b.id)
        finally:
            await elsewhere.stop()
        await second.start()  # another replica at the same address
        await watching(second, 2)
        await second.pool_service.create_pool(create_request("wr-c"))
        result = await asyncio.wait_for(task, 20)
    finally:
        await second.stop()
        await first.stop()
        await second_store.close()
    assert result.exit_code == 0, result.output
    assert "watch lost (UNAVAILABLE" in result.output and "re-watching" in result.output
    one, two, three = frames(result.output)
    assert "wr-a" in one and "wr-b" not in one
    assert "(re-watched)" in two and "wr-a" in two and "wr-b" in two  # the whole truth again
    assert "wr-c" in three


async def test_ctrl_c_on_a_real_qvdcctl_on_a_terminal_exits_0(
    controller: Controller, pools: storage.StoragePoolServiceStub
) -> None:
    """On a terminal (a pty) the table is a rich Live display; SIGINT ends it with 0."""
    await pools.create_pool(create_request("wtty"), timeout=TIMEOUT)
    qvdcctl = Path(sys.executable).with_name("qvdcctl")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QVDC", "QVDCCTL"))}
    env.update(QVDC_CONTEXT="/nonexistent/context.json", COLUMNS="200", LINES="40")
    leader, follower = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        str(qvdcctl),
        "--insecure",
        "--controller",
        f"127.0.0.1:{controller.port}",
        "watch",
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    os.close(follower)
    seen = b""
    try:
        async with asyncio.timeout(15):
            while b"wtty" not in seen or b"(watching; Ctrl-C to stop)" not in seen:
                seen += await asyncio.to_thread(os.read, leader, 65536)
        assert b"\x1b[" in seen  # drawn for a terminal (cursor moves, colour)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):  # generous: the clean run's machine is loaded
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(leader)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err


async def test_a_controller_without_the_watch_rpcs_is_a_clear_error() -> None:
    server = grpclib.server.Server([storage.StoragePoolServiceBase(), compute.NodeServiceBase()])
    await server.start("127.0.0.1", 0)
    try:
        port = server._server.sockets[0].getsockname()[1]
        result = await asyncio.to_thread(invoke, port, "pools", "list", "--watch")
    finally:
        server.close()
        await server.wait_closed()
    assert result.exit_code == 1, result.output
    assert "UNIMPLEMENTED" in result.output and "run without --watch" in result.output
