"""Fixtures for the storage backend tests.

* ``harness``: one :class:`Harness` per backend kind, so the contract suite
  runs unchanged over every backend: fake, local_dir on ``tmp_path``, nfs on
  the session nfs-ganesha, iscsi on a tgtd of the test's own, ceph_rbd on the
  session Ceph cluster (``tests/fixtures/``; each server is started only when
  a test of its kind runs). A harness knows how to make a valid and an
  invalid spec, how to put a volume into a pool (on the server: a file in the
  NFS export, a LUN, an RBD image), how to make the pool's probe hang (the
  server frozen with SIGSTOP) and what the backend must list afterwards.
* ``hung_statvfs``: fault injection for local_dir: replaces the module's
  ``_statvfs`` with one that blocks on a :class:`threading.Event`, the way a
  dead NFS server blocks ``statvfs``; always released at teardown.
* ``loop_ext4``: a real 64 MiB ext4 image, loop-attached and mounted under
  ``tmp_path``; skipped with a reason when not root or without loop devices.
  Teardown unmounts it and detaches only the loop device it created (never
  ``losetup -D``: other processes on the machine use loop devices too).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import secrets
import shutil
import signal
import struct
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from storage_backends import base, ceph_rbd, fake, iscsi, local_dir, nfs
from tests.fixtures import procs
from tests.fixtures.ceph import POOL as CEPH_POOL
from tests.fixtures.ceph import (
    CephCluster,
    RbdClient,
    fixture_ceph_cluster,  # noqa: F401  (fixtures used by name)
    fixture_rbd_client,  # noqa: F401
)
from tests.fixtures.iscsi import (
    Target,
    TgtServer,
    private_tgtd_fixture,  # noqa: F401
)
from tests.fixtures.nfs import BIND_HELPER as NFS_BIND_HELPER
from tests.fixtures.nfs import (
    NfsServer,
    nfs_export_fixture,  # noqa: F401
    nfs_server_fixture,  # noqa: F401
    unmount_under,
)

#: Seconds any helper command in fixtures may take.
COMMAND_TIMEOUT = 30.0
#: EXT4_IOC_SHUTDOWN (= FS_IOC_SHUTDOWN, _IOR('X', 125, __u32)) and its NOLOGFLUSH flag.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


# -- contract harnesses ---------------------------------------------------------


class Harness(Protocol):
    """How the contract suite drives one backend kind against its (real) storage.

    Where backends legitimately differ, the harness says how, so the contract
    tests stay one set of tests:

    * ``field_prefix``: what ``InvalidConfig`` messages start with, the name of
      the pool's config message (``ceph`` for ``ceph_rbd``: the proto's
      ``CephConfig`` is shared with CephFS);
    * ``initial_volumes``: what a freshly created pool already lists (an iSCSI
      pool's own LUN is one of its target's volumes);
    * ``add_volume`` returns the :class:`~storage_backends.base.VolumeInfo`
      the backend must list for the volume it created (iSCSI volumes are LUNs
      named ``lun-<n>``; paths are each backend's documented form).
    """

    @property
    def kind(self) -> str: ...

    @property
    def field_prefix(self) -> str: ...

    @property
    def backend(self) -> base.StorageBackend: ...

    def spec(self, pool_id: str) -> base.PoolSpec: ...

    def invalid_spec(self, pool_id: str) -> base.PoolSpec: ...

    def initial_volumes(self, spec: base.PoolSpec) -> list[base.VolumeInfo]: ...

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> base.VolumeInfo: ...

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        """Make probes of ``spec`` hang; returns the function that releases them."""
        ...


@dataclass
class FakeHarness:
    backend: fake.FakeBackend = field(default_factory=fake.FakeBackend)
    kind: str = "fake"
    field_prefix: str = "fake"

    def spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(pool_id=pool_id, kind=self.kind)

    def invalid_spec(self, pool_id: str) -> base.PoolSpec:
        self.backend.script(pool_id, invalid="fake.widget must be set")
        return base.PoolSpec(pool_id=pool_id, kind=self.kind)

    def initial_volumes(self, spec: base.PoolSpec) -> list[base.VolumeInfo]:
        return []

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> base.VolumeInfo:
        self.backend.pool(spec.pool_id).volumes[name] = size
        return base.VolumeInfo(name=name, size_bytes=size, path=f"fake://{spec.pool_id}/{name}")

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        return self.backend.hang_probe(spec.pool_id).set


@dataclass
class LocalDirHarness:
    backend: local_dir.LocalDirBackend
    hung: HungStatvfs
    kind: str = "local_dir"
    field_prefix: str = "local_dir"

    def spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(pool_id=pool_id, kind=self.kind)

    def invalid_spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(pool_id=pool_id, kind=self.kind, config={"path": "relative/dir"})

    def initial_volumes(self, spec: base.PoolSpec) -> list[base.VolumeInfo]:
        return []

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> base.VolumeInfo:
        path = Path(self.backend.pool_path(spec)) / name
        with path.open("wb") as f:
            f.write(b"\0" * size)
        return base.VolumeInfo(name=name, size_bytes=size, path=str(path))

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        self.hung.block(self.backend.pool_path(spec))
        return self.hung.release


@dataclass
class NfsHarness:
    """Pools on the session nfs-ganesha, mounted the way the node mounts them.

    Each pool is its own subdirectory of the export (``127.0.0.1:/pool/<id>``;
    an NFSv4 client may mount any directory below an export), so two pools
    are independent as two exports would be. The mount command is the node's
    stand-in for ``mount -t nfs`` (``scripts/nfs-bind-mount``) with a map of
    this harness's own from each pool's export path to its backing directory;
    probes still ask the real server (libnfs FSSTAT). Volumes are image files
    written into the backing directory, i.e. onto the server's disk. A hung
    probe is the real fault: ganesha stopped with SIGSTOP (the kernel still
    accepts TCP connections, nothing answers), released with SIGCONT.
    """

    server: NfsServer
    mount_root: Path
    bind_map: Path
    kind: str = "nfs"
    field_prefix: str = "nfs"
    backend: nfs.NfsBackend = field(init=False)

    def __post_init__(self) -> None:
        self.bind_map.write_text("")
        self.backend = nfs.NfsBackend(
            mount_root=self.mount_root,
            mount_command=("env", f"QUANTIX_NFS_BIND_MAP={self.bind_map}", str(NFS_BIND_HELPER)),
            nfs_port=self.server.port,
        )

    def backing_dir(self, spec: base.PoolSpec) -> Path:
        return self.server.export_dir / spec.pool_id

    def spec(self, pool_id: str) -> base.PoolSpec:
        export_path = f"{self.server.pseudo_path}/{pool_id}"
        backing = self.server.export_dir / pool_id
        if not backing.exists():
            backing.mkdir()
            with self.bind_map.open("a") as f:
                f.write(f"{self.server.host}:{export_path} {backing}\n")
        return base.PoolSpec(
            pool_id=pool_id,
            kind=self.kind,
            config={"server": self.server.host, "export_path": export_path, "version": "4.1"},
        )

    def invalid_spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(
            pool_id=pool_id, kind=self.kind, config={"server": "", "export_path": "/pool"}
        )

    def initial_volumes(self, spec: base.PoolSpec) -> list[base.VolumeInfo]:
        return []

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> base.VolumeInfo:
        with (self.backing_dir(spec) / name).open("wb") as f:
            f.write(b"\0" * size)
        mount_point = self.backend.parse(spec).mount_point
        return base.VolumeInfo(name=name, size_bytes=size, path=f"{mount_point}/{name}")

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        self.server.hang()  # waits until every thread has stopped
        return self.server.resume


@dataclass
class IscsiHarness:
    """Pools that are LUN 1 of a target of their own on a tgtd of the test's own.

    A private tgtd (about 50 ms to start) rather than the session one, because
    the hung-probe contract freezes the whole daemon (SIGSTOP; the kernel
    still accepts connections, nothing answers): other targets on a shared
    daemon would hang too. Each pool gets a target with a 32 MiB LUN 1; a
    volume is one more LUN on the pool's target, so ``initial_volumes`` is
    the pool's own LUN (an iSCSI pool counts its target's data LUNs). The
    backend logs in with the userspace initiator (no kernel initiator here).
    """

    server: TgtServer
    kind: str = "iscsi"
    field_prefix: str = "iscsi"
    backend: iscsi.IscsiBackend = field(
        default_factory=lambda: iscsi.IscsiBackend(initiator=iscsi.UserspaceInitiator())
    )
    _targets: dict[str, Target] = field(default_factory=dict)

    def _target(self, pool_id: str) -> Target:
        if pool_id not in self._targets:
            self._targets[pool_id] = self.server.add_target(
                f"pool-{pool_id}", luns={1: ISCSI_POOL_LUN_SIZE}
            )
        return self._targets[pool_id]

    def _path(self, target: Target, lun: int) -> str:
        return self.backend.initiator.device_path(
            portal=self.server.portal, target=target.iqn, lun=lun
        )

    def spec(self, pool_id: str) -> base.PoolSpec:
        target = self._target(pool_id)
        return base.PoolSpec(
            pool_id=pool_id,
            kind=self.kind,
            config={"portal": self.server.portal, "target": target.iqn, "lun": 1},
        )

    def invalid_spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(
            pool_id=pool_id,
            kind=self.kind,
            config={"portal": self.server.portal, "target": "not-an-iqn", "lun": 1},
        )

    def initial_volumes(self, spec: base.PoolSpec) -> list[base.VolumeInfo]:
        target = self._target(spec.pool_id)
        return [
            base.VolumeInfo(
                name="lun-1", size_bytes=ISCSI_POOL_LUN_SIZE, path=self._path(target, 1)
            )
        ]

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> base.VolumeInfo:
        # The LUN number is the volume's identity; ``name`` has no place on the
        # wire. LUN sizes are whole 512-byte blocks (the contract's sizes are).
        del name
        target = self._target(spec.pool_id)
        lun = max(target.luns) + 1
        self.server.add_lun(target, lun, size=size)
        return base.VolumeInfo(name=f"lun-{lun}", size_bytes=size, path=self._path(target, lun))

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        self.server.hang()  # waits until every thread has stopped
        return self.server.resume


@dataclass
class CephHarness:
    """Pools in pool ``rbd`` of the session Ceph cluster, one RBD namespace each.

    A namespace per pool (created on first use, removed with its images at
    teardown) keeps pools independent and volume counts exact on a cluster
    other tests use too; the pool's ``mount_path`` is then
    ``rbd:rbd/<namespace>``. Volumes are RBD images created through librbd,
    as an operator or libvirt would. A hung probe is the monitor stopped with
    SIGSTOP (it still accepts TCP connections and answers nothing), always
    resumed with SIGCONT: by the release function and again at teardown.
    """

    cluster: CephCluster
    client: RbdClient
    kind: str = "ceph_rbd"
    field_prefix: str = "ceph"
    backend: ceph_rbd.CephRbdBackend = field(
        default_factory=lambda: ceph_rbd.CephRbdBackend(probe_timeout=2.0)
    )
    prefix: str = field(default_factory=lambda: f"c{secrets.token_hex(3)}")
    namespaces: dict[str, str] = field(default_factory=dict)

    def _namespace(self, pool_id: str) -> str:
        if pool_id not in self.namespaces:
            name = f"{self.prefix}-{pool_id}"
            self.client.create_namespace(name)
            self.namespaces[pool_id] = name
        return self.namespaces[pool_id]

    def spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(
            pool_id=pool_id,
            kind=self.kind,
            config={
                "pool_name": CEPH_POOL,
                "monitors": self.cluster.monitors,
                "namespace": self._namespace(pool_id),
            },
        )

    def invalid_spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(
            pool_id=pool_id,
            kind=self.kind,
            config={"pool_name": "", "monitors": self.cluster.monitors},
        )

    def initial_volumes(self, spec: base.PoolSpec) -> list[base.VolumeInfo]:
        return []

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> base.VolumeInfo:
        namespace = self._namespace(spec.pool_id)
        self.client.create_image(name, size=size, namespace=namespace)
        return base.VolumeInfo(
            name=name, size_bytes=size, path=f"rbd:{CEPH_POOL}/{namespace}/{name}"
        )

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        mon = self.cluster.mon
        procs.sigstop(mon.pid)
        return functools.partial(mon.send, signal.SIGCONT)

    async def close(self) -> None:
        """Resume the monitor, close every connection, remove the namespaces."""
        self.cluster.mon.send(signal.SIGCONT)
        for pool_id in list(self.namespaces):
            await self.backend.detach(
                base.PoolSpec(pool_id=pool_id, kind=self.kind), timeout=CEPH_CLEANUP_TIMEOUT
            )
        for namespace in self.namespaces.values():
            await asyncio.to_thread(self.client.remove_namespace, namespace)


#: Size of the LUN that is an iSCSI pool (sparse file).
ISCSI_POOL_LUN_SIZE = 32 * 1024 * 1024
#: Seconds the Ceph harness gives each detach at teardown (librados' own
#: timeouts end a call stuck on a monitor that was hung within ~3 s).
CEPH_CLEANUP_TIMEOUT = 10.0

HARNESS_KINDS = ("fake", "local_dir", "nfs", "iscsi", "ceph_rbd")


@pytest.fixture
def pools_root(tmp_path: Path) -> Path:
    root = tmp_path / "pools"
    root.mkdir()
    return root


@pytest.fixture(params=HARNESS_KINDS)
async def harness(
    request: pytest.FixtureRequest, pools_root: Path, tmp_path: Path
) -> AsyncIterator[Harness]:
    """One harness per backend kind; servers are requested only by their own kind."""
    kind = request.param
    if kind == "fake":
        yield FakeHarness()
    elif kind == "local_dir":
        yield LocalDirHarness(
            backend=local_dir.LocalDirBackend(pools_root=pools_root),
            hung=request.getfixturevalue("hung_statvfs"),
        )
    elif kind == "nfs":
        # nfs_export: the session server, serving (resumed if a test left it
        # hung) and with an empty export, before and after the test.
        server: NfsServer = request.getfixturevalue("nfs_export")
        try:
            yield NfsHarness(server=server, mount_root=pools_root, bind_map=tmp_path / "bind-map")
        finally:
            unmount_under(pools_root)
    elif kind == "iscsi":
        yield IscsiHarness(server=request.getfixturevalue("private_tgtd"))
    else:
        ceph = CephHarness(
            cluster=request.getfixturevalue("ceph_cluster"),
            client=request.getfixturevalue("rbd_client"),
        )
        try:
            yield ceph
        finally:
            await ceph.close()


# -- a hung filesystem (fault injection) ------------------------------------------


class HungStatvfs:
    """Replacement for ``local_dir._statvfs`` that blocks for chosen paths.

    Records every call, so tests can prove no second worker was started.
    """

    def __init__(self, real: Callable[[str], os.statvfs_result]) -> None:
        self._real = real
        self._paths: set[str] = set()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self.calls: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        #: Seconds every call takes, so overlapping calls would be seen overlapping.
        self.delay = 0.0

    def block(self, path: str) -> None:
        self._paths.add(path)

    def release(self) -> None:
        self._released.set()

    def __call__(self, path: str) -> os.statvfs_result:
        with self._lock:
            self.calls.append(path)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if path in self._paths:
                # Bounded so a broken test cannot leave a thread behind for ever.
                self._released.wait(timeout=60)
            elif self.delay:
                threading.Event().wait(self.delay)
            return self._real(path)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture
def hung_statvfs(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungStatvfs]:
    hung = HungStatvfs(local_dir._statvfs)
    monkeypatch.setattr(local_dir, "_statvfs", hung)
    try:
        yield hung
    finally:
        hung.release()


# -- a real loop-mounted ext4 filesystem -------------------------------------------


def _sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=check, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )


def _is_mount_point(path: Path) -> bool:
    return any(m.mount_point == str(path) for m in local_dir.read_mounts())


@dataclass
class LoopExt4:
    """A loop-mounted ext4 image; methods inject real faults."""

    image: Path
    device: str
    mount_point: Path

    def mount(self) -> None:
        _sh("mount", self.device, str(self.mount_point))

    def umount(self) -> None:
        _sh("umount", str(self.mount_point))

    def remount(self, *, read_only: bool) -> None:
        _sh("mount", "-o", "remount,ro" if read_only else "remount,rw", str(self.mount_point))

    def fill(self, directory: Path) -> None:
        """Fill the filesystem completely (dd stops with ENOSPC)."""
        # Big blocks first, then ever smaller ones for the tail (the image may
        # use 1 KiB blocks); dd exits non-zero with ENOSPC each time.
        for block_size in ("1M", "4k", "1k"):
            target = directory / f"fill-{block_size}"
            _sh("dd", "if=/dev/zero", f"of={target}", f"bs={block_size}", "conv=fsync", check=False)
        vfs = os.statvfs(directory)
        assert vfs.f_bavail == 0, "fixture failed to fill the filesystem"

    def shut_down(self) -> None:
        """Make every later write fail with EIO (ext4 shutdown ioctl, as xfs_io -x -c shutdown)."""
        fd = os.open(self.mount_point, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)

    def repair(self) -> None:
        """Unmount, fsck and mount again (recovery after shut_down)."""
        self.umount()
        _sh("e2fsck", "-fy", self.device, check=False)  # exit 1 = errors corrected
        self.mount()


def _loop_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to attach loop devices and mount"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control: loop devices unavailable"
    for tool in ("losetup", "mkfs.ext4", "mount", "umount", "e2fsck", "dd", "truncate"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    return None


@pytest.fixture
def loop_ext4(tmp_path: Path) -> Iterator[LoopExt4]:
    reason = _loop_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    image = tmp_path / "pool.img"
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    _sh("truncate", "-s", "64M", str(image))
    _sh("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    attached = _sh("losetup", "-f", "--show", str(image), check=False)
    if attached.returncode != 0:
        pytest.skip(f"no free loop device: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    fs = LoopExt4(image=image, device=device, mount_point=mount_point)
    try:
        fs.mount()
        yield fs
    finally:
        # Unmount every layer we may have left (a failed test can leave it mounted
        # once); fall back to a lazy unmount so the loop device can be released.
        for _ in range(3):
            if not _is_mount_point(mount_point):
                break
            if _sh("umount", str(mount_point), check=False).returncode != 0:
                _sh("umount", "-l", str(mount_point), check=False)
        with contextlib.suppress(subprocess.SubprocessError):
            _sh("losetup", "-d", device)
