"""``iscsi``: a pool that is one LUN of an iSCSI target.

Attaching logs this host in to the target; probing measures the LUN over the
iSCSI protocol itself. The two are deliberately separate:

* **Login is the kernel's business, behind a small interface.** On a real
  hypervisor the LUN becomes a block device through open-iscsi's kernel
  initiator (:class:`IscsiadmInitiator` runs the ``iscsiadm`` commands). Where
  no kernel initiator exists (this development machine, CI: no
  ``scsi_transport_iscsi``, STORAGE_LAB §3) :class:`UserspaceInitiator` "logs
  in" by proving a full libiscsi session, CHAP included, can be established,
  and hands out the ``iscsi://portal/target/lun`` URL that QEMU's libiscsi
  driver opens directly. The default is IscsiadmInitiator when an
  ``iscsiadm`` binary exists, else UserspaceInitiator.
* **Probing never touches the block device.** A probe opens its own short
  libiscsi session (:mod:`storage_backends._libiscsi`) and asks the target:
  REPORT LUNS, TEST UNIT READY, READ CAPACITY(16), MODE SENSE(6). A sick
  target therefore cannot wedge a reader inside the kernel, and the probe sees
  what the target says (sense data), not what a cached device node remembers.

Upstream's bug fixed here (UPSTREAM §4.7): with CHAP enabled upstream set the
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
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

from storage_backends import _exec, _libiscsi, base, configs

logger = logging.getLogger(__name__)

KIND: Final = base.BackendKind.ISCSI.value

#: Initiator name of the libiscsi sessions when the host has none configured.
DEFAULT_INITIATOR_NAME: Final = "iqn.2026-01.io.quantix:node"
#: Where open-iscsi keeps the host's initiator name.
HOST_INITIATOR_NAME_FILE = "/etc/iscsi/initiatorname.iscsi"
#: The iSCSI port (IANA), used when ``portal`` names no port.
DEFAULT_PORT: Final = configs.ISCSI_DEFAULT_PORT
#: Upper bound of LUN numbers (SAM flat space addressing).
MAX_LUN: Final = configs.ISCSI_MAX_LUN

T = TypeVar("T")


# -- configuration ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IscsiConfig:
    """A validated pool configuration."""

    #: Normalised ``host:port`` (``[v6]:port`` for IPv6).
    portal: str
    target: str
    lun: int
    #: CHAP credentials, or None when ``chap_enabled`` is false.
    chap: _libiscsi.Credentials | None = None


def parse_config(spec: base.PoolSpec) -> IscsiConfig:
    """The pool's configuration; raises InvalidConfig naming the bad field.

    The rules are :func:`storage_backends.configs.parse_iscsi`, the ones the controller
    applies; this only turns the CHAP fields into libiscsi credentials.
    """
    parsed = base.parse_config(configs.parse_iscsi, spec.config)
    chap = (
        _libiscsi.Credentials(user=parsed.chap_user, password=parsed.chap_password)
        if parsed.chap_enabled
        else None
    )
    return IscsiConfig(portal=parsed.portal, target=parsed.target, lun=parsed.lun, chap=chap)


def normalize_portal(raw: str) -> str:
    """``host[:port]`` -> ``host:port`` (port 3260 when omitted); raises InvalidConfig."""
    try:
        return configs.normalize_portal(raw)
    except configs.ConfigError as exc:
        raise base.InvalidConfig(str(exc)) from exc


def host_initiator_name(path: str | None = None) -> str | None:
    """The ``InitiatorName=`` from open-iscsi's file (default
    :data:`HOST_INITIATOR_NAME_FILE`), or None if absent or unreadable."""
    try:
        with open(path or HOST_INITIATOR_NAME_FILE, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep and key.strip() == "InitiatorName" and value.strip():
                    return value.strip()
    except OSError:
        return None
    return None


# -- operator messages ----------------------------------------------------------------


def describe_failure(exc: BaseException, *, config: IscsiConfig, initiator_name: str) -> str:
    """An operator-actionable sentence for a failed connect, login or SCSI command.

    Timeouts are not described here: the caller knows which bound expired.
    """
    target, portal, lun = config.target, config.portal, config.lun
    if isinstance(exc, _libiscsi.LibraryMissing):
        return _libiscsi.MISSING_MESSAGE
    if isinstance(exc, _libiscsi.ConnectFailed):
        return str(exc)
    if isinstance(exc, _libiscsi.LoginFailed):
        if exc.status == _libiscsi.LOGIN_AUTHENTICATION_FAILURE:
            if config.chap is not None:
                return f"CHAP authentication failed for user '{config.chap.user}'"
            return (
                f"target {target} requires CHAP authentication: set iscsi.chap_enabled, "
                "iscsi.chap_user and iscsi.chap_password"
            )
        if exc.status == _libiscsi.LOGIN_AUTHORIZATION_FAILURE:
            return (
                f"initiator {initiator_name} is not allowed to log in to {target} "
                "(add it to the target's ACL)"
            )
        if exc.status in (_libiscsi.LOGIN_TARGET_NOT_FOUND, _libiscsi.LOGIN_TARGET_REMOVED):
            return (
                f"target {target} not found on portal {portal}, "
                f"or initiator {initiator_name} is not in its ACL"
            )
        reason = exc.status_text or str(exc)
        return f"login to {target} on portal {portal} failed: {reason}"
    if isinstance(exc, _libiscsi.CheckCondition):
        if exc.command == "TEST UNIT READY" and exc.sense.key == _libiscsi.SENSE_NOT_READY:
            return f"LUN {exc.lun} of {target} is not ready ({exc.sense.describe()})"
        return f"LUN {exc.lun} of {target}: {exc.command} failed ({exc.sense.describe()})"
    if isinstance(exc, LunUnusable):
        return str(exc)
    return f"iSCSI target {target} LUN {lun} on portal {portal}: {exc}"


def _translate(
    exc: base.BackendError,
    *,
    config: IscsiConfig,
    initiator_name: str,
    what: str,
    timeout: float,
    default: type[base.BackendError],
) -> base.BackendError:
    """The exception to raise for ``exc``, keeping its family (timeout, unavailable)."""
    if isinstance(exc, base.BackendTimeout):
        return base.BackendTimeout(f"{what} timed out after {timeout:g}s")
    message = describe_failure(exc, config=config, initiator_name=initiator_name)
    if isinstance(exc, base.BackendUnavailable):
        return base.BackendUnavailable(message)
    return default(message)


class LunUnusable(base.ProbeError):
    """The configured LUN is not on the target, or is not a disk."""


# -- initiators --------------------------------------------------------------------


@runtime_checkable
class Initiator(Protocol):
    """The host side of an iSCSI login: makes a target's LUN usable on this host."""

    async def login(
        self,
        *,
        portal: str,
        target: str,
        lun: int,
        chap_user: str | None,
        chap_password: str | None,
        timeout: float,
    ) -> str:
        """Log in (idempotent); returns the LUN's device path. Raises BackendError."""
        ...

    async def logout(self, *, portal: str, target: str, timeout: float) -> None:
        """Log out of every session to ``target`` via ``portal`` (idempotent)."""
        ...

    async def session_exists(self, *, portal: str, target: str, timeout: float) -> bool:
        """Whether this host has a session to ``target`` via ``portal``."""
        ...

    def device_path(self, *, portal: str, target: str, lun: int) -> str:
        """The path ``login`` returns for this LUN (no I/O)."""
        ...


