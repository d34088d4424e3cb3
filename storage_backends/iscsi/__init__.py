"""``iscsi``: a pool that is one LUN of an iSCSI target.

Attaching logs this host in to the target; probing measures the LUN over the
iSCSI protocol itself. The two are deliberately separate:

* **Login is the kernel's business, behind a small interface.** On a real
  hypervisor the LUN becomes a block device through open-iscsi's kernel
  initiator (:class:`IscsiadmInitiator` runs the ``iscsiadm`` commands). Where
  no kernel initiator exists (this development machine, CI: no
  ``scsi_transport_iscsi``, docs/lab.md "iSCSI") :class:`UserspaceInitiator` "logs
  in" by proving a full libiscsi session, CHAP included, can be established,
  and hands out the ``iscsi://portal/target/lun`` URL that QEMU's libiscsi
  driver opens directly. The default is IscsiadmInitiator when an
  ``iscsiadm`` binary exists, else UserspaceInitiator.
* **Probing never touches the block device.** A probe opens its own short
  libiscsi session (:mod:`storage_backends._libiscsi`) and asks the target:
  REPORT LUNS, TEST UNIT READY, READ CAPACITY(16), MODE SENSE(6). A sick
  target therefore cannot wedge a reader inside the kernel, and the probe sees
  what the target says (sense data), not what a cached device node remembers.

Upstream's bug fixed here (docs/upstream.md): with CHAP enabled upstream set the
auth method and user name on the node record but **never the password**, so
every CHAP login failed. :class:`IscsiadmInitiator` sets all three.

Configuration (the proto's ``IscsiConfig`` field names):

* ``portal``: ``host:port``; the port may be omitted and defaults to 3260 (the
  iSCSI port; ``iscsiadm -p host`` does the same). IPv6 hosts are bracketed
  (``[fd00::5]:3260``). The portal is normalised to ``host:port`` everywhere
  (commands, device path, messages) so one pool always has one device path.
* ``target``: the target name, ``iqn.YYYY-MM.naming-authority[:id]``,
  ``eui.<16 hex>`` or ``naa.<16|32 hex>``.
* ``chap_enabled``, ``chap_user``, ``chap_password``: one-way CHAP; user and
  password are required when enabled. The password never appears in logs,
  messages or ``repr``.
* ``lun``: the LUN the pool is (default 0 as upstream). tgtd (and other
  targets) put a *storage array controller* at LUN 0 and data LUNs from 1 up;
  such a LUN 0 is reported as ERROR naming the data LUNs to choose from, not
  guessed at. LIO and most arrays put data at LUN 0.
* ``volume_group``: accepted and ignored. Upstream layered LVM on the LUN; that
  needs device-mapper, which the hosts this runs on do not have.

What a probe reports:

* ``total_bytes`` from READ CAPACITY(16) (blocks x block size, exact); a raw
  LUN has no filesystem, so ``used_bytes`` is 0 and ``available_bytes`` equals
  the total;
* ``volume_count``: the target's *data* LUNs from REPORT LUNS, i.e. without a
  LUN 0 whose INQUIRY says storage array controller (peripheral type 0x0c);
  :meth:`IscsiBackend.list_volumes` lists the same LUNs with their sizes;
* ``mount_path``: the device path the initiator gave at login
  (``/dev/disk/by-path/ip-<portal>-iscsi-<target>-lun-<lun>`` or the
  ``iscsi://`` URL).

Health rules, first match wins:

1. attached, but the initiator has no session to the target any more ->
   ``UNMOUNTED`` (logged out underneath; the next attach logs in again);
2. the portal refuses, does not answer, the login is rejected (CHAP, ACL,
   unknown target), the LUN is not reported or is the controller, or the probe
   does not finish within its timeout -> ``ERROR`` with the reason;
3. TEST UNIT READY ends in CHECK CONDITION (``NOT READY`` when the LUN is
   offline) -> ``ERROR`` with the decoded sense, e.g. "LUN 1 of iqn... is not
   ready (NOT READY, ASC/ASCQ 0x04/0x01)";
4. MODE SENSE reports the LUN write-protected -> ``DEGRADED`` "read-only";
5. otherwise ``HEALTHY``.

Blocking libiscsi calls run through :class:`storage_backends._exec.ThreadRunner`,
one worker per pool: a probe of a pool whose previous worker is still stuck
on a hung target waits for it within its own timeout and then reports
``ERROR`` instead of starting a second thread. The worker itself is bounded
too (libiscsi PDU timeouts follow the caller's deadline), so an abandoned
worker ends a second or two after its caller gave up.

The package: :mod:`~storage_backends.iscsi.backend` (the backend),
:mod:`~storage_backends.iscsi.initiators` (logging the host in),
:mod:`~storage_backends.iscsi.targets` (the validated config and what failures
mean); the config rules are :func:`storage_backends.configs.parse_iscsi`, shared
with the controller.
"""

from storage_backends.iscsi.backend import IscsiBackend
from storage_backends.iscsi.initiators import (
    ISCSIADM_LOGIN_AUTH_FAILED,
    ISCSIADM_NO_OBJECTS_FOUND,
    ISCSIADM_SESSION_EXISTS,
    Initiator,
    IscsiadmInitiator,
    Runner,
    UserspaceInitiator,
    default_initiator,
    session_listed,
)
from storage_backends.iscsi.targets import (
    DEFAULT_INITIATOR_NAME,
    DEFAULT_PORT,
    HOST_INITIATOR_NAME_FILE,
    KIND,
    MAX_LUN,
    IscsiConfig,
    LunUnusable,
    describe_failure,
    host_initiator_name,
    normalize_portal,
    parse_config,
)

__all__ = [
    "DEFAULT_INITIATOR_NAME",
    "DEFAULT_PORT",
    "HOST_INITIATOR_NAME_FILE",
    "ISCSIADM_LOGIN_AUTH_FAILED",
    "ISCSIADM_NO_OBJECTS_FOUND",
    "ISCSIADM_SESSION_EXISTS",
    "KIND",
    "MAX_LUN",
    "Initiator",
    "IscsiBackend",
    "IscsiConfig",
    "IscsiadmInitiator",
    "LunUnusable",
    "Runner",
    "UserspaceInitiator",
    "default_initiator",
    "describe_failure",
    "host_initiator_name",
    "normalize_portal",
    "parse_config",
    "session_listed",
]
