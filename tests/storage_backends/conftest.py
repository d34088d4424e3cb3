"""Fixtures for the storage backend tests.

* ``harness``: one :class:`Harness` per backend kind (fake, local_dir on
  ``tmp_path``), so the contract suite runs unchanged over every backend. A
  harness knows how to make a valid and an invalid spec, how to put a volume
  into a pool and how to make the pool's probe hang.
* ``hung_statvfs``: fault injection for local_dir: replaces the module's
  ``_statvfs`` with one that blocks on a :class:`threading.Event`, the way a
  dead NFS server blocks ``statvfs``; always released at teardown.
* ``loop_ext4``: a real 64 MiB ext4 image, loop-attached and mounted under
  ``tmp_path``; skipped with a reason when not root or without loop devices.
  Teardown unmounts it and detaches only the loop device it created (never
  ``losetup -D``: other processes on the machine use loop devices too).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from storage_backends import base, fake, local_dir

#: Seconds any helper command in fixtures may take.
COMMAND_TIMEOUT = 30.0
#: EXT4_IOC_SHUTDOWN (= FS_IOC_SHUTDOWN, _IOR('X', 125, __u32)) and its NOLOGFLUSH flag.
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


# -- contract harnesses ---------------------------------------------------------


class Harness(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def backend(self) -> base.StorageBackend: ...

    def spec(self, pool_id: str) -> base.PoolSpec: ...

    def invalid_spec(self, pool_id: str) -> base.PoolSpec: ...

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> None: ...

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        """Make probes of ``spec`` hang; returns the function that releases them."""
        ...


@dataclass
class FakeHarness:
    backend: fake.FakeBackend = field(default_factory=fake.FakeBackend)
    kind: str = "fake"

    def spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(pool_id=pool_id, kind=self.kind)

    def invalid_spec(self, pool_id: str) -> base.PoolSpec:
        self.backend.script(pool_id, invalid="fake.widget must be set")
        return base.PoolSpec(pool_id=pool_id, kind=self.kind)

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> None:
        self.backend.pool(spec.pool_id).volumes[name] = size

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        return self.backend.hang_probe(spec.pool_id).set


@dataclass
class LocalDirHarness:
    backend: local_dir.LocalDirBackend
    hung: HungStatvfs
    kind: str = "local_dir"

    def spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(pool_id=pool_id, kind=self.kind)

    def invalid_spec(self, pool_id: str) -> base.PoolSpec:
        return base.PoolSpec(pool_id=pool_id, kind=self.kind, config={"path": "relative/dir"})

    def add_volume(self, *, spec: base.PoolSpec, name: str, size: int) -> None:
        path = Path(self.backend.pool_path(spec)) / name
        with path.open("wb") as f:
            f.write(b"\0" * size)

    def hang_probe(self, spec: base.PoolSpec) -> Callable[[], None]:
        self.hung.block(self.backend.pool_path(spec))
        return self.hung.release


@pytest.fixture
def pools_root(tmp_path: Path) -> Path:
    root = tmp_path / "pools"
    root.mkdir()
    return root


@pytest.fixture(params=["fake", "local_dir"])
def harness(request: pytest.FixtureRequest, pools_root: Path, hung_statvfs: HungStatvfs) -> Harness:
    if request.param == "fake":
        return FakeHarness()
    return LocalDirHarness(
        backend=local_dir.LocalDirBackend(pools_root=pools_root), hung=hung_statvfs
    )


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
