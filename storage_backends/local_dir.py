"""``local_dir``: a pool that is a directory on a filesystem this host already mounts.

Attaching a local pool means creating its directory and remembering which
filesystem it lives on; probing means measuring that filesystem. The hard
part is not the measuring but knowing what is being measured:

* **An unmounted filesystem is invisible.** When the filesystem under a pool
  is unmounted, the directory either vanishes or, if the pool *is* the mount
  point, silently becomes an empty directory on the parent filesystem.
  ``statvfs`` then reports the parent's numbers and a probe write succeeds on
  the wrong disk (docs/lab.md, Local directory). So :meth:`LocalDirBackend.attach` records
  the filesystem identity (``st_dev`` plus the mount point from
  ``/proc/self/mountinfo``) and every probe checks that identity *before* it
  trusts ``statvfs`` or writes anything.
* **Health is measured.** Besides ``statvfs`` (read-only flag, free space) a
  small write probe (write, fsync, unlink ``.quantix-probe``) catches what
  ``statvfs`` cannot see: ext4 after an I/O error still answers ``statvfs``
  but fails writes with ``EIO``; a full XFS fails small writes with
  ``ENOSPC``.
* **Probes must not hang the node.** All blocking work runs in a worker thread
  through :class:`storage_backends._exec.ThreadRunner` under the caller's
  timeout, one worker per pool path: a probe of a pool whose previous worker
  is still stuck in the kernel reports ``ERROR`` at once instead of stacking
  up threads.

* **A disk that is not mounted yet must not be written to.** A pool may say
  where its filesystem must be mounted (``require_mountpoint``: the path itself;
  ``mount_point``: the path or a parent, Proxmox's ``is_mountpoint``) and that
  its path must already exist (``create_path`` false, Proxmox's ``mkdir 0``).
  While that does not hold, attach creates nothing and reports ``UNMOUNTED``,
  and every later probe tries the attach again, so the pool comes up once the
  disk is mounted (docs/failure-semantics.md, "Local directory not mounted").

Health rules, first match wins:

0. a required mount point is not mounted -> ``UNMOUNTED`` ("pool path P needs a
   filesystem mounted at M, and none is mounted there");
1. path missing -> ``UNMOUNTED`` ("pool path P does not exist");
2. path on another filesystem than recorded at attach -> ``UNMOUNTED``, naming
   the expected mount point;
3. ``statvfs`` or the write probe fails with an OS error (``EIO`` ...) ->
   ``ERROR`` with the error;
4. read-only (``ST_RDONLY`` or ``EROFS`` on the write probe) -> ``DEGRADED``
   "read-only";
5. available below ``full_threshold`` of total, or ``ENOSPC`` on the write
   probe -> ``DEGRADED`` "nearly full: N% free";
6. otherwise ``HEALTHY``.

With ``capacity_gib`` set the pool is a quota on a shared filesystem: total is
``min(filesystem total, quota)``, used is the space allocated to files under
the pool directory (a bounded walk), available is ``total - used`` capped by
what the filesystem still has.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import posixpath
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from storage_backends import _exec, _files, _mounts, base, configs

logger = logging.getLogger(__name__)

KIND: Final = base.BackendKind.LOCAL_DIR.value

#: File extensions counted as volumes (compared lower-case).
VOLUME_EXTENSIONS: Final = _files.VOLUME_EXTENSIONS

#: Name of the write-probe file created (and removed) in the pool directory.
PROBE_FILE: Final = ".quantix-probe"

_PROBE_PAYLOAD: Final = b"quantix write probe\n" * 25  # 500 bytes: one block
_GIB: Final = 1024**3
_MOUNTINFO: Final = _mounts.MOUNTINFO


def _statvfs(path: str) -> os.statvfs_result:
    """``os.statvfs``; a separate function so tests can inject a hung filesystem."""
    return os.statvfs(path)


@dataclass(frozen=True, slots=True)
class Filesystem:
    """Identity of the filesystem a pool was attached on."""

    st_dev: int
    #: Longest mount point in ``/proc/self/mountinfo`` containing the pool path.
    mount_point: str
    fstype: str = ""
    source: str = ""


@dataclass(frozen=True, slots=True)
class _Pool:
    """One pool's validated config, with this node's default path filled in."""

    path: str
    #: Quota in bytes, 0 for the whole filesystem.
    quota: int
    #: Directories that must be mount points before anything is created or measured.
    mount_points: tuple[str, ...]
    create_path: bool


@dataclass(frozen=True, slots=True)
class _Usage:
    total: int
    used: int
    available: int
    #: Set when the quota walk stopped early, so ``used`` is a lower bound.
    walk_truncated: bool = False


class LocalDirBackend:
    """Pools that are directories on already-mounted local filesystems.

    ``pools_root`` is where pools without an explicit ``path`` live
    (``<pools_root>/<pool_id>``). ``full_threshold`` is the free fraction
    below which a pool is DEGRADED. ``write_probe`` enables the
    write/fsync/unlink check. ``max_walk_entries`` bounds the directory walk
    that measures quota usage.
    """

    kind: str = KIND

    def __init__(
        self,
        *,
        pools_root: Path,
        full_threshold: float = 0.05,
        write_probe: bool = True,
        max_walk_entries: int = 100_000,
    ) -> None:
        if not pools_root.is_absolute():
            raise base.InvalidConfig(f"local_dir pools_root must be absolute, got {pools_root}")
        if not 0.0 <= full_threshold < 1.0:
            raise base.InvalidConfig(
                f"local_dir full_threshold must be in [0, 1), got {full_threshold}"
            )
        if max_walk_entries < 1:
            raise base.InvalidConfig(
                f"local_dir max_walk_entries must be positive, got {max_walk_entries}"
            )
        self._pools_root = Path(posixpath.normpath(pools_root))
        self._full_threshold = full_threshold
        self._write_probe = write_probe
        self._max_walk_entries = max_walk_entries
        #: Filesystem recorded at attach, per pool id; cleared by detach.
        self._filesystems: dict[str, Filesystem] = {}
        #: Pools whose attach found their mount point or path missing: each probe
        #: tries the attach again. Cleared by a successful attach and by detach.
        self._deferred: set[str] = set()
        self._workers = _exec.ThreadRunner(name=f"quantix-{KIND}")

    # -- configuration -----------------------------------------------------

    def validate(self, spec: base.PoolSpec) -> None:
        """Raise :class:`~storage_backends.base.InvalidConfig` naming the bad field."""
        self._parse(spec)

    def pool_path(self, spec: base.PoolSpec) -> str:
        """The directory of ``spec``'s pool (validated)."""
        return self._parse(spec).path

    def _parse(self, spec: base.PoolSpec) -> _Pool:
        """The pool's path, quota and mount rules; raises InvalidConfig.

        The config rules are :func:`storage_backends.configs.parse_local_dir`, the ones the
        controller applies; only the default path depends on this node."""
        config = base.parse_config(configs.parse_local_dir, spec.config)
        if config.path:
            path = config.path
        else:
            if not spec.pool_id or "/" in spec.pool_id or spec.pool_id in {".", ".."}:
                raise base.InvalidConfig(
                    f"local_dir.path is empty and pool id {spec.pool_id!r} "
                    "cannot name a directory under the pools root"
                )
            path = str(self._pools_root / spec.pool_id)
        mount_points = [config.mount_point] if config.mount_point else []
        if config.require_mountpoint and path not in mount_points:
            mount_points.append(path)
        return _Pool(
            path=path,
            quota=config.capacity_gib * _GIB,
            mount_points=tuple(mount_points),
            create_path=config.create_path,
        )

    # -- StorageBackend ----------------------------------------------------

    async def attach(
        self,
        spec: base.PoolSpec,
        *,
        timeout: float,
    ) -> base.PoolInfo:
        """Create the pool directory, record its filesystem, then probe.

        When a required mount point is not mounted, or the path is missing and
        ``create_path`` is false, nothing is created: the returned PoolInfo is
        UNMOUNTED saying why, and each probe tries the attach again.

        Re-attaching an attached pool does not adopt a different filesystem:
        if the recorded one has gone (unmounted underneath), the returned
        PoolInfo says UNMOUNTED. Only ``detach`` then ``attach`` adopts the
        filesystem now at the path. Raises InvalidConfig, MountError (cannot
        create the directory) or BackendTimeout (timed out before the
        directory existed); a probe that times out afterwards is reported in
        the returned PoolInfo.
        """
        pool = self._parse(spec)
        path = pool.path
        deadline = time.monotonic() + timeout
        if spec.pool_id not in self._filesystems:
            with base.map_exceptions(
                f"attach local_dir pool {spec.pool_id} at {path}", base.MountError
            ):
                fs = await self._workers.run(
                    functools.partial(_prepare_directory, pool=pool),
                    key=path,
                    timeout=timeout,
                    what=f"attach {path}",
                )
            if isinstance(fs, str):
                if spec.pool_id not in self._deferred:
                    logger.warning("local_dir pool %s not attached: %s", spec.pool_id, fs)
                self._deferred.add(spec.pool_id)
                return self._info(
                    spec=spec, path=path, health=base.PoolHealth.UNMOUNTED, error_message=fs
                )
            self._deferred.discard(spec.pool_id)
            self._filesystems[spec.pool_id] = fs
            logger.info(
                "attached local_dir pool %s at %s (filesystem %s on %s, dev %d:%d)",
                spec.pool_id,
                path,
                fs.fstype or "?",
                fs.mount_point,
                os.major(fs.st_dev),
                os.minor(fs.st_dev),
            )
        return await self.probe(spec, timeout=max(0.0, deadline - time.monotonic()))

    async def detach(
        self,
        spec: base.PoolSpec,
        *,
        timeout: float,
    ) -> None:
        """Forget the recorded filesystem. The directory and its data stay."""
        del timeout  # nothing to wait for: no I/O
        self._deferred.discard(spec.pool_id)
        if self._filesystems.pop(spec.pool_id, None) is not None:
            logger.info("detached local_dir pool %s", spec.pool_id)

    async def probe(
        self,
        spec: base.PoolSpec,
        *,
        timeout: float,
    ) -> base.PoolInfo:
        """Measure the pool; never raises for an unhealthy pool (only InvalidConfig).

        A pool whose attach was deferred (its disk not mounted) is attached now
        if it can be.
        """
        pool = self._parse(spec)
        path = pool.path
        if spec.pool_id in self._deferred:
            try:
                return await self.attach(spec, timeout=timeout)
            except base.BackendError as exc:
                return self._info(
                    spec=spec, path=path, health=base.PoolHealth.ERROR, error_message=str(exc)
                )
        measure = functools.partial(
            self._measure,
            spec=spec,
            pool=pool,
            expected=self._filesystems.get(spec.pool_id),
        )
        try:
            return await self._workers.run(measure, key=path, timeout=timeout, what=f"probe {path}")
        except _exec.WorkerBusy:
            message = f"probe timed out; previous probe of {path} still running"
        except base.BackendTimeout:
            message = f"probe timed out after {timeout:g}s"
        except OSError as exc:  # not expected: _measure maps OS errors itself
            message = f"probe of {path} failed: {exc}"
        return self._info(spec=spec, path=path, health=base.PoolHealth.ERROR, error_message=message)

    async def list_volumes(
        self,
        spec: base.PoolSpec,
        *,
        timeout: float,
    ) -> list[base.VolumeInfo]:
        """Volume files (``.qcow2 .raw .img .iso``) in the pool directory, sorted by name.

        Raises BackendUnavailable if the pool path is missing or its filesystem
        is not the one recorded at attach (listing the parent filesystem would
        report a wrong, empty pool), BackendTimeout, or ProbeError.
        """
        pool = self._parse(spec)
        path = pool.path
        expected = self._filesystems.get(spec.pool_id)

        def work(abandoned: threading.Event) -> list[base.VolumeInfo]:
            unmounted = _mount_point_problem(pool)
            if unmounted is not None:
                raise base.BackendUnavailable(unmounted)
            st = os.stat(path)
            problem = _filesystem_problem(path=path, st=st, expected=expected)
            if problem is not None:
                raise base.BackendUnavailable(problem)
            return [
                base.VolumeInfo(name=entry.name, size_bytes=size, path=entry.path)
                for entry, size in _files.volume_entries(path, abandoned=abandoned)
            ]

        with base.map_exceptions(f"list volumes of {path}"):
            volumes = await self._workers.run(
                work, key=path, timeout=timeout, what=f"list volumes of {path}"
            )
        return sorted(volumes, key=lambda v: v.name)

    # -- measuring (runs in the worker thread) -----------------------------

    def _measure(
        self,
        abandoned: threading.Event,
        *,
        spec: base.PoolSpec,
        pool: _Pool,
        expected: Filesystem | None,
    ) -> base.PoolInfo:
        """Apply the health rules of the module docstring; returns a PoolInfo."""
        health = base.PoolHealth
        path, quota = pool.path, pool.quota
        info = functools.partial(self._info, spec=spec, path=path)

        # Rule 0: a required mount point that is not mounted; nothing is read or
        # written, as the path would resolve on the parent filesystem.
        unmounted = _mount_point_problem(pool)
        if unmounted is not None:
            return info(health=health.UNMOUNTED, error_message=unmounted)

        # Rules 1 and 2: is the pool's filesystem there at all? Checked before
        # statvfs or any write, which would otherwise hit the parent filesystem.
        try:
            st = os.stat(path)
        except FileNotFoundError:
            message = f"pool path {path} does not exist"
            if expected is not None and not _is_mounted(expected):
                message += f" (filesystem expected at {expected.mount_point} is not mounted)"
            return info(health=health.UNMOUNTED, error_message=message)
        except OSError as exc:
            return info(
                health=health.ERROR, error_message=f"stat {path}: {_files.describe_os_error(exc)}"
            )
        if not stat.S_ISDIR(st.st_mode):
            return info(health=health.ERROR, error_message=f"pool path {path} is not a directory")
        problem = _filesystem_problem(path=path, st=st, expected=expected)
        if problem is not None:
            return info(health=health.UNMOUNTED, error_message=problem)

        # Rule 3 (statvfs part): an I/O error on the filesystem itself.
        try:
            vfs = _statvfs(path)
        except OSError as exc:
            return info(
                health=health.ERROR,
                error_message=f"statvfs {path}: {_files.describe_os_error(exc)}",
            )
        try:
            usage = self._usage(vfs, path=path, quota=quota, abandoned=abandoned)
            volume_count = sum(1 for _ in _files.volume_entries(path, abandoned=abandoned))
        except OSError as exc:
            return info(
                health=health.ERROR,
                error_message=f"reading {path}: {_files.describe_os_error(exc)}",
            )
        measured = functools.partial(
            info,
            total_bytes=usage.total,
            used_bytes=usage.used,
            available_bytes=usage.available,
            volume_count=volume_count,
        )

        # Rules 3-5 (write probe part): skipped on a read-only filesystem, where
        # it can only fail, and once the caller has given up on this probe.
        read_only = bool(vfs.f_flag & os.ST_RDONLY)
        out_of_space = False
        if self._write_probe and not read_only and not abandoned.is_set():
            try:
                _write_probe_file(os.path.join(path, PROBE_FILE))
            except OSError as exc:
                if exc.errno == errno.EROFS:
                    read_only = True
                elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    out_of_space = True
                else:
                    return measured(
                        health=health.ERROR,
                        error_message=f"write probe in {path}: {_files.describe_os_error(exc)}",
                    )

        if read_only:
            return measured(health=health.DEGRADED, error_message="read-only")
        free_fraction = usage.available / usage.total if usage.total > 0 else 1.0
        if out_of_space or (usage.total > 0 and free_fraction < self._full_threshold):
            return measured(
                health=health.DEGRADED,
                error_message=f"nearly full: {int(free_fraction * 100)}% free",
            )
        if usage.walk_truncated:
            return measured(
                health=health.DEGRADED,
                error_message=(
                    f"quota usage is a lower bound: more than {self._max_walk_entries} "
                    f"entries under {path}"
                ),
            )
        return measured(health=health.HEALTHY)

    def _usage(
        self, vfs: os.statvfs_result, *, path: str, quota: int, abandoned: threading.Event
    ) -> _Usage:
        """Capacity of the whole filesystem, or of the quota when one is set."""
        fs_total = vfs.f_blocks * vfs.f_frsize
        fs_available = vfs.f_bavail * vfs.f_frsize
        if quota == 0:
            fs_used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
            return _Usage(total=fs_total, used=fs_used, available=fs_available)
        used, truncated = _allocated_bytes(
            path, max_entries=self._max_walk_entries, abandoned=abandoned
        )
        total = min(fs_total, quota)
        available = min(max(0, total - used), fs_available)
        return _Usage(total=total, used=used, available=available, walk_truncated=truncated)

    def _info(
        self, *, spec: base.PoolSpec, path: str, health: base.PoolHealth, **fields: Any
    ) -> base.PoolInfo:
        return base.pool_info(spec, kind=self.kind, health=health, mount_path=path, **fields)


