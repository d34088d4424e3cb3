"""How this host logs in to an iSCSI target: open-iscsi's ``iscsiadm``, or libiscsi.

:class:`IscsiadmInitiator` drives the kernel initiator (the LUN becomes a block
device); :class:`UserspaceInitiator` proves a libiscsi session can be made and
hands out the ``iscsi://`` URL QEMU opens itself, for hosts without a kernel
initiator. :func:`default_initiator` picks one. See :mod:`storage_backends.iscsi`.
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
from typing import Final, Protocol, TypeVar, runtime_checkable

from storage_backends import _exec, _libiscsi, base
from storage_backends.iscsi import targets
from storage_backends.iscsi.targets import DEFAULT_INITIATOR_NAME, IscsiConfig

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
            raise targets.translate(
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
