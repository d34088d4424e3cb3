"""Directory listings of an attached pool, for the controller's ``ListPoolFiles``.

The controller asks over the open heartbeat stream (``UpdateHeartbeatResponse.list_files``)
and this host answers on the same stream (``UpdateHeartbeatRequest.list_files_result``):
no second connection to the host. :func:`list_directory` is the blocking listing;
:class:`FileLister` runs it off the event loop, bounded in time, one listing per pool at
a time.

Path rules (upstream's agent, ../shared/UPSTREAM.md section 3.7, made safe):

* a leading ``/`` is stripped: ``/images`` and ``images`` both name ``<root>/images``,
  so an absolute path never reaches the host's own tree;
* a path containing ``..`` anywhere -> INVALID_ARGUMENT ``path: contains '..'``; a NUL
  byte -> INVALID_ARGUMENT;
* the directory is opened first and the path of the *open* descriptor is checked to be
  inside the canonical pool root (so a symlink pointing out of the pool, or swapped in
  between check and use, is refused: INVALID_ARGUMENT ``path: is outside the pool root``);
* missing -> NOT_FOUND; a file rather than a directory -> FAILED_PRECONDITION;
* a pool with no mount path (Ceph RBD, iSCSI) -> FAILED_PRECONDITION.

Entries are upstream's: name, path relative to the root, is_directory, size, modified_at
(RFC 3339, UTC), file_type (``directory`` or the lower-cased extension, the whole name
when there is none), permissions (``mode & 0o777`` in octal). Entries are not followed
through symlinks (a link is listed as itself, so nothing about its target leaks). Order:
directories first, then by name case-insensitively (then exactly, so the order is
total). Pages are cursor based: the next page starts after the last entry sent, so an
entry added meanwhile does not shift the pages. A directory is read only up to
:data:`MAX_SCAN` names; a larger one is refused with RESOURCE_EXHAUSTED rather than
listed out of order.
"""

from __future__ import annotations

import datetime
import enum
import heapq
import os
import posixpath
import stat
import threading
from dataclasses import dataclass

from storage_backends import _exec, base

#: Entries per page: the default and the most a page holds.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Names read from one directory at most.
MAX_SCAN = 100_000
#: Seconds one listing may take on this host (the controller waits a little longer).
LIST_TIMEOUT = 4.0


class Code(enum.IntEnum):
    """The gRPC status codes a listing ends with (the wire carries the number)."""

    OK = 0
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INVALID_ARGUMENT = 3
    UNAVAILABLE = 14