class Runner(Protocol):
    """Runs a program: ``(argv, *, timeout) -> (returncode, stdout, stderr)`` like ``_exec.run``."""

    def __call__(
        self, argv: Sequence[str], *, timeout: float
    ) -> Awaitable[tuple[int, bytes, bytes]]: ...


#: iscsiadm exit codes (open-iscsi ``iscsi_err.h``).
ISCSIADM_SESSION_EXISTS: Final = 15
ISCSIADM_NO_OBJECTS_FOUND: Final = 21
ISCSIADM_LOGIN_AUTH_FAILED: Final = 24

_REDACTED: Final = "***"


class IscsiadmInitiator:
    """The kernel initiator through open-iscsi's ``iscsiadm``; what real hosts use.

    ``login`` runs, in order (upstream's commands, plus the password it forgot):

    1. ``iscsiadm -m discovery -t st -p <portal>`` (creates the node records
       the next commands update; open-iscsi refuses to update a missing one);
    2. with CHAP: ``iscsiadm -m node -T <target> -p <portal> -o update -n
       node.session.auth.authmethod -v CHAP``, then the same for
       ``node.session.auth.username`` and ``node.session.auth.password``;
    3. ``iscsiadm -m node -T <target> -p <portal> -l`` (exit 15, "session
       exists", counts as success: attach is idempotent);
    4. waits, within the timeout, for udev's
       ``/dev/disk/by-path/ip-<portal>-iscsi-<target>-lun-<lun>`` link and
       returns it. A link that never appears fails the attach; the session is
       left for the next attempt (or detach) to reuse.

    ``logout`` runs ``iscsiadm -m node -T <target> -p <portal> -u``; exit 21
    (no session) counts as success. ``session_exists`` parses ``iscsiadm -m
    session``. The CHAP password is on iscsiadm's command line (it has no other
    way to take it) but never in a log line or error message: those show
    ``***``. ``runner`` runs programs (default :func:`storage_backends._exec.run`,
    which kills the process group on timeout); ``path_exists`` checks the
    device link (a devtmpfs lookup that cannot hang).
    """

    def __init__(
        self,
        *,
        runner: Runner = _exec.run,
        binary: str = "iscsiadm",
        path_exists: Callable[[str], bool] = os.path.exists,
        poll_interval: float = 0.1,
    ) -> None:
        self._runner = runner
        self._binary = binary
        self._path_exists = path_exists
        self._poll_interval = poll_interval

    def device_path(self, *, portal: str, target: str, lun: int) -> str:
        return f"/dev/disk/by-path/ip-{portal}-iscsi-{target}-lun-{lun}"

    async def login(
        self,
        *,
        portal: str,
        target: str,
        lun: int,
        chap_user: str | None,
        chap_password: str | None,
        timeout: float,
    ) -> str:
        deadline = time.monotonic() + timeout
        secrets = (chap_password,) if chap_password else ()
        what = f"iscsiadm login to {target} on portal {portal}"
        call = functools.partial(
            self._call, deadline=deadline, timeout=timeout, what=what, secrets=secrets
        )

        rc, _, err = await call(["-m", "discovery", "-t", "st", "-p", portal])
        if rc != 0:
            raise base.MountError(
                f"iscsiadm discovery on portal {portal} failed (exit {rc}): {err}"
            )
        node = ["-m", "node", "-T", target, "-p", portal]
        if chap_user is not None and chap_password is not None:
            for name, value in (
                ("node.session.auth.authmethod", "CHAP"),
                ("node.session.auth.username", chap_user),
                ("node.session.auth.password", chap_password),
            ):
                argv = [*node, "-o", "update", "-n", name, "-v", value]
                rc, _, err = await call(argv)
                if rc != 0:
                    shown = _redact(" ".join([self._binary, *argv]), secrets)
                    raise base.MountError(f"`{shown}` failed (exit {rc}): {err}")
        rc, _, err = await call([*node, "-l"])
        if rc == ISCSIADM_LOGIN_AUTH_FAILED:
            raise base.MountError(f"CHAP authentication failed for user '{chap_user or ''}'")
        if rc not in (0, ISCSIADM_SESSION_EXISTS):
            raise base.MountError(f"{what} failed (exit {rc}): {err}")

        path = self.device_path(portal=portal, target=target, lun=lun)
        while not self._path_exists(path):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise base.MountError(
                    f"logged in to {target} on portal {portal} but {path} "
                    f"did not appear within {timeout:g}s"
                )
            await asyncio.sleep(min(self._poll_interval, remaining))
        return path

    async def logout(self, *, portal: str, target: str, timeout: float) -> None:
        what = f"iscsiadm logout from {target} on portal {portal}"
        rc, _, err = await self._call(
            ["-m", "node", "-T", target, "-p", portal, "-u"],
            deadline=time.monotonic() + timeout,
            timeout=timeout,
            what=what,
            secrets=(),
        )
        if rc not in (0, ISCSIADM_NO_OBJECTS_FOUND):
            raise base.MountError(f"{what} failed (exit {rc}): {err}")

    async def session_exists(self, *, portal: str, target: str, timeout: float) -> bool:
        what = "iscsiadm -m session"
        rc, out, err = await self._call(
            ["-m", "session"],
            deadline=time.monotonic() + timeout,
            timeout=timeout,
            what=what,
            secrets=(),
        )
        if rc == ISCSIADM_NO_OBJECTS_FOUND:
            return False
        if rc != 0:
            raise base.ProbeError(f"{what} failed (exit {rc}): {err}")
        return session_listed(out, portal=portal, target=target)

    async def _call(
        self,
        args: list[str],
        *,
        deadline: float,
        timeout: float,
        what: str,
        secrets: Sequence[str],
    ) -> tuple[int, str, str]:
        """Run ``iscsiadm args``; returns (rc, stdout, redacted stderr).

        Raises BackendTimeout naming ``what`` when the shared deadline passes,
        BackendUnavailable when iscsiadm cannot be run at all.
        """
        argv = [self._binary, *args]
        logger.debug("running %s", _redact(" ".join(argv), secrets))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise base.BackendTimeout(f"{what} timed out after {timeout:g}s")
        try:
            rc, out, err = await self._runner(argv, timeout=remaining)
        except base.BackendTimeout as exc:
            raise base.BackendTimeout(f"{what} timed out after {timeout:g}s") from exc
        except base.BackendUnavailable as exc:
            raise base.BackendUnavailable(
                f"{self._binary} cannot be run ({exc}): install Debian package open-iscsi"
            ) from exc
        text = _redact(err.decode(errors="replace").strip(), secrets)
        return rc, out.decode(errors="replace"), text


