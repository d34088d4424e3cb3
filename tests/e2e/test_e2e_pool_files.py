"""End to end: ListPoolFiles and ReconnectPool through a real node daemon's open stream.

A real controller (real etcd, gRPC and its Connect face on loopback) and a real
``python -m node`` process with a local-directory pool. The listing is asked over the
host's heartbeat stream and answered there (the daemon opens no port); the traversal
refusals come from the host itself; pages join up; the Connect face answers the same.
ReconnectPool makes the host re-attach a pool whose directory was covered by another
filesystem (UNMOUNTED until re-attached), and is refused once the host is not live.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpclib.client
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings, HttpSettings
from qvdc.store.etcd import EtcdStore
from tests.e2e.test_e2e_local_pools import local_pool_on_host, spawn_node  # noqa: F401 (fixture)
from tests.qvdc.api.helpers import TIMEOUT, controller_settings, eventually
from tests.qvdc.api.test_cli import run_cli
from tests.qvdc.http.conftest import Http

pytestmark = pytest.mark.e2e

Health = storage.PoolHostStatusHealth
SERVICE = "limiquantix.storage.v1.StoragePoolService/"
Spawn = Callable[[str], tuple[subprocess.Popen[bytes], Path]]


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    settings = dataclasses.replace(
        controller_settings(etcd_settings, grace=3.0),
        http=HttpSettings(enabled=True, host="127.0.0.1", port=0, close_timeout=1.0),
    )
    c = Controller(store=store, settings=settings)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
async def channel(controller: Controller) -> AsyncIterator[grpclib.client.Channel]:
    ch = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    pool = tmp_path / "pool"
    (pool / "images").mkdir(parents=True)
    for name in ("b.qcow2", "A.iso", "c.raw"):
        (pool / name).write_bytes(b"x" * 100)
    (pool / "images" / "disk.qcow2").write_bytes(b"y" * 7)
    (tmp_path / "secret").mkdir()
    (pool / "escape").symlink_to(tmp_path / "secret")
    yield pool
    while os.path.ismount(pool):
        subprocess.run(["umount", str(pool)], check=True)


async def _host_with_pool(
    channel: grpclib.client.Channel, spawn: Spawn, path: Path
) -> tuple[subprocess.Popen[bytes], Path, str, storage.StoragePool]:
    nodes = compute.NodeServiceStub(channel)
    pools = storage.StoragePoolServiceStub(channel)
    proc, home = spawn("host-a")
    pool = await local_pool_on_host(pools, nodes, path, "browse")
    return proc, home, pool.spec.assigned_node_ids[0], pool


async def _refusal(call: Awaitable[object]) -> GRPCError:
    with pytest.raises(GRPCError) as caught:
        await call
    return caught.value


async def test_list_pool_files_over_the_hosts_stream(
    controller: Controller,
    channel: grpclib.client.Channel,
    spawn_node: Spawn,  # noqa: F811
    tree: Path,
) -> None:
    pools = storage.StoragePoolServiceStub(channel)
    proc, _, _, pool = await _host_with_pool(channel, spawn_node, tree)

    def ls(path: str = "", **more: object) -> Awaitable[storage.ListPoolFilesResponse]:
        request = storage.ListPoolFilesRequest(pool_id=pool.id, path=path, **more)  # type: ignore[arg-type]
        return pools.list_pool_files(request, timeout=TIMEOUT)

    root = await ls()
    assert [(e.name, e.is_directory, e.file_type) for e in root.entries] == [
        ("images", True, "directory"),
        ("A.iso", False, "iso"),
        ("b.qcow2", False, "qcow2"),
        ("c.raw", False, "raw"),
        ("escape", False, "escape"),  # a symlink is listed as itself
    ]
    iso = root.entries[1]
    assert (iso.path, iso.size_bytes, iso.permissions) == ("A.iso", 100, "644")
    assert iso.modified_at.endswith("Z")
    assert root.current_path == "" and root.next_page_token == ""

    sub = await ls("/images")
    assert [(e.name, e.path, e.size_bytes) for e in sub.entries] == [
        ("disk.qcow2", "images/disk.qcow2", 7)
    ]
    assert sub.current_path == "images"

    # Pages of two join up to the whole listing; a token is for its own path only.
    seen: list[str] = []
    token = ""
    while True:
        page = await ls(page_size=2, page_token=token)
        assert len(page.entries) <= 2
        seen += [e.name for e in page.entries]
        token = page.next_page_token
        if not token:
            break
    assert seen == [e.name for e in root.entries]
    first = await ls(page_size=2)
    wrong = await _refusal(ls("images", page_token=first.next_page_token))
    assert wrong.status == Status.INVALID_ARGUMENT and "page_token" in (wrong.message or "")

    # Refusals: '..' here, a symlink out of the pool and a missing path by the host.
    dots = await _refusal(ls("images/../.."))
    assert (dots.status, dots.message) == (Status.INVALID_ARGUMENT, "path: contains '..'")
    escape = await _refusal(ls("escape"))
    assert escape.status == Status.INVALID_ARGUMENT
    assert escape.message == "host host-a: path: is outside the pool root"
    missing = await _refusal(ls("/etc"))
    assert missing.status == Status.NOT_FOUND
    assert missing.message == "host host-a: path: etc does not exist in the pool"
    assert controller.host_requests.waiting == 0

    # The Connect face answers the same, with upstream's JSON names.
    http = Http(controller.http_port)
    answer = await http.call(SERVICE + "ListPoolFiles", {"poolId": pool.id, "path": "images"})
    assert answer.status == 200, answer.body
    (entry,) = answer.json()["entries"]
    assert (entry["name"], entry["path"], entry["fileType"]) == (
        "disk.qcow2",
        "images/disk.qcow2",
        "qcow2",
    )
    refused = await http.call(SERVICE + "ListPoolFiles", {"poolId": pool.id, "path": "escape"})
    assert refused.json() == {
        "code": "invalid_argument",
        "message": "host host-a: path: is outside the pool root",
    }
    gone = await http.call(SERVICE + "ListPoolFiles", {"poolId": "no-such-pool"})
    assert gone.json()["code"] == "not_found"

    # qvdcctl pools files: by pool name, every page fetched, a table or JSON.
    table = await run_cli(controller, "pools", "files", "browse", "--page-size", "2")
    assert table.exit_code == 0, table.output
    names = [line.split()[0] for line in table.output.splitlines()[1:]]
    assert names == ["images/", "A.iso", "b.qcow2", "c.raw", "escape"], table.output
    listed = await run_cli(controller, "pools", "files", "browse", "images", "-o", "json")
    assert listed.exit_code == 0, listed.output
    assert [e["path"] for e in json.loads(listed.output)["entries"]] == ["images/disk.qcow2"]
    outside = await run_cli(controller, "pools", "files", "browse", "escape")
    assert outside.exit_code == 1 and "outside the pool root" in outside.output, outside.output

    # A host that is gone cannot be asked.
    proc.terminate()
    await asyncio.to_thread(proc.wait, 15)
    await eventually(
        lambda: pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT),
        lambda p: all(r.stale for r in p.status.host_statuses),
        timeout=30,
        what="the row stale",
    )
    none = await _refusal(ls())
    assert none.status == Status.FAILED_PRECONDITION
    assert "no live host has pool" in (none.message or "")
    assert "host-a: HEALTHY, not live" in (none.message or "")


async def test_reconnect_pool_reattaches_on_the_host(
    controller: Controller,
    channel: grpclib.client.Channel,
    spawn_node: Spawn,  # noqa: F811
    tree: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    pools = storage.StoragePoolServiceStub(channel)
    proc, home, _, pool = await _host_with_pool(channel, spawn_node, tree)

    def get() -> Awaitable[storage.StoragePool]:
        return pools.get_pool(storage.GetPoolRequest(id=pool.id), timeout=TIMEOUT)

    def reconnect() -> Awaitable[storage.StoragePool]:
        return pools.reconnect_pool(storage.ReconnectPoolRequest(id=pool.id), timeout=TIMEOUT)

    # Every host HEALTHY: nothing to re-attach, the pool comes back as it is.
    same = await reconnect()
    assert [r.health for r in same.status.host_statuses] == [Health.HEALTHY]

    # Another filesystem over the pool's directory: not the one attached, so UNMOUNTED
    # (and it stays so: the host never adopts a filesystem by itself).
    await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", "size=8m", "quantix-test", str(tree)],
        check=True,
    )
    await eventually(
        get,
        lambda p: [r.health for r in p.status.host_statuses] == [Health.UNMOUNTED],
        timeout=30,
        what="UNMOUNTED under the new filesystem",
    )
    await asyncio.sleep(2.5)  # a few more probes (interval 1 s): still UNMOUNTED
    assert [r.health for r in (await get()).status.host_statuses] == [Health.UNMOUNTED]

    returned = await reconnect()
    assert returned.id == pool.id
    healthy = await eventually(
        get,
        lambda p: [r.health for r in p.status.host_statuses] == [Health.HEALTHY],
        timeout=30,
        what="HEALTHY once re-attached",
    )
    (row,) = healthy.status.host_statuses
    assert 0 < row.total_bytes <= 8 * 1024**2  # the tmpfs, as attached again
    log = (home / "node.log").read_text(errors="replace")
    assert f"re-attaching pool(s) {pool.id} as the controller asked" in log
    assert log.count("re-attaching pool(s)") == 1  # not for the HEALTHY call above

    # Over Connect too, then refused once the host is not live.
    http = Http(controller.http_port)
    answer = await http.call(SERVICE + "ReconnectPool", {"id": pool.id})
    assert answer.status == 200 and answer.json()["id"] == pool.id
    proc.terminate()
    await asyncio.to_thread(proc.wait, 15)
    await eventually(
        get,
        lambda p: all(r.stale for r in p.status.host_statuses),
        timeout=30,
        what="the row stale",
    )
    refused = await _refusal(reconnect())
    assert refused.status == Status.FAILED_PRECONDITION
    assert "no live host to re-attach pool" in (refused.message or "")
    missing = await _refusal(
        pools.reconnect_pool(storage.ReconnectPoolRequest(id="nope"), timeout=TIMEOUT)
    )
    assert missing.status == Status.NOT_FOUND
