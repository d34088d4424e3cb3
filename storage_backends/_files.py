"""Files in a pool directory, shared by the backends that mount one (local_dir, nfs).

Backends stay independent of each other (import-linter), so what two of them do
alike lives in private modules like this one, ``_mounts`` and ``_exec``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Final

#: File extensions counted as volumes (compared lower-case).
VOLUME_EXTENSIONS: Final = frozenset({".qcow2", ".raw", ".img", ".iso"})


def volume_entries(
    path: str, *, abandoned: threading.Event
) -> Iterator[tuple[os.DirEntry[str], int]]:
    """Yields ``(entry, size in bytes)`` for regular volume files directly in ``path``.

    Symlinks and directories are skipped, and so are files removed while listing.
    Stops early once the caller has given up (``abandoned``).
    """
    with os.scandir(path) as entries:
        for entry in entries:
            if abandoned.is_set():
                return
            if os.path.splitext(entry.name)[1].lower() not in VOLUME_EXTENSIONS:
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:  # removed while listing
                continue
            yield entry, size


def describe_os_error(exc: OSError) -> str:
    """``[Errno 116] Stale file handle`` without the repeated file name."""
    if exc.errno is not None and exc.strerror:
        return f"[Errno {exc.errno}] {exc.strerror}"
    return str(exc)