def session_listed(output: str, *, portal: str, target: str) -> bool:
    """Whether ``iscsiadm -m session`` output lists ``target`` via ``portal``.

    Lines look like ``tcp: [1] 10.0.0.5:3260,1 iqn.2026-01.com.example:pool1
    (non-flash)``. iscsiadm shows the portal's IP address, so when ``portal``
    names a host by DNS name only the target is compared.
    """
    host = portal.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
        compare_portal = True
    except ValueError:
        compare_portal = False
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != target:
            continue
        if not compare_portal or fields[2].rpartition(",")[0] == portal:
            return True
    return False


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


class UserspaceInitiator:
    """libiscsi in this process instead of a kernel session; what runs on this machine.

    ``login`` proves that a NORMAL session to the target can be established
    with the pool's CHAP credentials (connect, login, logout) and returns
    ``iscsi://<portal>/<target>/<lun>``: the URL QEMU's built-in libiscsi
    driver (and libvirt's ``<source protocol='iscsi'>``) opens directly, so a
    VM can use the LUN without any kernel session. Real hosts with open-iscsi
    use :class:`IscsiadmInitiator` (the default wherever ``iscsiadm`` exists).

    Sessions are remembered in memory only, for ``session_exists``.
    """

    def __init__(self, *, initiator_name: str = DEFAULT_INITIATOR_NAME) -> None:
        self.initiator_name = initiator_name
        self._sessions: set[tuple[str, str]] = set()
        self._workers = _exec.ThreadRunner(name="quantix-iscsi-login")

    def device_path(self, *, portal: str, target: str, lun: int) -> str:
        return f"iscsi://{portal}/{target}/{lun}"

    async def login(
        self,
        *,
        portal: str,
        target: str,
        lun: int,
        chap_user: str | None,
        chap_password: str | None,
        timeout: float,
    ) -> str:
        chap = None
        if chap_user is not None and chap_password is not None:
            chap = _libiscsi.Credentials(user=chap_user, password=chap_password)
        config = IscsiConfig(portal=portal, target=target, lun=lun, chap=chap)
        deadline = time.monotonic() + timeout

        def prove(abandoned: threading.Event) -> None:
            with _libiscsi.connect(
                portal=portal,
                target=target,
                initiator_name=self.initiator_name,
                credentials=chap,
                deadline=deadline,
                abandoned=abandoned,
            ):
                pass

        try:
            await self._workers.run(
                prove, key=f"{portal}/{target}", timeout=timeout, what=f"login to {target}"
            )
        except base.BackendError as exc:
            raise _translate(
                exc,
                config=config,
                initiator_name=self.initiator_name,
                what=f"login to {target} on portal {portal}",
                timeout=timeout,
                default=base.MountError,
            ) from exc
        self._sessions.add((portal, target))
        return self.device_path(portal=portal, target=target, lun=lun)

    async def logout(self, *, portal: str, target: str, timeout: float) -> None:
        del timeout  # nothing to wait for: the login session was closed already
        self._sessions.discard((portal, target))

    async def session_exists(self, *, portal: str, target: str, timeout: float) -> bool:
        del timeout
        return (portal, target) in self._sessions


