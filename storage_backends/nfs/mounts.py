"""What is mounted at an NFS pool's mount point, and whether it is the pool's export.

An unmounted export is invisible: the mount point is then an empty directory on
the parent filesystem. So the backend reads ``/proc/self/mountinfo`` (parsed by
:mod:`storage_backends._mounts`) and compares the topmost mount at the mount point
with what attach recorded (:class:`Attached`), or, without a record (a node restarted
over an existing mount), with an NFS mount of ``server:export``. Pure but for
:func:`read_mounts` and :func:`top_mount`'s resolving of the parent directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from storage_backends import _mounts, configs

MOUNTINFO: Final = _mounts.MOUNTINFO

#: Filesystem types the kernel NFS client shows in mountinfo.
NFS_FSTYPES: Final = frozenset({"nfs", "nfs4"})


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of ``/proc/self/mountinfo`` (the fields we use)."""

    mount_point: str
    #: The directory of the mounted filesystem that appears at the mount point.
    root: str
    fstype: str
    source: str

    @property
    def identity(self) -> tuple[str, str, str]:
        """What stays the same when the same export is mounted again."""
        return (self.source, self.root, self.fstype)


@dataclass(frozen=True, slots=True)
class Attached:
    """What attach saw mounted, so probes can tell our mount from another."""

    mount_point: str
    identity: tuple[str, str, str]


def read_mounts(mountinfo: str = MOUNTINFO) -> list[Mount]:
    """Parse ``mountinfo``; returns mounts in file order (later lines mount on top)."""
    return parse_mountinfo(_mounts.read_text(mountinfo))


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse the text of a mountinfo file (see proc(5)); malformed lines are skipped."""
    return [
        Mount(mount_point=e.mount_point, root=e.root, fstype=e.fstype, source=e.source)
        for e in _mounts.parse(text)
    ]


def top_mount(mount_point: str, *, mounts: list[Mount]) -> Mount | None:
    """The topmost mount at exactly ``mount_point`` (resolved), or None.

    Only the parent directory is resolved: resolving the mount point itself
    would stat it, which blocks on a mount of a hung server.
    """
    parent, name = os.path.split(mount_point)
    resolved = os.path.join(os.path.realpath(parent), name)
    found = None
    for mount in mounts:
        if mount.mount_point == resolved:
            found = mount
    return found


def is_ours(mount: Mount, *, cfg: configs.NfsConfig, record: Attached | None) -> bool:
    """Whether ``mount`` is the pool's export: the one attach recorded, or an
    NFS mount of ``server:export`` (adopted after a node restart)."""
    if record is not None and mount.identity == record.identity:
        return True
    return mount.fstype in NFS_FSTYPES and normalise_source(mount.source) == normalise_source(
        cfg.source
    )


def normalise_source(source: str) -> str:
    """``server:/export/`` and ``server:/export`` name the same export."""
    server, sep, path = source.partition(":")
    if sep and len(path) > 1:
        path = path.rstrip("/") or "/"
    return f"{server}{sep}{path}"


def mount_problem(
    *, cfg: configs.NfsConfig, record: Attached | None, mounts: list[Mount]
) -> str | None:
    """Why the pool's export is not what is mounted at its mount point, or None."""
    top = top_mount(cfg.mount_point, mounts=mounts)
    if top is None:
        return f"expected {cfg.source} at {cfg.mount_point}, not mounted"
    if not is_ours(top, cfg=cfg, record=record):
        return (
            f"expected {cfg.source} at {cfg.mount_point}, "
            f"found {top.source} ({top.fstype}) mounted there instead"
        )
    return None