class ListingError(Exception):
    """A listing refused or failed: ``code`` and a message for the operator."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    path: str
    is_directory: bool
    size_bytes: int
    modified_at: str
    file_type: str
    permissions: str


@dataclass(frozen=True, slots=True)
class Listing:
    entries: tuple[Entry, ...]
    current_path: str
    #: More entries follow the last one.
    more: bool


def clean_path(path: str) -> str:
    """The pool-relative path ``path`` names ("" for the root); raises ListingError."""
    if ".." in path:
        raise ListingError(Code.INVALID_ARGUMENT, "path: contains '..'")
    if "\x00" in path:
        raise ListingError(Code.INVALID_ARGUMENT, "path: contains a NUL character")
    relative = posixpath.normpath(path.lstrip("/")) if path.strip("/") else ""
    return "" if relative == "." else relative.lstrip("/")


def file_type(name: str, *, is_directory: bool) -> str:
    return "directory" if is_directory else name.rsplit(".", 1)[-1].lower()


def _sort_key(is_directory: bool, name: str) -> tuple[bool, str, str]:
    return (not is_directory, name.casefold(), name)


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _inside(root: str, real: str) -> bool:
    return real == root or real.startswith(root.rstrip("/") + "/")


def list_directory(
    root: str,
    path: str,
    *,
    after: tuple[bool, str] | None = None,
    limit: int = DEFAULT_LIMIT,
    abandoned: threading.Event | None = None,
) -> Listing:
    """List ``path`` under the pool root ``root`` (blocking); raises :class:`ListingError`.

    ``after`` is the (is_directory, name) of the last entry of the previous page.
    """
    relative = clean_path(path)
    limit = min(max(limit, 1), MAX_LIMIT)
    try:
        real_root = os.path.realpath(root, strict=True)
    except OSError as exc:
        raise ListingError(
            Code.FAILED_PRECONDITION, f"the pool's root {root} is not accessible: {exc.strerror}"
        ) from None
    target = os.path.join(real_root, relative) if relative else real_root
    shown = relative or "/"
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ListingError(Code.NOT_FOUND, f"path: {shown} does not exist in the pool") from None
    except NotADirectoryError:
        raise ListingError(
            Code.FAILED_PRECONDITION, f"path: {shown} is a file, not a directory"
        ) from None
    except OSError as exc:
        raise ListingError(Code.UNAVAILABLE, f"path: cannot open {shown}: {exc.strerror}") from None
    try:
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # no /proc: the path as the kernel resolves it now
            real = os.path.realpath(target)
        if not _inside(real_root, real):
            raise ListingError(Code.INVALID_ARGUMENT, "path: is outside the pool root")
        return _page(fd, relative, after=after, limit=limit, abandoned=abandoned)
    finally:
        os.close(fd)


def _page(
    fd: int,
    relative: str,
    *,
    after: tuple[bool, str] | None,
    limit: int,
    abandoned: threading.Event | None,
) -> Listing:
    cursor = _sort_key(*after) if after is not None else None
    keys: list[tuple[bool, str, str]] = []
    try:
        with os.scandir(fd) as scan:
            for count, item in enumerate(scan, start=1):
                if count > MAX_SCAN:
                    raise ListingError(
                        Code.RESOURCE_EXHAUSTED,
                        f"path: {relative or '/'} has more than {MAX_SCAN} entries; "
                        "list a subdirectory",
                    )
                if abandoned is not None and count % 1024 == 0 and abandoned.is_set():
                    break
                try:
                    is_directory = item.is_dir(follow_symlinks=False)
                except OSError:
                    is_directory = False
                key = _sort_key(is_directory, item.name)
                if cursor is None or key > cursor:
                    keys.append(key)
    except OSError as exc:
        raise ListingError(
            Code.UNAVAILABLE, f"path: cannot read {relative or '/'}: {exc.strerror}"
        ) from None
    chosen = heapq.nsmallest(limit + 1, keys)
    more = len(chosen) > limit
    entries = []
    for not_directory, _, name in chosen[:limit]:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue  # gone since the scan
        is_directory = not not_directory and stat.S_ISDIR(st.st_mode)
        entries.append(
            Entry(
                name=name,
                path=posixpath.join(relative, name) if relative else name,
                is_directory=is_directory,
                size_bytes=max(0, st.st_size),
                modified_at=_rfc3339(st.st_mtime),
                file_type=file_type(name, is_directory=is_directory),
                permissions=format(st.st_mode & 0o777, "o"),
            )
        )
    return Listing(entries=tuple(entries), current_path=relative, more=more)


class FileLister:
    """Lists attached pools' directories off the event loop: a daemon worker thread per
    pool (:class:`storage_backends._exec.ThreadRunner`), at most one at a time per pool,
    each bounded by ``timeout``; a listing still stuck in the kernel makes the next one
    for that pool UNAVAILABLE instead of a second thread."""

    def __init__(self, *, timeout: float = LIST_TIMEOUT) -> None:
        self._timeout = timeout
        self._runner = _exec.ThreadRunner(name="files")

    async def list(
        self,
        *,
        pool_id: str,
        mount_path: str,
        path: str,
        after: tuple[bool, str] | None,
        limit: int,
    ) -> Listing:
        """Raises :class:`ListingError`."""
        if not mount_path:
            raise ListingError(
                Code.FAILED_PRECONDITION,
                f"pool {pool_id} has no mount path on this host (block storage, or not "
                "attached): it has no files to list",
            )
        clean_path(path)  # refuse before starting a thread

        def work(abandoned: threading.Event) -> Listing:
            return list_directory(mount_path, path, after=after, limit=limit, abandoned=abandoned)

        try:
            return await self._runner.run(
                work, key=pool_id, timeout=self._timeout, what=f"listing pool {pool_id}"
            )
        except _exec.WorkerBusy:
            raise ListingError(
                Code.UNAVAILABLE, f"a listing of pool {pool_id} is still running on this host"
            ) from None
        except base.BackendTimeout:
            raise ListingError(
                Code.DEADLINE_EXCEEDED,
                f"listing pool {pool_id} took longer than {self._timeout:g}s on this host",
            ) from None
