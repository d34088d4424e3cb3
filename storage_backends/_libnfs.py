"""Ask an NFS server for its own capacity (FSSTAT), in userspace, with a deadline.

Why a userspace client at all: a kernel NFS mount answers ``statvfs`` from
the server, but when the server hangs so does every syscall on the mount
(a ``hard`` mount blocks for ever, in uninterruptible sleep), and the kernel
says nothing about *why*. libnfs talks the protocol itself over its own TCP
connection, obeys a per-call timeout (``nfs_set_timeout``), and tells a dead
server (connection refused) from a silent one (timed out) from a missing
export (``NFS4ERR_NOENT``). The NFS backend therefore asks the server first and
only touches the kernel mount once the server has answered (see
:mod:`storage_backends.nfs`).

Why ctypes over Debian's ``libnfs.so.13`` rather than a PyPI package
(docs/lab.md, NFS): the SWIG ``libnfs`` package has no statvfs, ``nfs-rs`` is
young and cannot list directories against ganesha over v4.1; the C library is
in Debian, stable, and six functions are all we need. The library is loaded
lazily, on the first probe: a host without it can still validate, attach and
detach pools, and its probes say ``libnfs not installed (Debian package
libnfs13)`` instead of the node failing to start.

Every call here blocks (libnfs's synchronous API runs its own poll loop), so
callers run :func:`fsstat` in a worker thread. ctypes releases the GIL for
the duration of each foreign call. One libnfs context is created per call and
destroyed before returning: contexts are not shared between threads, and a
fresh connection per probe is what detects a restarted server (docs/lab.md, NFS:
a held client may never recover).
"""

from __future__ import annotations

import ctypes
import errno
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from storage_backends import base

#: Shared objects tried in order (Debian 12 ships libnfs 4.0 as libnfs.so.13).
LIBRARY_NAMES: Sequence[str] = ("libnfs.so.13",)

#: The operator-facing reason when no candidate loads.
MISSING_MESSAGE: Final = "libnfs not installed (Debian package libnfs13)"

#: libnfs's ``version=`` URL argument for each protocol family.
NFS_V3: Final = 3
NFS_V4: Final = 4


class _Statvfs64(ctypes.Structure):
    """``struct nfs_statvfs_64`` from ``<nfsc/libnfs.h>``."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_fsid",
            "f_flag",
            "f_namemax",
        )
    ]


class _Url(ctypes.Structure):
    """``struct nfs_url``: the parsed server, path and file of an ``nfs://`` URL."""

    _fields_ = [
        ("server", ctypes.c_char_p),
        ("path", ctypes.c_char_p),
        ("file", ctypes.c_char_p),
    ]


@dataclass(frozen=True, slots=True)
class ServerStat:
    """The server's answer to FSSTAT for one export, in bytes."""

    total_bytes: int
    #: Free blocks, including any the server reserves (``f_bfree``).
    free_bytes: int
    #: What a client may still write (``f_bavail``).
    available_bytes: int
    #: The block size libnfs rounds to (``f_frsize``).
    block_size: int

    @property
    def used_bytes(self) -> int:
        return max(0, self.total_bytes - self.free_bytes)


class NfsCallError(base.ProbeError):
    """A libnfs call failed.

    ``stage`` is ``"mount"`` (connecting, and for NFSv4 looking the export up)
    or ``"statvfs"``; ``code`` is libnfs's negative status (``-errno`` style
    where libnfs maps one); ``detail`` is ``nfs_get_error()``'s text; and
    ``timeout`` the per-call timeout (seconds) that was in force.
    """

    def __init__(self, *, stage: str, code: int, detail: str, timeout: float) -> None:
        super().__init__(f"libnfs {stage} failed ({code}): {detail}")
        self.stage = stage
        self.code = code
        self.detail = detail
        self.timeout = timeout

    @property
    def timed_out(self) -> bool:
        """Whether the server never answered (rather than answering with an error)."""
        return "timed out" in self.detail or self.code == -errno.ETIMEDOUT


class _Library:
    """The loaded shared object with the prototypes of the functions we call."""

    def __init__(self, cdll: ctypes.CDLL) -> None:
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        prototypes: list[tuple[str, type | None, list[type]]] = [
            ("nfs_init_context", vp, []),
            ("nfs_destroy_context", None, [vp]),
            ("nfs_get_error", cp, [vp]),
            ("nfs_parse_url_dir", ctypes.POINTER(_Url), [vp, cp]),
            ("nfs_destroy_url", None, [ctypes.POINTER(_Url)]),
            ("nfs_set_timeout", None, [vp, ci]),
            ("nfs_set_autoreconnect", None, [vp, ci]),
            ("nfs_mount", ci, [vp, cp, cp]),
            ("nfs_statvfs64", ci, [vp, cp, ctypes.POINTER(_Statvfs64)]),
        ]
        for name, restype, argtypes in prototypes:
            function = getattr(cdll, name)  # AttributeError: not the libnfs we know
            function.restype = restype
            function.argtypes = argtypes
        self.cdll = cdll

    def error(self, ctx: int) -> str:
        raw = self.cdll.nfs_get_error(ctx)
        return raw.decode(errors="replace") if raw else "no error text"