# -- blocking helpers (worker thread) ------------------------------------------


def _prepare_directory(abandoned: threading.Event, *, pool: _Pool) -> Filesystem | str:
    """``mkdir -p`` the pool directory (mode 0o750); returns its filesystem.

    Returns why not instead, creating nothing, when a required mount point is
    not mounted or the path is missing and ``create_path`` is false.
    """
    del abandoned  # a few quick syscalls; nothing to stop early
    path = pool.path
    unmounted = _mount_point_problem(pool)
    if unmounted is not None:
        return unmounted
    if not pool.create_path and not os.path.lexists(path):
        return (
            f"pool path {path} does not exist and local_dir.create_path is false: "
            "it is not created (mount the filesystem that holds it, or create it)"
        )
    os.makedirs(path, mode=0o750, exist_ok=True)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise base.MountError(f"pool path {path} is not a directory")
    return identify_filesystem(path, st_dev=st.st_dev)


def _mount_point_problem(pool: _Pool) -> str | None:
    """Why the pool's required mount points are not all mounted, or None.

    A directory counts as a mount point when ``/proc/self/mountinfo`` lists its
    real path (``os.path.ismount`` when there is no mountinfo).
    """
    if not pool.mount_points:
        return None
    mounts = read_mounts()
    mounted = {m.mount_point for m in mounts}
    for mount_point in pool.mount_points:
        real = os.path.realpath(mount_point)
        is_mount = real in mounted if mounts else os.path.ismount(real)
        if not is_mount:
            return (
                f"pool path {pool.path} needs a filesystem mounted at {mount_point}, "
                "and none is mounted there"
            )
    return None