def default_initiator(*, initiator_name: str) -> Initiator:
    """IscsiadmInitiator where ``iscsiadm`` is installed, else UserspaceInitiator."""
    if shutil.which("iscsiadm") is not None:
        return IscsiadmInitiator()
    return UserspaceInitiator(initiator_name=initiator_name)


# -- the backend ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Attachment:
    config: IscsiConfig
    device_path: str


@dataclass(frozen=True, slots=True)
class _Measurement:
    total_bytes: int
    data_luns: tuple[int, ...]
    read_only: bool


class IscsiBackend:
    """Pools that are LUNs of iSCSI targets.

    ``initiator`` logs the host in and out (default: :func:`default_initiator`).
    ``initiator_name`` is the IQN of this backend's own libiscsi sessions
    (discovery and probes); the default is the host's open-iscsi
    ``InitiatorName`` when ``/etc/iscsi/initiatorname.iscsi`` names one (so a
    target's ACL sees a single identity per host), else
    :data:`DEFAULT_INITIATOR_NAME`.
    """

    kind: str = KIND

    def __init__(
        self,
        *,
        initiator: Initiator | None = None,
        initiator_name: str | None = None,
    ) -> None:
        if initiator_name is not None:
            if not configs.is_iscsi_name(initiator_name):
                raise base.InvalidConfig(
                    f"iscsi initiator_name must be an iSCSI name, got {initiator_name!r}"
                )
            name = initiator_name
        else:
            host_name = host_initiator_name()
            name = (
                host_name
                if host_name and configs.is_iscsi_name(host_name)
                else DEFAULT_INITIATOR_NAME
            )
        self.initiator_name = name
        self.initiator: Initiator = (
            initiator if initiator is not None else default_initiator(initiator_name=name)
        )
        #: Attached pools by id; cleared by detach.
        self._attached: dict[str, _Attachment] = {}
        self._workers = _exec.ThreadRunner(name=f"quantix-{KIND}")

    # -- configuration -----------------------------------------------------

    def validate(self, spec: base.PoolSpec) -> None:
        """Raise :class:`~storage_backends.base.InvalidConfig` naming the bad field."""
        parse_config(spec)

    # -- StorageBackend ----------------------------------------------------

    async def attach(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        """Discover, log in, then probe.

        SendTargets discovery on the portal must offer the target, else
        MountError "target <iqn> not offered by portal <p>; offered: [...]".
        Re-attaching an attached pool runs discovery and login again (both are
        idempotent), which also repairs a session lost underneath. Raises
        InvalidConfig, MountError, BackendUnavailable (portal unreachable,
        libiscsi missing) or BackendTimeout; a probe that fails afterwards is
        reported in the returned PoolInfo.
        """
        config = parse_config(spec)
        deadline = time.monotonic() + timeout
        offered = await self._run(
            spec,
            functools.partial(self._discover, config=config, deadline=deadline),
            config=config,
            timeout=timeout,
            what=f"discovery on portal {config.portal}",
            default=base.MountError,
        )
        names = sorted({t.name for t in offered})
        if config.target not in names:
            raise base.MountError(
                f"target {config.target} not offered by portal {config.portal}; "
                f"offered: [{', '.join(names)}]"
            )
        device_path = await self.initiator.login(
            portal=config.portal,
            target=config.target,
            lun=config.lun,
            chap_user=config.chap.user if config.chap else None,
            chap_password=config.chap.password if config.chap else None,
            timeout=_remaining(deadline),
        )
        self._attached[spec.pool_id] = _Attachment(config=config, device_path=device_path)
        logger.info(
            "attached iscsi pool %s: LUN %d of %s on portal %s as %s",
            spec.pool_id,
            config.lun,
            config.target,
            config.portal,
            device_path,
        )
        return await self.probe(spec, timeout=_remaining(deadline))

    async def detach(self, spec: base.PoolSpec, *, timeout: float) -> None:
        """Log out (idempotent) unless another attached pool uses the same target.

        Two pools can be two LUNs of one target, and a logout ends the session
        for both; the last one to detach logs out. The pool is forgotten only
        once the logout succeeded, so a failed detach can be retried.
        """
        config = parse_config(spec)
        attachment = self._attached.get(spec.pool_id)
        if attachment is not None:
            config = attachment.config
        sharing = sorted(
            pool_id
            for pool_id, other in self._attached.items()
            if pool_id != spec.pool_id
            and (other.config.portal, other.config.target) == (config.portal, config.target)
        )
        if sharing:
            logger.info(
                "detached iscsi pool %s; session to %s kept for pool(s) %s",
                spec.pool_id,
                config.target,
                ", ".join(sharing),
            )
        else:
            await self.initiator.logout(portal=config.portal, target=config.target, timeout=timeout)
            logger.info("detached iscsi pool %s: logged out of %s", spec.pool_id, config.target)
        self._attached.pop(spec.pool_id, None)

    async def probe(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        """Measure the LUN; never raises for an unhealthy pool (only InvalidConfig)."""
        config = parse_config(spec)
        attachment = self._attached.get(spec.pool_id)
        device_path = (
            attachment.device_path
            if attachment is not None
            else self.initiator.device_path(
                portal=config.portal, target=config.target, lun=config.lun
            )
        )
        info = functools.partial(self._info, spec=spec, device_path=device_path)
        health = base.PoolHealth
        timed_out = f"probe timed out after {timeout:g}s"
        deadline = time.monotonic() + timeout

        # Rule 1: an attached pool whose session vanished (logged out underneath).
        if attachment is not None:
            try:
                exists = await self.initiator.session_exists(
                    portal=config.portal, target=config.target, timeout=timeout
                )
            except base.BackendTimeout:
                return info(health=health.ERROR, error_message=timed_out)
            except base.BackendError as exc:
                return info(health=health.ERROR, error_message=f"checking the iSCSI session: {exc}")
            if not exists:
                return info(
                    health=health.UNMOUNTED,
                    error_message=(
                        f"no iSCSI session to {config.target} on portal {config.portal} "
                        "(logged out underneath; the next attach logs in again)"
                    ),
                )

        # Rules 2-5: ask the target.
        try:
            measured = await self._workers.run(
                functools.partial(self._measure, config=config, deadline=deadline),
                key=spec.pool_id,
                timeout=_remaining(deadline),
                what=f"probe of {config.target} LUN {config.lun}",
            )
        except _exec.WorkerBusy:
            return info(
                health=health.ERROR,
                error_message=(
                    f"probe timed out; previous probe of {config.target} LUN {config.lun} "
                    "still running"
                ),
            )
        except base.BackendTimeout:
            return info(health=health.ERROR, error_message=timed_out)
        except base.BackendError as exc:
            message = describe_failure(exc, config=config, initiator_name=self.initiator_name)
            return info(health=health.ERROR, error_message=message)
        except OSError as exc:  # not expected: _libiscsi maps its OS errors itself
            return info(health=health.ERROR, error_message=f"probe failed: {exc}")

        fields: dict[str, Any] = {
            "total_bytes": measured.total_bytes,
            "used_bytes": 0,
            "available_bytes": measured.total_bytes,
            "volume_count": len(measured.data_luns),
        }
        if measured.read_only:
            return info(health=health.DEGRADED, error_message="read-only", **fields)
        return info(health=health.HEALTHY, **fields)

    async def list_volumes(self, spec: base.PoolSpec, *, timeout: float) -> list[base.VolumeInfo]:
        """The target's data LUNs as volumes ``lun-<n>``, by LUN number, with their sizes.

        ``path`` is the initiator's device path for each LUN. Raises
        BackendUnavailable, BackendTimeout or ProbeError.
        """
        config = parse_config(spec)
        deadline = time.monotonic() + timeout
        sizes = await self._run(
            spec,
            functools.partial(self._lun_sizes, config=config, deadline=deadline),
            config=config,
            timeout=timeout,
            what=f"listing the LUNs of {config.target}",
            default=base.ProbeError,
        )
        return [
            base.VolumeInfo(
                name=f"lun-{lun}",
                size_bytes=size,
                path=self.initiator.device_path(
                    portal=config.portal, target=config.target, lun=lun
                ),
            )
            for lun, size in sizes
        ]

    # -- libiscsi work (worker threads) --------------------------------------

    async def _run(
        self,
        spec: base.PoolSpec,
        fn: Callable[[threading.Event], T],
        *,
        config: IscsiConfig,
        timeout: float,
        what: str,
        default: type[base.BackendError],
    ) -> T:
        """Run ``fn`` in the pool's worker; failures become operator-worded BackendErrors."""
        try:
            return await self._workers.run(fn, key=spec.pool_id, timeout=timeout, what=what)
        except _exec.WorkerBusy as exc:
            raise base.BackendTimeout(
                f"{what} timed out; a previous operation on pool {spec.pool_id} is still running"
            ) from exc
        except base.BackendError as exc:
            raise _translate(
                exc,
                config=config,
                initiator_name=self.initiator_name,
                what=what,
                timeout=timeout,
                default=default,
            ) from exc

    def _session(
        self,
        config: IscsiConfig,
        *,
        target: str | None,
        deadline: float,
        abandoned: threading.Event,
    ) -> _libiscsi.Session:
        return _libiscsi.connect(
            portal=config.portal,
            target=target,
            initiator_name=self.initiator_name,
            credentials=config.chap,
            deadline=deadline,
            abandoned=abandoned,
        )

    def _discover(
        self, abandoned: threading.Event, *, config: IscsiConfig, deadline: float
    ) -> list[_libiscsi.DiscoveredTarget]:
        with self._session(config, target=None, deadline=deadline, abandoned=abandoned) as session:
            return session.discover()

    def _measure(
        self, abandoned: threading.Event, *, config: IscsiConfig, deadline: float
    ) -> _Measurement:
        """Apply rules 2-4 of the module docstring; raises for ERROR cases."""
        with self._session(
            config, target=config.target, deadline=deadline, abandoned=abandoned
        ) as session:
            luns = session.report_luns()
            data_luns = _data_luns(session, luns)
            if config.lun not in data_luns:
                raise LunUnusable(_unusable_lun_message(config, luns=luns, data_luns=data_luns))
            session.test_unit_ready(config.lun)
            capacity = session.read_capacity(config.lun)
            try:
                read_only = session.write_protected(config.lun)
            except _libiscsi.CheckCondition:  # MODE SENSE unsupported: cannot tell, assume not
                read_only = False
            return _Measurement(
                total_bytes=capacity.total_bytes, data_luns=tuple(data_luns), read_only=read_only
            )

    def _lun_sizes(
        self, abandoned: threading.Event, *, config: IscsiConfig, deadline: float
    ) -> list[tuple[int, int]]:
        with self._session(
            config, target=config.target, deadline=deadline, abandoned=abandoned
        ) as session:
            data_luns = _data_luns(session, session.report_luns())
            return [(lun, session.read_capacity(lun).total_bytes) for lun in data_luns]

    def _info(
        self, *, spec: base.PoolSpec, device_path: str, health: base.PoolHealth, **fields: Any
    ) -> base.PoolInfo:
        return base.PoolInfo(
            pool_id=spec.pool_id,
            kind=self.kind,
            health=health,
            mount_path=device_path,
            probed_at=time.time(),
            **fields,
        )


def _data_luns(session: _libiscsi.Session, luns: Sequence[int]) -> list[int]:
    """``luns`` without a LUN 0 that is a storage array controller (or not connected)."""
    if 0 not in luns:
        return list(luns)
    lun0 = session.device_type(0)
    if lun0.is_controller or not lun0.connected:
        return [lun for lun in luns if lun != 0]
    return list(luns)


def _unusable_lun_message(
    config: IscsiConfig, *, luns: Sequence[int], data_luns: Sequence[int]
) -> str:
    choices = f"data LUNs {list(data_luns)}" if data_luns else "no data LUNs"
    if config.lun in luns:
        return (
            f"LUN {config.lun} of {config.target} is a storage array controller, not a disk; "
            f"set iscsi.lun to one of the target's {choices}"
        )
    return f"LUN {config.lun} is not on target {config.target}; the target reports {choices}"


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
