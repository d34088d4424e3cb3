"""``ceph_rbd``: a pool that is an RBD pool (optionally one RBD namespace) of a Ceph cluster.

Nothing is mounted or mapped on the host: VMs reach RBD images through
librbd (libvirt network disks), and this machine class has no krbd or
rbd-nbd anyway. So "attach" means: connect to the cluster, check the pool
(and namespace) exist, keep the connection. "Probe" means asking the cluster
three questions over that connection (docs/lab.md, "Ceph RBD"):

* **health** -- ``mon_command {"prefix": "health"}``: ``HEALTH_OK`` is
  HEALTHY, ``HEALTH_WARN`` DEGRADED and ``HEALTH_ERR`` ERROR, and the
  message lists the active checks ("cluster health HEALTH_WARN: noout flag(s)
  set (OSDMAP_FLAGS)"). A dead mgr or down OSDs show up here too (MGR_DOWN,
  OSD_DOWN), which matters because ``ceph df`` then serves stale figures.
* **capacity** -- the pool's own line of ``ceph df detail``: used is the
  pool's ``stored`` bytes and available its ``max_avail`` (both logical
  bytes, i.e. already divided by the replica count; ``bytes_used`` counts
  every replica and would overstate usage), capped by the pool quota when one
  is set; total is used + available. Upstream fell back to a guessed 1 TiB
  when it could not tell (docs/upstream.md); here missing figures are reported
  as 0 with DEGRADED and the reason in ``error_message``. Never invented.
* **volume count** -- ``rbd.RBD().list(ioctx)`` on an ioctx set to the pool's
  namespace (an RBD namespace that does not exist lists as empty, so its
  existence is checked first).

Bounded, off the event loop, never piling up
    librados blocks, so every call runs in a worker thread through
    :class:`storage_backends._exec.ThreadRunner`, one worker per pool id: a
    probe whose previous worker is still stuck reports ERROR at once and does
    not start a second thread. librados' own timeouts (``client_mount_timeout``,
    ``rados_mon_op_timeout``, ``rados_osd_op_timeout``) are derived from the
    backend's ``probe_timeout``: whole seconds (librados takes integers only,
    and 0 means "wait for ever"), half a second to 1.5 s beyond the probe
    bound. So in a probe the caller's bound always fires first (a
    deterministic "probe timed out" rather than a race with librados'
    ETIMEDOUT), and the abandoned worker returns soon after. In calls with
    more time (attach), librados' timeout is what ends a wait for a silent
    cluster.

Dead or hung? A stopped monitor and a dead one look the same to librados
    (both time out). When a call is about to run out of time (or librados
    has already given up), a TCP connect to each monitor tells them apart
    within the same time bound; a healthy probe never pays for it. If no monitor
    accepts a connection the cluster is *unreachable* ("Ceph cluster
    unreachable: monitors 127.0.0.1:6789 did not answer within 2s (connection
    refused)"); if they accept but do not answer, the probe *timed out*
    ("probe timed out after 2s while asking the monitors for cluster
    health"). Each worker records the step it is in, so the message says what
    was hanging (monitors, or OSDs while listing images).

One connection per pool, replaced after trouble
    A ``rados.Rados`` handle is opened at attach and reused by every probe.
    After any error on it (a timeout, a failed command) it is marked broken
    and the next call closes it and connects afresh: a handle that lived
    through a monitor restart may not recover on its own, and connecting takes
    milliseconds when the cluster is well. ``detach`` closes it (in the
    worker, after any stuck call has returned); nothing is ever deleted.

Config (the proto's CephConfig, snake_case keys): ``pool_name`` (required),
``monitors`` (``host[:port]``, port 6789 by default; the controller requires
one, a backend that reads a ceph.conf accepts none), ``user`` (the client id, default ``admin``:
librados name ``client.admin``), ``keyring_path`` (needed with cephx unless
the default keyring applies), ``namespace``, ``secret_uuid`` (the libvirt
secret VMs use; only validated here), ``key`` (the cephx key itself, write-only at
the controller, given to librados as its ``key`` option instead of a keyring file; not
with ``keyring_path``) and ``cluster_id``: when it is a UUID it
must be the fsid of the cluster the monitors belong to, which catches a
monitor address reused by another cluster; otherwise it is a label.

The Ceph Python bindings (Debian's python3-rados and python3-rbd) are not on
PyPI; ``scripts/link-debian-ceph.sh`` makes them importable in the venv. They
are imported on first use, so the backend can be built and configs validated
without them; without them attach, probe and list raise (or report)
BackendUnavailable naming the fix.

The package: :mod:`~storage_backends.ceph_rbd.backend` (the backend: bounded
calls and their failure messages), :mod:`~storage_backends.ceph_rbd.session` (the
pool's connection and the librados calls run in its worker thread),
:mod:`~storage_backends.ceph_rbd.answers` (reading ``health`` and ``df``),
:mod:`~storage_backends.ceph_rbd.diagnosis` (dead or hung monitors); the
config rules are :func:`storage_backends.configs.parse_ceph_rbd`, shared with
the controller.
"""

from storage_backends.ceph_rbd.answers import Capacity, classify_health, pool_capacity
from storage_backends.ceph_rbd.backend import (
    BINDINGS_MISSING,
    DEFAULT_MON_PORT,
    DEFAULT_PROBE_TIMEOUT,
    DEFAULT_USER,
    DIAGNOSIS_BUDGET,
    KIND,
    MIN_DIAGNOSIS,
    CephPoolConfig,
    CephRbdBackend,
    ClusterUnreachable,
    Monitor,
    parse_config,
)
from storage_backends.ceph_rbd.diagnosis import (
    MIN_SILENCE_EVIDENCE,
    Reachability,
    check_monitors,
    monitors_text,
    unreachable_message,
)

__all__ = [
    "BINDINGS_MISSING",
    "DEFAULT_MON_PORT",
    "DEFAULT_PROBE_TIMEOUT",
    "DEFAULT_USER",
    "DIAGNOSIS_BUDGET",
    "KIND",
    "MIN_DIAGNOSIS",
    "MIN_SILENCE_EVIDENCE",
    "Capacity",
    "CephPoolConfig",
    "CephRbdBackend",
    "ClusterUnreachable",
    "Monitor",
    "Reachability",
    "check_monitors",
    "classify_health",
    "monitors_text",
    "parse_config",
    "pool_capacity",
    "unreachable_message",
]