def identify_filesystem(path: str, *, st_dev: int) -> Filesystem:
    """The filesystem ``path`` is on: ``st_dev`` plus its mountinfo entry."""
    mount = find_mount(path, mounts=read_mounts())
    if mount is None:  # no /proc: fall back to the device number alone
        return Filesystem(st_dev=st_dev, mount_point="/")
    return Filesystem(
        st_dev=st_dev, mount_point=mount.mount_point, fstype=mount.fstype, source=mount.source
    )


def _filesystem_problem(
    *, path: str, st: os.stat_result, expected: Filesystem | None
) -> str | None:
    """Why ``path`` (with stat ``st``) is not on the ``expected`` filesystem, or None.

    Case 1: not attached (nothing recorded) -> no check.
    Case 2: device number differs -> the recorded filesystem was unmounted (or
    replaced) and the path now resolves on another one.
    Case 3: same device but a different enclosing mount point -> the recorded
    mount is gone and the path shows another mount of the same device.
    """
    if expected is None:
        return None
    current = find_mount(path, mounts=read_mounts())
    current_mount = current.mount_point if current is not None else expected.mount_point
    if st.st_dev != expected.st_dev or current_mount != expected.mount_point:
        return (
            f"filesystem expected at {expected.mount_point} is not mounted: "
            f"pool path {path} is now on {current_mount}"
        )
    return None


