"""End to end over the four backends, each on a real storage server.

A real controller (in-process, real etcd, grpclib on loopback, heartbeat
interval 1 s) and ONE real node daemon (``python -m node``, a separate
process, heartbeat interval 1 s, probe bound 2 s) holding four pools:

* ``local_dir`` on a loop-mounted ext4 image (the pool's ``path``);
* ``nfs`` on the session nfs-ganesha export ``127.0.0.1:/pool``, mounted with
  the node-style stand-in for ``mount -t nfs`` (``scripts/nfs-bind-mount``,
  given as ``--backend-option nfs.mount_command=...`` with the fixture's
  export map in ``QUANTIX_NFS_BIND_MAP``; this kernel has no NFS client);
* ``iscsi`` on LUN 1 of a target of this test's own on the session tgtd;
* ``ceph_rbd`` on pool ``rbd`` of the session Ceph cluster.

All four become READY with one HEALTHY host row each. Then the NFS server is
frozen (SIGSTOP: the kernel still accepts its TCP connections, nothing
answers), which is what a hung NFS server looks like. DESIGN §7: that pool's
row must turn ERROR within one probe interval plus the probe bound, naming
the silence, while the heartbeat stays on time: the other three pools stay
READY/HEALTHY, the node stays READY (never OFFLINE: the grace is 3 s, so a
heartbeat held up behind the 2 s probe would show), and the node's
``last_heartbeat`` (filled in by the controller from each heartbeat it
receives) keeps advancing about every interval throughout the hang. After
SIGCONT the NFS pool is READY again. The server is always resumed, by the
test and again by the ``nfs_export`` fixture (hanging the session server is
what that fixture is built for: it resumes and empties it around each test).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from storage_backends import local_dir
from tests.fixtures.ceph import POOL as CEPH_POOL
from tests.fixtures.ceph import (
    CephCluster,
    fixture_ceph_cluster,  # noqa: F401  (fixtures used by name)
)
from tests.fixtures.iscsi import (
    Target,
    TgtServer,
    scratch_target_fixture,  # noqa: F401
    tgtd_fixture,  # noqa: F401
)
from tests.fixtures.nfs import BIND_HELPER as NFS_BIND_HELPER
from tests.fixtures.nfs import (
    NfsServer,
    nfs_export_fixture,  # noqa: F401
    nfs_server_fixture,  # noqa: F401
    unmount_under,
)
from tests.qvdc.api.helpers import TIMEOUT, controller_settings, eventually

pytestmark = pytest.mark.e2e

PoolPhase = storage.StoragePoolStatusPhase
Health = storage.PoolHostStatusHealth
BackendType = storage.StorageBackendBackendType
NodePhase = compute.NodeStatusPhase
ROOT = Path(__file__).resolve().parents[2]

#: The heartbeat interval (controller and node) and the node's probe bound.
INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
#: Liveness grace of the controller: a heartbeat late by more than this marks the node OFFLINE.
GRACE = 3.0
#: Slack on top of "interval + probe bound" for the hung pool's row to turn ERROR.
#: What it covers: the node's own ceiling on a probe is 1.1 x the bound + 0.05 s
#: (0.25 s beyond it, node/probing.py); then the immediate heartbeat on the
#: health change, the controller's group commit and aggregation, the etcd watch
#: feeding the API's view, and this test's 50 ms polling, each some
#: milliseconds but on a 2-core machine shared with other test runs.
ERROR_SLACK = 1.0
#: Slack on top of the interval between two heartbeats the controller receives
#: (scheduling on a loaded machine; the node's jitter only shortens the interval).
#: A heartbeat waiting for the hung 2 s probe would exceed it by far.
HEARTBEAT_SLACK = 0.5
#: How long the server stays hung after the row turned ERROR (several intervals
#: of heartbeats observed while the NFS probe keeps timing out).
HANG_HOLD = 3.0
#: Seconds for start-up steps (registration, first attach of all four pools).
SETTLE = 30.0
#: Sampling period of the observer during the hang.
SAMPLE_EVERY = 0.1
COMMAND_TIMEOUT = 30.0


# -- a real local filesystem for the local_dir pool -----------------------------------


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=check, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )


def _mounted(path: Path) -> bool:
    return any(m.mount_point == str(path) for m in local_dir.read_mounts())


@pytest.fixture
def ext4_mount(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB ext4 image (``-m 0``), loop-attached and mounted; all undone afterwards."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root and loop devices")
    for tool in ("losetup", "mkfs.ext4", "mount", "umount", "truncate"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    image, mount_point = tmp_path / "local.img", tmp_path / "local"
    mount_point.mkdir()
    _sh("truncate", "-s", "64M", str(image))
    _sh("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    attached = _sh("losetup", "-f", "--show", str(image), check=False)
    if attached.returncode != 0:
        pytest.skip(f"no free loop device: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        _sh("mount", device, str(mount_point))
        yield mount_point
    finally:
        for _ in range(3):
            if not _mounted(mount_point):
                break
            if _sh("umount", str(mount_point), check=False).returncode != 0:
                _sh("umount", "-l", str(mount_point), check=False)
        with contextlib.suppress(subprocess.SubprocessError):
            _sh("losetup", "-d", device)


# -- controller and node ----------------------------------------------------------------


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=controller_settings(etcd_settings, grace=GRACE))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@dataclass
class NodeDaemon:
    process: subprocess.Popen[bytes]
    home: Path
    hostname: str

    @property
    def pools_root(self) -> Path:
        return self.home / "pools"

    def log(self) -> str:
        return (self.home / "node.log").read_text(errors="replace")


@pytest.fixture
def node_daemon(
    controller: Controller, nfs_export: NfsServer, ext4_mount: Path, tmp_path: Path
) -> Iterator[NodeDaemon]:
    """One ``python -m node`` child with every backend configured the way a host would be.

    Teardown: SIGTERM (SIGKILL after 15 s), then unmount what the daemon left
    mounted under its home (the NFS pool's bind mount; the daemon keeps its
    pools attached across restarts by design).
    """
    home = tmp_path / "host-1"
    home.mkdir()
    argv = [
        sys.executable,
        "-m",
        "node",
        "--controller",
        f"127.0.0.1:{controller.port}",
        "--hostname",
        "host-1",
        "--management-ip",
        "127.0.0.1",
        "--state-dir",
        str(home / "state"),
        "--pools-root",
        str(home / "pools"),
        "--heartbeat-interval",
        f"{INTERVAL:g}",
        "--probe-timeout",
        f"{PROBE_TIMEOUT:g}",
        "--backend-option",
        f"nfs.mount_command={shlex.quote(str(NFS_BIND_HELPER))}",
        "--backend-option",
        f"nfs.nfs_port={nfs_export.port}",
        "--libvirt-uri",
        "test:///default",
        "--insecure",  # the in-process controller is plain text
        "--log-level",
        "DEBUG",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "QUANTIX_NFS_BIND_MAP": str(nfs_export.bind_map),
    }
    with open(home / "node.log", "wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield NodeDaemon(process=process, home=home, hostname="host-1")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        unmount_under(home)


# -- observing the hang -------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    node_phase: NodePhase
    last_heartbeat: datetime.datetime | None
    #: Pool name -> (pool phase, health of its one host row or None).
    pools: dict[str, tuple[PoolPhase, Health | None]]


@dataclass
class Observer:
    """Samples the node and every pool through the API until stopped."""

    nodes: compute.NodeServiceStub
    pools: storage.StoragePoolServiceStub
    node_id: str
    pool_ids: dict[str, str]
    samples: list[Sample] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            node = await self.nodes.get_node(
                compute.GetNodeRequest(id=self.node_id), timeout=TIMEOUT
            )
            status: dict[str, tuple[PoolPhase, Health | None]] = {}
            for name, pool_id in self.pool_ids.items():
                pool = await self.pools.get_pool(
                    storage.GetPoolRequest(id=pool_id), timeout=TIMEOUT
                )
                rows = pool.status.host_statuses
                status[name] = (pool.status.phase, rows[0].health if len(rows) == 1 else None)
            self.samples.append(
                Sample(
                    at=time.time(),
                    node_phase=node.status.phase,
                    last_heartbeat=node.status.last_heartbeat,
                    pools=status,
                )
            )
            await asyncio.sleep(SAMPLE_EVERY)


def heartbeat_gaps(samples: list[Sample]) -> list[float]:
    """Seconds between consecutive distinct ``last_heartbeat`` values seen."""
    seen = sorted({s.last_heartbeat.timestamp() for s in samples if s.last_heartbeat})
    return [round(b - a, 3) for a, b in itertools.pairwise(seen)]


# -- the test -------------------------------------------------------------------------------


async def test_four_backends_and_a_hung_nfs_server_that_never_delays_the_heartbeat(
    controller: Controller,
    node_daemon: NodeDaemon,
    nfs_export: NfsServer,
    ext4_mount: Path,
    tgtd: TgtServer,
    scratch_target: Target,
    ceph_cluster: CephCluster,
) -> None:
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    nodes = compute.NodeServiceStub(channel)
    pools = storage.StoragePoolServiceStub(channel)
    try:
        listed = await eventually(
            lambda: nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT),
            lambda r: any(n.hostname == node_daemon.hostname for n in r.nodes),
            timeout=SETTLE,
            what="the daemon registered",
        )
        node_id = next(n.id for n in listed.nodes if n.hostname == node_daemon.hostname)

        backends = {
            "local": storage.StorageBackend(
                type=BackendType.LOCAL_DIR,
                local_dir=storage.LocalDirConfig(path=str(ext4_mount)),
            ),
            "nfs": storage.StorageBackend(
                type=BackendType.NFS,
                nfs=storage.NfsConfig(
                    server=nfs_export.host, export_path=nfs_export.pseudo_path, version="4.1"
                ),
            ),
            "iscsi": storage.StorageBackend(
                type=BackendType.ISCSI,
                iscsi=storage.IscsiConfig(portal=tgtd.portal, target=scratch_target.iqn, lun=1),
            ),
            "ceph": storage.StorageBackend(
                type=BackendType.CEPH_RBD,
                ceph=storage.CephConfig(pool_name=CEPH_POOL, monitors=ceph_cluster.monitors),
            ),
        }
        pool_ids: dict[str, str] = {}
        for name, backend in backends.items():
            created = await pools.create_pool(
                storage.CreatePoolRequest(
                    name=f"e2e-{name}",
                    spec=storage.StoragePoolSpec(backend=backend, assigned_node_ids=[node_id]),
                ),
                timeout=TIMEOUT,
            )
            pool_ids[name] = created.id

        async def get(name: str) -> storage.StoragePool:
            return await pools.get_pool(storage.GetPoolRequest(id=pool_ids[name]), timeout=TIMEOUT)

        async def get_all() -> dict[str, storage.StoragePool]:
            return {name: await get(name) for name in pool_ids}

        def all_ready(found: dict[str, storage.StoragePool]) -> bool:
            return all(
                p.status.phase == PoolPhase.READY
                and len(p.status.host_statuses) == 1
                and p.status.host_statuses[0].health == Health.HEALTHY
                for p in found.values()
            )

        ready = await eventually(get_all, all_ready, timeout=SETTLE, what="four READY pools")
        expected_mount_paths = {
            "local": str(ext4_mount),
            "nfs": str(node_daemon.pools_root / f"nfs-{pool_ids['nfs']}"),
            "iscsi": f"iscsi://{tgtd.portal}/{scratch_target.iqn}/1",
            "ceph": f"rbd:{CEPH_POOL}",
        }
        for name, pool in ready.items():
            row = pool.status.host_statuses[0]
            assert row.node_id == node_id and row.assigned and not row.stale, (name, row)
            assert row.total_bytes > 0, (name, row)
            assert row.mount_path == expected_mount_paths[name], (name, row)
            assert row.error_message == "", (name, row)
        # The NFS pool really is mounted where it says (by the bind stand-in).
        assert any(m.mount_point == expected_mount_paths["nfs"] for m in local_dir.read_mounts()), (
            "NFS pool not mounted"
        )

        # -- hang the NFS server --------------------------------------------------------
        observer = Observer(nodes=nodes, pools=pools, node_id=node_id, pool_ids=pool_ids)
        watching = asyncio.create_task(observer.run(), name="observer")
        hung_at_wall = time.time()
        hung_at = time.monotonic()
        nfs_export.hang()  # waits until every thread of ganesha has stopped
        try:
            bound = INTERVAL + PROBE_TIMEOUT + ERROR_SLACK
            errored = await eventually(
                lambda: get("nfs"),
                lambda p: (
                    len(p.status.host_statuses) == 1
                    and p.status.host_statuses[0].health == Health.ERROR
                ),
                timeout=bound,
                what=f"the hung NFS pool's row ERROR within {bound:g}s",
            )
            error_after = time.monotonic() - hung_at
            message = errored.status.host_statuses[0].error_message
            assert "did not answer" in message or "timed out" in message, message
            assert errored.status.phase == PoolPhase.ERROR
            # Keep it hung for a few more intervals: the NFS probe keeps timing out.
            await asyncio.sleep(HANG_HOLD)
            assert not watching.done(), watching
        finally:
            if nfs_export.hung:
                nfs_export.resume()
            resumed_at_wall = time.time()
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching

        during = [s for s in observer.samples if hung_at_wall <= s.at <= resumed_at_wall]
        assert len(during) >= 10, during  # the observer kept sampling throughout
        # The node stayed READY and the other pools READY with HEALTHY rows throughout.
        for sample in during:
            assert sample.node_phase == NodePhase.READY, sample
            for name in ("local", "iscsi", "ceph"):
                assert sample.pools[name] == (PoolPhase.READY, Health.HEALTHY), (name, sample)
        # The heartbeat kept coming about every interval while the NFS probe hung.
        gaps = heartbeat_gaps(during)
        print(  # the measured timings, in the test's captured output (-rP shows it)
            f"hang -> ERROR row after {error_after:.2f}s; heartbeat gaps during the "
            f"{resumed_at_wall - hung_at_wall:.1f}s hang: {gaps}"
        )
        assert len(gaps) >= int(resumed_at_wall - hung_at_wall - INTERVAL), gaps
        assert max(gaps) <= INTERVAL + HEARTBEAT_SLACK, gaps
        last = during[-1].last_heartbeat
        assert last is not None
        assert resumed_at_wall - last.timestamp() <= INTERVAL + HEARTBEAT_SLACK, last

        # -- resume: READY again ----------------------------------------------------------
        recovered = await eventually(
            lambda: get("nfs"),
            lambda p: (
                p.status.phase == PoolPhase.READY
                and len(p.status.host_statuses) == 1
                and p.status.host_statuses[0].health == Health.HEALTHY
            ),
            timeout=INTERVAL + PROBE_TIMEOUT + SETTLE,
            what="the NFS pool READY again after SIGCONT",
        )
        assert recovered.status.host_statuses[0].error_message == ""
        assert all_ready(await get_all())
        assert node_daemon.process.poll() is None, node_daemon.log()[-3000:]
    finally:
        channel.close()
