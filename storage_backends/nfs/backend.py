"""The NFS backend itself: attach (mount), probe, list, detach, bounded and off the loop.

The design, the mount command line and the health rules are in the package
docstring (:mod:`storage_backends.nfs`); what is mounted where is judged in
:mod:`storage_backends.nfs.mounts`.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import posixpath
import re
import socket
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from storage_backends import _exec, _files, _libnfs, base, configs
from storage_backends.nfs import mounts

logger = logging.getLogger(__name__)

KIND: Final = base.BackendKind.NFS.value

#: Protocol versions a pool may ask for; ``""`` (the proto default) means 4.1.
VERSIONS: Final = configs.NFS_VERSIONS
DEFAULT_VERSION: Final = configs.NFS_DEFAULT_VERSION

#: File extensions counted as volumes (compared lower-case).
VOLUME_EXTENSIONS: Final = _files.VOLUME_EXTENSIONS

#: Standard ports, for messages when the backend has no explicit one.
NFS_PORT: Final = 2049
PORTMAPPER_PORT: Final = 111


#: At most this many stacked mounts of ours are removed by one detach.
MAX_STACKED_MOUNTS: Final = 8

#: Part of the probe budget kept back from libnfs, so that its own timeout
#: (which names the server) fires before the caller's (which cannot).
_SERVER_MARGIN_FRACTION: Final = 0.1
_SERVER_MARGIN_MAX: Final = 0.2
#: Longest TCP connect used to tell a refused connection from other failures.
_CONNECT_CHECK_TIMEOUT: Final = 0.5

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


def _statvfs(path: str) -> os.statvfs_result:
    """``os.statvfs``; a separate function so tests can inject a failing mount."""
    return os.statvfs(path)


#: A validated ``nfs`` pool configuration; :meth:`NfsBackend.parse` fills in the mount point.
NfsConfig = configs.NfsConfig


def libnfs_version(cfg: NfsConfig) -> int:
    """The protocol family libnfs speaks for this pool (3 or 4)."""
    return _libnfs.NFS_V3 if cfg.version == "3" else _libnfs.NFS_V4


class NfsBackend:
    """Pools that are NFS exports mounted on this host.

    Options (all keyword-only):

    ``mount_root``
        where pools without ``nfs.mount_point`` are mounted
        (``<mount_root>/nfs-<pool_id>``); absolute.
    ``mount_command`` / ``umount_command``
        argv prefixes for mounting and unmounting (default ``mount`` /
        ``umount``); see the module docstring for the arguments appended.
    ``nfs_port`` / ``mount_port``
        the server's NFS and (NFSv3 only) MOUNT ports when not the standard
        ones; passed to the probe and as ``port=``/``mountport=`` to mount.
    ``full_threshold``
        free fraction of the server's space below which a pool is DEGRADED.
    ``probe_timeout_floor``
        the least time (s) each libnfs call waits for the server, even when
        the caller's budget is nearly spent. The caller still gets its answer
        on time ("probe timed out"); the worker keeps waiting up to the
        floor, so a slow but healthy server is not reported as silent.
    """

    kind: str = KIND

    def __init__(
        self,
        *,
        mount_root: Path = Path("/var/lib/quantix/mnt"),
        mount_command: Sequence[str] = ("mount",),
        umount_command: Sequence[str] = ("umount",),
        nfs_port: int | None = None,
        mount_port: int | None = None,
        full_threshold: float = 0.05,
        probe_timeout_floor: float = 0.5,
    ) -> None:
        if not mount_root.is_absolute():
            raise base.InvalidConfig(f"nfs mount_root must be absolute, got {mount_root}")
        for name, command in (("mount_command", mount_command), ("umount_command", umount_command)):
            if isinstance(command, str) or not command or not all(command):
                raise base.InvalidConfig(
                    f"nfs {name} must be a non-empty sequence of arguments, got {command!r}"
                )
        for name, port in (("nfs_port", nfs_port), ("mount_port", mount_port)):
            if port is not None and (isinstance(port, bool) or not 0 < port < 65536):
                raise base.InvalidConfig(f"nfs {name} must be in 1..65535, got {port!r}")
        if not 0.0 <= full_threshold < 1.0:
            raise base.InvalidConfig(f"nfs full_threshold must be in [0, 1), got {full_threshold}")
        if not probe_timeout_floor > 0.0:
            raise base.InvalidConfig(
                f"nfs probe_timeout_floor must be positive, got {probe_timeout_floor}"
            )
        self._mount_root = Path(posixpath.normpath(mount_root))
        self._mount_command = tuple(mount_command)
        self._umount_command = tuple(umount_command)
        self._nfs_port = nfs_port
        self._mount_port = mount_port
        self._full_threshold = full_threshold
        self._probe_timeout_floor = probe_timeout_floor
        #: What attach found mounted, per pool id; cleared by detach.
        self._attached: dict[str, mounts.Attached] = {}
        #: Workers that touch the mount or the server (probe, list): may get stuck.
        self._workers = _exec.ThreadRunner(name=f"quantix-{KIND}")
        #: Workers that only read mountinfo or create directories: never stuck.
        self._admin = _exec.ThreadRunner(name=f"quantix-{KIND}-admin")

    # -- configuration -----------------------------------------------------

    def validate(self, spec: base.PoolSpec) -> None:
        """Raise :class:`~storage_backends.base.InvalidConfig` naming the bad field."""
        self.parse(spec)

    def parse(self, spec: base.PoolSpec) -> NfsConfig:
        """``spec.config`` validated, with defaults filled in; raises InvalidConfig.

        The config rules are :func:`storage_backends.configs.parse_nfs`, the ones the
        controller applies; only the default mount point depends on this node."""
        cfg = base.parse_config(configs.parse_nfs, spec.config)
        if cfg.mount_point:
            return cfg
        pool_id = spec.pool_id
        if not pool_id or "/" in pool_id or pool_id in {".", ".."} or _CONTROL.search(pool_id):
            raise base.InvalidConfig(
                f"nfs.mount_point is empty and pool id {pool_id!r} cannot name a "
                "directory under the mount root"
            )
        return dataclasses.replace(cfg, mount_point=str(self._mount_root / f"nfs-{pool_id}"))

    def mount_argv(self, spec: base.PoolSpec) -> list[str]:
        """The exact command :meth:`attach` runs to mount ``spec`` (validated)."""
        cfg = self.parse(spec)
        options = [f"vers={cfg.version}"]
        if self._nfs_port is not None:
            options.append(f"port={self._nfs_port}")
        if self._mount_port is not None and cfg.version == "3":
            options.append(f"mountport={self._mount_port}")
        options.extend(cfg.options)
        return [
            *self._mount_command,
            "-t",
            "nfs",
            "-o",
            ",".join(options),
            cfg.source,
            cfg.mount_point,
        ]

    def umount_argv(self, spec: base.PoolSpec) -> list[str]:
        """The exact command :meth:`detach` runs to unmount ``spec`` (validated)."""
        return [*self._umount_command, self.parse(spec).mount_point]

    # -- StorageBackend ----------------------------------------------------

    async def attach(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        """Mount the export unless it already is (idempotent), then probe.

        Raises InvalidConfig; MountError when the mount point holds another
        mount, cannot be created (or is missing with ``create_path`` false), or
        the mount command fails (with its
        stderr); BackendTimeout when mounting does not finish in time;
        BackendUnavailable when the mount command does not exist. A probe that
        finds trouble afterwards is reported in the returned PoolInfo.
        """
        cfg = self.parse(spec)
        deadline = time.monotonic() + timeout
        record = self._record(spec.pool_id, cfg)
        with base.map_exceptions(f"prepare mount point {cfg.mount_point}", base.MountError):
            found = await self._admin.run(
                functools.partial(self._prepare_mount_point, cfg=cfg, record=record),
                key=cfg.mount_point,
                timeout=_left(deadline),
                what=f"prepare mount point {cfg.mount_point}",
            )
        if found is None:
            await self._run_mount(spec, cfg=cfg, deadline=deadline)
            found = await self._top_mount(cfg, deadline=deadline)
            if found is None:
                raise base.MountError(
                    f"{self._mount_command[0]} reported success but nothing is mounted "
                    f"at {cfg.mount_point}"
                )
            logger.info(
                "mounted nfs pool %s: %s at %s (%s from %s)",
                spec.pool_id,
                cfg.source,
                cfg.mount_point,
                found.fstype,
                found.source,
            )
        self._attached[spec.pool_id] = mounts.Attached(
            mount_point=cfg.mount_point, identity=found.identity
        )
        return await self.probe(spec, timeout=_left(deadline))

    async def detach(self, spec: base.PoolSpec, *, timeout: float) -> None:
        """Unmount the export if it is mounted (idempotent); the directory stays.

        Only mounts that are ours (recorded at attach, or the export's own
        source) are unmounted; another mount at the mount point is left alone
        with a warning. Raises MountError when the unmount command fails (for
        example "target is busy") and BackendTimeout when it does not finish.
        """
        cfg = self.parse(spec)
        deadline = time.monotonic() + timeout
        record = self._record(spec.pool_id, cfg)
        for _ in range(MAX_STACKED_MOUNTS):
            top = await self._top_mount(cfg, deadline=deadline)
            if top is None:
                break
            if not mounts.is_ours(top, cfg=cfg, record=record):
                logger.warning(
                    "detach nfs pool %s: leaving %s (%s) mounted at %s: not %s",
                    spec.pool_id,
                    top.source,
                    top.fstype,
                    cfg.mount_point,
                    cfg.source,
                )
                break
            argv = self.umount_argv(spec)
            try:
                rc, out, err = await _exec.run(argv, timeout=_left(deadline))
            except base.BackendTimeout as exc:
                raise base.BackendTimeout(
                    f"unmounting {cfg.mount_point} timed out after {timeout:g}s"
                ) from exc
            if rc != 0:
                raise base.MountError(
                    f"unmounting {cfg.source} from {cfg.mount_point} failed "
                    f"(exit {rc}): {_output(out, err)}"
                )
            logger.info("unmounted nfs pool %s from %s", spec.pool_id, cfg.mount_point)
        self._attached.pop(spec.pool_id, None)

    async def probe(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        """Measure the pool; never raises for an unhealthy pool (only InvalidConfig)."""
        cfg = self.parse(spec)
        deadline = time.monotonic() + timeout
        measure = functools.partial(
            self._measure,
            spec=spec,
            cfg=cfg,
            record=self._record(spec.pool_id, cfg),
            server_deadline=deadline - min(_SERVER_MARGIN_MAX, timeout * _SERVER_MARGIN_FRACTION),
        )
        try:
            return await self._workers.run(
                measure, key=cfg.mount_point, timeout=timeout, what=f"probe {cfg.mount_point}"
            )
        except _exec.WorkerBusy:
            message = f"probe timed out after {timeout:g}s; previous probe still running"
        except base.BackendTimeout:
            message = f"probe timed out after {timeout:g}s"
        except (base.BackendError, OSError) as exc:  # not expected: _measure maps its errors
            message = f"probe of {cfg.mount_point} failed: {exc}"
        return self._info(spec=spec, cfg=cfg, health=base.PoolHealth.ERROR, error_message=message)

    async def list_volumes(self, spec: base.PoolSpec, *, timeout: float) -> list[base.VolumeInfo]:
        """Volume files (``.qcow2 .raw .img .iso``) in the mount point, sorted by name.

        Like a probe, asks the server before reading the mount. Raises
        BackendUnavailable when the export is not mounted (listing the empty
        directory underneath would report a wrong, empty pool) or the server
        refuses, BackendTimeout when the server or the listing does not
        answer in time, ProbeError for other failures.
        """
        cfg = self.parse(spec)
        deadline = time.monotonic() + timeout
        record = self._record(spec.pool_id, cfg)
        server_deadline = deadline - min(_SERVER_MARGIN_MAX, timeout * _SERVER_MARGIN_FRACTION)

        def work(abandoned: threading.Event) -> list[base.VolumeInfo]:
            problem = mounts.mount_problem(cfg=cfg, record=record, mounts=mounts.read_mounts())
            if problem is not None:
                raise base.BackendUnavailable(problem)
            self._ask_server(cfg, deadline=server_deadline)
            return [
                base.VolumeInfo(name=entry.name, size_bytes=size, path=entry.path)
                for entry, size in _files.volume_entries(cfg.mount_point, abandoned=abandoned)
            ]

        with base.map_exceptions(f"list volumes of {cfg.mount_point}"):
            volumes = await self._workers.run(
                work,
                key=cfg.mount_point,
                timeout=timeout,
                what=f"list volumes of {cfg.mount_point}",
            )
        return sorted(volumes, key=lambda v: v.name)

    # -- attach/detach helpers ---------------------------------------------

    def _record(self, pool_id: str, cfg: NfsConfig) -> mounts.Attached | None:
        """What attach recorded for ``pool_id``, if it was for this mount point."""
        record = self._attached.get(pool_id)
        return record if record is not None and record.mount_point == cfg.mount_point else None

    def _prepare_mount_point(
        self, abandoned: threading.Event, *, cfg: NfsConfig, record: mounts.Attached | None
    ) -> mounts.Mount | None:
        """Worker: returns our mount if already there, else creates the directory.

        The mountinfo check comes first: ``mkdir -p`` stats the mount point,
        which blocks if a mount of a hung server is already there.
        """
        del abandoned  # quick, local operations
        top = mounts.top_mount(cfg.mount_point, mounts=mounts.read_mounts())
        if top is not None:
            if mounts.is_ours(top, cfg=cfg, record=record):
                return top
            raise base.MountError(
                f"mount point {cfg.mount_point} already has {top.source} ({top.fstype}) "
                f"mounted, not {cfg.source}; unmount it or choose another nfs.mount_point"
            )
        if not cfg.create_path and not os.path.lexists(cfg.mount_point):
            # Its parent may be a disk that is not mounted yet: creating the
            # mount point there would put it on the wrong filesystem.
            raise base.MountError(
                f"mount point {cfg.mount_point} does not exist and nfs.create_path is false: "
                "create it (or mount the filesystem that holds it) first"
            )
        os.makedirs(cfg.mount_point, mode=0o755, exist_ok=True)
        if not stat.S_ISDIR(os.stat(cfg.mount_point).st_mode):
            raise base.MountError(f"mount point {cfg.mount_point} is not a directory")
        return None

    async def _run_mount(self, spec: base.PoolSpec, *, cfg: NfsConfig, deadline: float) -> None:
        """Run the mount command; raises MountError with its output on failure."""
        argv = self.mount_argv(spec)
        budget = _left(deadline)
        try:
            rc, out, err = await _exec.run(argv, timeout=budget)
        except base.BackendTimeout as exc:
            raise base.BackendTimeout(
                f"mounting {cfg.source} at {cfg.mount_point} timed out after {budget:.1f}s"
            ) from exc
        if rc != 0:
            raise base.MountError(
                f"mounting {cfg.source} at {cfg.mount_point} failed (exit {rc}): "
                f"{_output(out, err)}"
            )

    async def _top_mount(self, cfg: NfsConfig, *, deadline: float) -> mounts.Mount | None:
        """The topmost mount at the pool's mount point (read off the event loop)."""
        with base.map_exceptions(f"read {mounts.MOUNTINFO}", base.MountError):
            return await self._admin.run(
                lambda _: mounts.top_mount(cfg.mount_point, mounts=mounts.read_mounts()),
                key=cfg.mount_point,
                timeout=_left(deadline),
                what=f"read {mounts.MOUNTINFO}",
            )

    # -- measuring (runs in the worker thread) -----------------------------

    def _measure(
        self,
        abandoned: threading.Event,
        *,
        spec: base.PoolSpec,
        cfg: NfsConfig,
        record: mounts.Attached | None,
        server_deadline: float,
    ) -> base.PoolInfo:
        """Apply the health rules of the module docstring; returns a PoolInfo."""
        health = base.PoolHealth
        info = functools.partial(self._info, spec=spec, cfg=cfg)

        # Rule 1: is our export mounted there at all? Checked before anything
        # that would otherwise measure the parent filesystem.
        problem = mounts.mount_problem(cfg=cfg, record=record, mounts=mounts.read_mounts())
        if problem is not None:
            return info(health=health.UNMOUNTED, error_message=problem)

        # Rule 2: the server's own view, bounded by libnfs's timeout. A server
        # that does not answer is reported without touching the kernel mount.
        try:
            server = self._ask_server(cfg, deadline=server_deadline)
        except base.BackendError as exc:
            return info(health=health.ERROR, error_message=str(exc))
        measured = functools.partial(
            info,
            total_bytes=server.total_bytes,
            used_bytes=server.used_bytes,
            available_bytes=server.available_bytes,
        )
        if abandoned.is_set():  # the caller has gone: do not touch the mount
            return measured(health=health.ERROR, error_message="probe abandoned")

        # Rule 3: the kernel's view of the mount (stale handles, I/O errors).
        try:
            vfs = _statvfs(cfg.mount_point)
            volume_count = sum(
                1 for _ in _files.volume_entries(cfg.mount_point, abandoned=abandoned)
            )
        except OSError as exc:
            return measured(health=health.ERROR, error_message=_describe_mount_error(cfg, exc))
        measured = functools.partial(measured, volume_count=volume_count)

        # Rules 4-6.
        if vfs.f_flag & os.ST_RDONLY:
            return measured(health=health.DEGRADED, error_message="read-only")
        total = server.total_bytes
        free_fraction = server.available_bytes / total if total > 0 else 1.0
        if total > 0 and free_fraction < self._full_threshold:
            return measured(
                health=health.DEGRADED,
                error_message=f"nearly full: {int(free_fraction * 100)}% free",
            )
        return measured(health=health.HEALTHY)

    def _ask_server(self, cfg: NfsConfig, *, deadline: float) -> _libnfs.ServerStat:
        """The server's FSSTAT for the export. Blocks (worker thread).

        Raises BackendTimeout (the server did not answer), BackendUnavailable
        (refused, unreachable, libnfs missing) or ProbeError (the server
        answered with an error, such as no such export), each with a message
        naming the server.
        """
        try:
            return _libnfs.fsstat(
                server=cfg.server,
                export=cfg.export_path,
                version=libnfs_version(cfg),
                nfs_port=self._nfs_port,
                mount_port=self._mount_port,
                deadline=deadline,
                min_timeout=self._probe_timeout_floor,
            )
        except _libnfs.NfsCallError as exc:
            raise self._describe_server_error(cfg, exc, deadline=deadline) from exc

    def _first_port(self, cfg: NfsConfig) -> int:
        """The port libnfs contacts first: NFS for v4, MOUNT or portmapper for v3."""
        if libnfs_version(cfg) == _libnfs.NFS_V4:
            return self._nfs_port or NFS_PORT
        return self._mount_port or PORTMAPPER_PORT

    def _describe_server_error(
        self, cfg: NfsConfig, exc: _libnfs.NfsCallError, *, deadline: float
    ) -> base.BackendError:
        """Turn a libnfs failure into an error an operator can act on.

        Case 1: timed out -> the server is up but silent (hung, overloaded).
        Case 2: the server answered "no such export" or "access denied".
        Case 3: anything else: libnfs says only "nfs_service failed" for a
        refused connection, so a plain TCP connect decides between refused,
        unreachable, and a server that accepted and then failed.
        """
        server, port = cfg.server, self._first_port(cfg)
        if exc.timed_out:
            return base.BackendTimeout(
                f"NFS server {server} did not answer within {round(exc.timeout, 1):g}s"
            )
        if exc.code == -errno.ENOENT:
            return base.ProbeError(
                f"NFS server {server} has no export {cfg.export_path} ({exc.detail})"
            )
        if exc.code in (-errno.EACCES, -errno.EPERM):
            return base.ProbeError(
                f"NFS server {server} denied access to export {cfg.export_path} ({exc.detail})"
            )
        connect_timeout = min(_CONNECT_CHECK_TIMEOUT, max(0.05, _left(deadline)))
        try:
            with socket.create_connection((server, port), timeout=connect_timeout):
                pass
        except ConnectionRefusedError:
            return base.BackendUnavailable(f"NFS server {server}:{port} refused the connection")
        except TimeoutError:
            return base.BackendTimeout(
                f"NFS server {server}:{port} did not accept a connection within "
                f"{round(connect_timeout, 2):g}s"
            )
        except OSError as err:
            return base.BackendUnavailable(
                f"NFS server {server}:{port} is unreachable: {err.strerror or err}"
            )
        return base.ProbeError(
            f"NFS server {server}:{port} failed to serve {cfg.export_path}: {exc.detail}"
        )

    def _info(
        self, *, spec: base.PoolSpec, cfg: NfsConfig, health: base.PoolHealth, **fields: Any
    ) -> base.PoolInfo:
        return base.pool_info(
            spec, kind=self.kind, health=health, mount_path=cfg.mount_point, **fields
        )


# -- helpers ---------------------------------------------------------------------


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (never negative)."""
    return max(0.0, deadline - time.monotonic())


def _output(out: bytes, err: bytes) -> str:
    """A command's stderr (or stdout when stderr is empty), decoded and trimmed."""
    text = (err.strip() or out.strip()).decode(errors="replace")
    return text or "no output"


def _describe_mount_error(cfg: NfsConfig, exc: OSError) -> str:
    """An OS error on the mount point, with the remedy for a stale handle."""
    message = f"reading {cfg.mount_point}: {_files.describe_os_error(exc)}"
    if exc.errno == errno.ESTALE:
        message += (
            f" (the export {cfg.source} was replaced on the server: "
            "detach and attach the pool again)"
        )
    return message