_lock = threading.Lock()
_library: _Library | None = None


def load() -> _Library:
    """The libnfs binding, loaded on first use (thread-safe; blocking ``dlopen``).

    Raises :class:`~storage_backends.base.BackendUnavailable` with
    :data:`MISSING_MESSAGE` when no name in :data:`LIBRARY_NAMES` loads or the
    library lacks a function we need. A failure is not cached: installing the
    package fixes the next probe without restarting the node.
    """
    global _library
    with _lock:
        if _library is not None:
            return _library
        last: Exception | None = None
        for name in LIBRARY_NAMES:
            try:
                _library = _Library(ctypes.CDLL(name))
            except (OSError, AttributeError) as exc:
                last = exc
                continue
            return _library
        raise base.BackendUnavailable(MISSING_MESSAGE) from last


def unload() -> None:
    """Forget the loaded library (tests swap :data:`LIBRARY_NAMES`)."""
    global _library
    with _lock:
        _library = None


def server_url(
    *, server: str, version: int, nfs_port: int | None = None, mount_port: int | None = None
) -> str:
    """The ``nfs://`` URL that configures a libnfs context for ``server``.

    The path is ``/``: the export is passed to ``nfs_mount`` separately, so it
    never needs URL quoting. ``mountport`` only matters for NFSv3 (NFSv4 has
    no MOUNT protocol); without ports libnfs asks the portmapper (v3) or uses
    2049 (v4).
    """
    if version not in (NFS_V3, NFS_V4):
        raise ValueError(f"libnfs speaks NFS version 3 or 4, not {version}")
    args = [f"version={version}"]
    if nfs_port is not None:
        args.append(f"nfsport={nfs_port}")
    if mount_port is not None and version == NFS_V3:
        args.append(f"mountport={mount_port}")
    return f"nfs://{server}/?{'&'.join(args)}"


def fsstat(
    *,
    server: str,
    export: str,
    version: int,
    nfs_port: int | None,
    mount_port: int | None,
    deadline: float,
    min_timeout: float,
) -> ServerStat:
    """Mount ``export`` in userspace and return the server's FSSTAT for it. Blocks.

    Each libnfs call gets the time left until ``deadline`` (``time.monotonic``)
    as its timeout, but never less than ``min_timeout`` seconds: the caller
    bounds its own wait separately, and a floor keeps a nearly spent budget
    from turning a healthy but distant server into "did not answer".
    Auto-reconnect is off, so a dead server fails at once instead of being
    retried until the timeout.

    Raises :class:`NfsCallError` when libnfs reports a failure and
    :class:`~storage_backends.base.BackendUnavailable` when libnfs is missing.
    """
    lib = load()
    url = server_url(server=server, version=version, nfs_port=nfs_port, mount_port=mount_port)
    ctx = lib.cdll.nfs_init_context()
    if not ctx:
        raise NfsCallError(stage="init", code=-errno.ENOMEM, detail="no memory", timeout=0.0)
    try:
        parsed = lib.cdll.nfs_parse_url_dir(ctx, url.encode())
        if not parsed:
            raise NfsCallError(stage="url", code=-errno.EINVAL, detail=lib.error(ctx), timeout=0.0)
        try:
            lib.cdll.nfs_set_autoreconnect(ctx, 0)
            timeout = _set_timeout(lib, ctx, deadline=deadline, min_timeout=min_timeout)
            rc = lib.cdll.nfs_mount(ctx, parsed.contents.server, export.encode())
        finally:
            lib.cdll.nfs_destroy_url(parsed)
        if rc != 0:
            raise NfsCallError(stage="mount", code=rc, detail=lib.error(ctx), timeout=timeout)
        result = _Statvfs64()
        timeout = _set_timeout(lib, ctx, deadline=deadline, min_timeout=min_timeout)
        rc = lib.cdll.nfs_statvfs64(ctx, b"/", ctypes.byref(result))
        if rc != 0:
            raise NfsCallError(stage="statvfs", code=rc, detail=lib.error(ctx), timeout=timeout)
    finally:
        lib.cdll.nfs_destroy_context(ctx)
    block = result.f_frsize or result.f_bsize
    return ServerStat(
        total_bytes=result.f_blocks * block,
        free_bytes=result.f_bfree * block,
        available_bytes=result.f_bavail * block,
        block_size=block,
    )


def _set_timeout(lib: _Library, ctx: int, *, deadline: float, min_timeout: float) -> float:
    """Give the next libnfs call what is left of the budget; returns it in seconds."""
    seconds = max(min_timeout, deadline - time.monotonic())
    lib.cdll.nfs_set_timeout(ctx, max(1, int(seconds * 1000)))
    return seconds