def _is_mounted(fs: Filesystem) -> bool:
    """Whether ``fs``'s mount point is still a mount point of the same device."""
    try:
        return os.stat(fs.mount_point).st_dev == fs.st_dev and any(
            m.mount_point == fs.mount_point for m in read_mounts()
        )
    except OSError:
        return False


def _write_probe_file(probe_path: str) -> None:
    """Write, fsync and unlink a small file; raises the OSError of the first failure."""
    fd = os.open(probe_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, _PROBE_PAYLOAD)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        # Best effort: on a failing filesystem the unlink may fail too, and the
        # first error is the one worth reporting.
        with contextlib.suppress(OSError):
            os.unlink(probe_path)


def _allocated_bytes(
    path: str, *, max_entries: int, abandoned: threading.Event
) -> tuple[int, bool]:
    """Bytes allocated to files under ``path`` (not following symlinks or mounts).

    Returns ``(bytes, truncated)``; ``truncated`` is True when the walk stopped
    after ``max_entries`` entries or because the caller gave up. Allocated
    blocks rather than apparent size: a sparse qcow2 uses what it uses.
    """
    root_dev = os.stat(path).st_dev
    total = 0
    seen = 0
    stack = [path]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    seen += 1
                    if seen > max_entries or abandoned.is_set():
                        return total, True
                    if entry.name == PROBE_FILE and directory == path:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed while walking
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        if st.st_dev == root_dev:
                            stack.append(entry.path)
                    elif stat.S_ISREG(st.st_mode):
                        total += st.st_blocks * 512
        except FileNotFoundError:  # removed while walking
            continue
    return total, False


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``/proc/self/mountinfo`` (the fields we use)."""

    mount_point: str
    major_minor: str
    fstype: str
    source: str


def read_mounts(mountinfo: str = _MOUNTINFO) -> list[Mount]:
    """Parse ``mountinfo``; returns mounts in file order (later lines mount on top)."""
    return parse_mountinfo(_mounts.read_text(mountinfo))


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse the text of a mountinfo file (see proc(5)); malformed lines are skipped."""
    return [
        Mount(
            mount_point=e.mount_point, major_minor=e.major_minor, fstype=e.fstype, source=e.source
        )
        for e in _mounts.parse(text)
    ]


def find_mount(path: str, *, mounts: list[Mount]) -> Mount | None:
    """The mount containing ``path``: the longest mount point that is a prefix
    of its real path; among equal mount points the last (topmost) one."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for mount in mounts:
        mp = mount.mount_point
        contains = real == mp or mp == "/" or real.startswith(mp + "/")
        if contains and (best is None or len(mp) >= len(best.mount_point)):
            best = mount
    return best
