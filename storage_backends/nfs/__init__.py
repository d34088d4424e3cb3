"""``nfs``: a pool that is an NFS export mounted on this host.

Attaching mounts ``<server>:<export_path>`` at the pool's mount point with the
configured mount command; probing measures it; detaching unmounts it. What
makes NFS different from a local directory is that the storage lives on
another machine, and the kernel client is a poor witness of that machine:

* **A hung server hangs the mount.** On a ``hard`` mount (the default, and
  what VM images need) every syscall on the mount point - ``statvfs``,
  ``readdir``, even ``stat`` of the mount point - blocks until the server
  answers, in uninterruptible sleep. So the probe asks the **server first**,
  over its own userspace connection (libnfs, :mod:`storage_backends._libnfs`)
  with a per-call timeout, and touches the kernel mount only once the server
  has answered. A dead or silent server is then named in the message
  ("NFS server 10.0.0.7:2049 refused the connection", "... did not answer
  within 1.8s") instead of a bare "probe timed out", and no thread is left
  stuck in the kernel. The server's FSSTAT is also the authoritative capacity:
  it is what the server will let us write, whatever the client caches.
* **Probes must not hang the node.** Everything blocking runs in a worker
  thread through :class:`storage_backends._exec.ThreadRunner`, one worker per
  pool (keyed by mount point), under the caller's timeout. If the server goes
  silent between the two steps above, the kernel call blocks; the caller gets
  "probe timed out after Xs" on time, the stuck worker keeps its key, and
  later probes report "probe timed out after Xs; previous probe still
  running" rather than piling up threads. Bookkeeping that never touches the
  mount (reading ``/proc/self/mountinfo``, creating the mount point) runs on
  a second runner, so a pool whose probe is stuck can still be detached.
* **An unmounted export is invisible.** The mount point then is an empty
  directory on the parent filesystem, and ``statvfs`` happily measures the
  wrong disk (docs/lab.md, "NFS"). The probe therefore checks
  ``/proc/self/mountinfo`` before anything else, and expects the mount it
  made: at attach it records the mount's identity (source, root, fstype), and
  a mount point that now shows something else is UNMOUNTED. Without a record
  (a node restarted over an existing mount), a mount whose source is
  ``<server>:<export_path>`` with fstype nfs/nfs4 is adopted; anything else at
  the mount point is never mounted over or unmounted by us.

The **mount command is a setting** (``mount_command``, ``umount_command``)
because a host may need a wrapper (sudo, a namespace helper), and because this
project's test machines have no kernel NFS client: there
``scripts/nfs-bind-mount`` stands in for ``mount``, bind-mounting the
directory that backs the export, while the probe still talks to a real NFS
server (nfs-ganesha) for everything the server knows. The command line is
exactly what a real host runs::

    <mount_command> -t nfs \
        -o vers=<version>[,port=<nfs_port>][,mountport=<mount_port>][,<options>] \
        <server>:<export_path> <mount_point>

``nfs_port``/``mount_port`` (backend options) say where the server listens
when not on the standard ports; they apply to the probe and to the mount.

Health rules, first match wins:

1. nothing mounted at the mount point -> ``UNMOUNTED`` "expected S at M, not
   mounted"; a different mount there -> ``UNMOUNTED`` "... found X instead";
2. the server cannot be asked (refused, unreachable, silent, no such export,
   libnfs missing) -> ``ERROR`` naming the server and the reason;
3. ``statvfs`` or listing the mount fails (``ESTALE`` after the export was
   replaced, ``EIO``) -> ``ERROR`` with the error;
4. the mount is read-only -> ``DEGRADED`` "read-only";
5. the server's available space is below ``full_threshold`` of its total ->
   ``DEGRADED`` "nearly full: N% free";
6. otherwise ``HEALTHY``.

Capacity (total/used/available) always comes from the server's FSSTAT; the
volume count is the number of image files (``.qcow2 .raw .img .iso``) directly
in the mount point, counted live on every probe.

The package: :mod:`~storage_backends.nfs.backend` (the backend),
:mod:`~storage_backends.nfs.mounts` (is the export what is mounted there?); the
config rules are :func:`storage_backends.configs.parse_nfs`, shared with the
controller.
"""

from storage_backends.nfs.backend import (
    DEFAULT_VERSION,
    KIND,
    MAX_STACKED_MOUNTS,
    NFS_PORT,
    PORTMAPPER_PORT,
    VERSIONS,
    VOLUME_EXTENSIONS,
    NfsBackend,
    NfsConfig,
    libnfs_version,
)
from storage_backends.nfs.mounts import (
    NFS_FSTYPES,
    Mount,
    mount_problem,
    parse_mountinfo,
    read_mounts,
)

__all__ = [
    "DEFAULT_VERSION",
    "KIND",
    "MAX_STACKED_MOUNTS",
    "NFS_FSTYPES",
    "NFS_PORT",
    "PORTMAPPER_PORT",
    "VERSIONS",
    "VOLUME_EXTENSIONS",
    "Mount",
    "NfsBackend",
    "NfsConfig",
    "libnfs_version",
    "mount_problem",
    "parse_mountinfo",
    "read_mounts",
]
