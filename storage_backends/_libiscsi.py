"""A small ctypes binding to Debian's ``libiscsi.so.7``: the userspace iSCSI initiator.

The iSCSI backend measures a LUN over the iSCSI protocol itself, not through
a kernel block device: a kernel session cannot exist on every host (not on
this machine, docs/lab.md, iSCSI), and a kernel-side ``/dev/sdX`` whose target
hung blocks every reader in the kernel. libiscsi is a plain C library with a
stable ABI (1.19 in Debian 12); no PyPI initiator works without shims, so
this module binds the dozen functions the backend needs with ctypes.

What it offers:

* :func:`connect` opens one logged-in session, NORMAL (to a target) or
  DISCOVERY (target ``None``), with CHAP when credentials are given;
* :class:`Session` runs the SCSI commands a probe needs: TEST UNIT READY,
  READ CAPACITY(16), REPORT LUNS, INQUIRY (peripheral device type), MODE
  SENSE(6) (write-protect bit), and SendTargets discovery.

Design rules, and why:

* **Loaded lazily.** :func:`load` opens the library on first use, so importing
  the backend never fails; a host without it gets
  :class:`~storage_backends.base.BackendUnavailable` "libiscsi not installed
  (Debian package libiscsi7)" from the first call that needs it.
* **Blocking, on purpose.** Every function here blocks (libiscsi's ``*_sync``
  calls poll internally); callers run them in a worker thread
  (:class:`storage_backends._exec.ThreadRunner`). Nothing here touches asyncio.
* **Bounded by a deadline.** libiscsi times out only PDUs it has sent, in whole
  seconds (``iscsi_set_timeout``). A :class:`Session` is given the caller's
  monotonic deadline and re-arms the PDU timeout before every step to the time
  left plus :data:`PDU_TIMEOUT_GRACE`: the caller's own timer therefore always
  fires first (a hung target is reported one way, "probe timed out after Xs",
  never as a race between two clocks) and the abandoned worker still returns
  a second or two later. The TCP handshake, which has no PDU, is bounded by
  ``iscsi_set_tcp_syncnt``. Auto-reconnect is off: a probe that loses its
  connection reports it instead of retrying behind the caller's back.
* **Typed errors.** libiscsi reports failures as strings; this module turns
  them into :class:`~storage_backends.base.BackendError` subclasses carrying
  the facts an operator message needs (:class:`ConnectFailed` with the reason,
  :class:`LoginFailed` with the iSCSI login status, :class:`CheckCondition`
  with the decoded sense data). A refused connection is not visible in
  libiscsi's message at all, so after a failed connect a plain TCP connect
  tells refused, silent and unreachable portals apart.
* **No leaks.** Every SCSI task is freed and every context destroyed in
  ``finally`` blocks. Only the start of ``struct scsi_task`` (status, sense,
  data-in buffer) is mapped; command data is parsed from the raw data-in bytes
  rather than through libiscsi's unmarshalled structs, so a layout change in
  those cannot go unnoticed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import functools
import math
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from storage_backends import base

#: Library file names tried in order (tests may replace this to simulate absence).
LIBRARY_NAMES: tuple[str, ...] = ("libiscsi.so.7",)

#: Message for a host without libiscsi.
MISSING_MESSAGE: Final = "libiscsi not installed (Debian package libiscsi7)"

#: Seconds added to a PDU's timeout beyond the caller's deadline (see module docstring).
PDU_TIMEOUT_GRACE: Final = 1

#: TEST UNIT READY is retried this often while the LUN reports UNIT ATTENTION
#: (every new session starts with "power on / bus reset" attentions).
UNIT_ATTENTION_RETRIES: Final = 8

#: Peripheral device type of a storage array controller (tgtd's LUN 0).
DEVICE_TYPE_CONTROLLER: Final = 0x0C
#: Peripheral qualifier meaning "no logical unit here".
QUALIFIER_NOT_CONNECTED: Final = 0x03

# iSCSI login status (class << 8 | detail), RFC 7143 §11.13.5.
LOGIN_AUTHENTICATION_FAILURE: Final = 0x0201
LOGIN_AUTHORIZATION_FAILURE: Final = 0x0202
LOGIN_TARGET_NOT_FOUND: Final = 0x0203
LOGIN_TARGET_REMOVED: Final = 0x0204

# libiscsi enums (iscsi.h).
_SESSION_DISCOVERY: Final = 1
_SESSION_NORMAL: Final = 2
_HEADER_DIGEST_NONE_CRC32C: Final = 1  # offer None first, accept CRC32C

# SCSI status (scsi-lowlevel.h enum scsi_status).
_STATUS_GOOD: Final = 0
_STATUS_CHECK_CONDITION: Final = 2

# Sense keys (SPC-4 table 28), named as the standard spells them.
SENSE_KEY_NAMES: Final = {
    0x0: "NO SENSE",
    0x1: "RECOVERED ERROR",
    0x2: "NOT READY",
    0x3: "MEDIUM ERROR",
    0x4: "HARDWARE ERROR",
    0x5: "ILLEGAL REQUEST",
    0x6: "UNIT ATTENTION",
    0x7: "DATA PROTECT",
    0x8: "BLANK CHECK",
    0x9: "VENDOR SPECIFIC",
    0xA: "COPY ABORTED",
    0xB: "ABORTED COMMAND",
    0xD: "VOLUME OVERFLOW",
    0xE: "MISCOMPARE",
}
SENSE_NOT_READY: Final = 0x2
SENSE_UNIT_ATTENTION: Final = 0x6

_LOGIN_STATUS: Final = re.compile(r"Status: (?P<text>[^(]*)\((?P<code>\d+)\)")

#: Largest REPORT LUNS allocation asked for: 16384 flat-space LUNs plus header.
_MAX_REPORT_LUNS_BYTES: Final = 8 + 8 * 16384
_INITIAL_REPORT_LUNS_BYTES: Final = 8 + 8 * 256


# -- errors ----------------------------------------------------------------------


class LibraryMissing(base.BackendUnavailable):
    """libiscsi.so.7 cannot be loaded."""


class ConnectFailed(base.BackendUnavailable):
    """No TCP connection to the portal. ``reason`` is a phrase such as
    "refused the connection"; ``detail`` is libiscsi's own message."""

    def __init__(self, *, portal: str, reason: str, detail: str = "") -> None:
        super().__init__(f"iSCSI portal {portal} {reason}")
        self.portal = portal
        self.reason = reason
        self.detail = detail


class LoginFailed(base.BackendError):
    """The target answered the login with a non-success status."""

    def __init__(self, *, status: int, status_text: str, detail: str) -> None:
        super().__init__(detail)
        #: Login status class << 8 | detail (0x0201 authentication failure ...); -1 if unknown.
        self.status = status
        self.status_text = status_text


class CommandTimedOut(base.BackendTimeout):
    """A PDU was not answered in time, or the caller's deadline passed."""


@dataclass(frozen=True, slots=True)
class Sense:
    """Decoded sense data of a CHECK CONDITION."""

    key: int
    asc: int
    ascq: int

    @property
    def key_name(self) -> str:
        return SENSE_KEY_NAMES.get(self.key, f"SENSE KEY 0x{self.key:x}")

    def describe(self) -> str:
        """``NOT READY, ASC/ASCQ 0x04/0x01``."""
        return f"{self.key_name}, ASC/ASCQ 0x{self.asc:02x}/0x{self.ascq:02x}"


class CheckCondition(base.ProbeError):
    """A SCSI command ended in CHECK CONDITION; ``sense`` says why."""

    def __init__(self, *, command: str, lun: int, sense: Sense) -> None:
        super().__init__(f"{command} on LUN {lun}: {sense.describe()}")
        self.command = command
        self.lun = lun
        self.sense = sense


class CommandFailed(base.ProbeError):
    """A SCSI command failed otherwise (transport error, BUSY, bad data...)."""


# -- the library -------------------------------------------------------------------


class _ScsiSense(ctypes.Structure):
    # struct scsi_sense: the three bitfields share one byte at offset 12.
    _fields_ = (
        ("error_type", ctypes.c_ubyte),
        ("key", ctypes.c_int),
        ("ascq", ctypes.c_int),
        ("bitfields", ctypes.c_ubyte),
        ("bit_pointer", ctypes.c_ubyte),
        ("field_pointer", ctypes.c_uint16),
    )


class _ScsiData(ctypes.Structure):
    _fields_ = (("size", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte)))


class _ScsiTask(ctypes.Structure):
    # The leading members of struct scsi_task (libiscsi 1.19, LP64). Offsets
    # checked against the C header: status 0, sense 48, datain 64.
    _fields_ = (
        ("status", ctypes.c_int),
        ("cdb_size", ctypes.c_int),
        ("xfer_dir", ctypes.c_int),
        ("expxferlen", ctypes.c_int),
        ("cdb", ctypes.c_ubyte * 16),
        ("residual_status", ctypes.c_int),
        ("residual", ctypes.c_size_t),
        ("sense", _ScsiSense),
        ("datain", _ScsiData),
    )


class _TargetPortal(ctypes.Structure):
    pass


_TargetPortal._fields_ = (
    ("next", ctypes.POINTER(_TargetPortal)),
    ("portal", ctypes.c_char_p),
)


class _DiscoveryAddress(ctypes.Structure):
    pass


_DiscoveryAddress._fields_ = (
    ("next", ctypes.POINTER(_DiscoveryAddress)),
    ("target_name", ctypes.c_char_p),
    ("portals", ctypes.POINTER(_TargetPortal)),
)

_TaskPtr = ctypes.POINTER(_ScsiTask)
_DiscoveryPtr = ctypes.POINTER(_DiscoveryAddress)
_vp, _cp, _ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int

#: name -> (restype, argtypes) of every function used.
_PROTOTYPES: Final[dict[str, tuple[Any, list[Any]]]] = {
    "iscsi_create_context": (_vp, [_cp]),
    "iscsi_destroy_context": (_ci, [_vp]),
    "iscsi_get_error": (_cp, [_vp]),
    "iscsi_set_targetname": (_ci, [_vp, _cp]),
    "iscsi_set_session_type": (_ci, [_vp, _ci]),
    "iscsi_set_header_digest": (_ci, [_vp, _ci]),
    "iscsi_set_initiator_username_pwd": (_ci, [_vp, _cp, _cp]),
    "iscsi_set_timeout": (_ci, [_vp, _ci]),
    "iscsi_set_tcp_syncnt": (_ci, [_vp, _ci]),
    "iscsi_set_noautoreconnect": (None, [_vp, _ci]),
    "iscsi_set_reconnect_max_retries": (None, [_vp, _ci]),
    "iscsi_connect_sync": (_ci, [_vp, _cp]),
    "iscsi_login_sync": (_ci, [_vp]),
    "iscsi_logout_sync": (_ci, [_vp]),
    "iscsi_discovery_sync": (_DiscoveryPtr, [_vp]),
    "iscsi_free_discovery_data": (None, [_vp, _DiscoveryPtr]),
    "iscsi_testunitready_sync": (_TaskPtr, [_vp, _ci]),
    "iscsi_readcapacity16_sync": (_TaskPtr, [_vp, _ci]),
    "iscsi_reportluns_sync": (_TaskPtr, [_vp, _ci, _ci]),
    "iscsi_inquiry_sync": (_TaskPtr, [_vp, _ci, _ci, _ci, _ci]),
    "iscsi_modesense6_sync": (_TaskPtr, [_vp, _ci, _ci, _ci, _ci, _ci, ctypes.c_ubyte]),
    "scsi_free_scsi_task": (None, [_TaskPtr]),
}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def load() -> ctypes.CDLL:
    """The loaded library (loaded once, thread-safe); raises :class:`LibraryMissing`."""
    global _library
    with _lock:
        if _library is not None:
            return _library
        errors = []
        for name in LIBRARY_NAMES:
            try:
                lib = ctypes.CDLL(name)
            except OSError as exc:
                errors.append(str(exc))
                continue
            try:
                for function, (restype, argtypes) in _PROTOTYPES.items():
                    fn = getattr(lib, function)
                    fn.restype = restype
                    fn.argtypes = argtypes
            except AttributeError as exc:  # an older libiscsi without a function we use
                errors.append(f"{name}: {exc}")
                continue
            _library = lib
            return lib
        raise LibraryMissing(f"{MISSING_MESSAGE}: {'; '.join(errors)}")


def reset_for_tests() -> None:
    """Forget the loaded library so the next :func:`load` tries again."""
    global _library
    with _lock:
        _library = None


# -- sessions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    """CHAP user and secret; the secret never appears in ``repr``."""

    user: str
    password: str = dataclasses.field(repr=False)


@dataclass(frozen=True, slots=True)
class DiscoveredTarget:
    """One SendTargets answer: a target name and the portals offering it."""

    name: str
    portals: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Capacity:
    """READ CAPACITY(16): number of logical blocks and their size."""

    blocks: int
    block_size: int

    @property
    def total_bytes(self) -> int:
        return self.blocks * self.block_size


@dataclass(frozen=True, slots=True)
class DeviceType:
    """Peripheral qualifier and device type from standard INQUIRY byte 0."""

    qualifier: int
    device_type: int

    @property
    def is_controller(self) -> bool:
        return self.device_type == DEVICE_TYPE_CONTROLLER

    @property
    def connected(self) -> bool:
        return self.qualifier != QUALIFIER_NOT_CONNECTED


def connect(
    *,
    portal: str,
    target: str | None,
    initiator_name: str,
    credentials: Credentials | None,
    deadline: float,
    abandoned: threading.Event | None = None,
) -> Session:
    """Open a logged-in session; ``target=None`` opens a DISCOVERY session.

    ``deadline`` is a :func:`time.monotonic` value bounding every step of the
    session's life; ``abandoned`` (set when the caller gave up) stops it at the
    next step. Use the result as a context manager. Raises
    :class:`LibraryMissing`, :class:`ConnectFailed`, :class:`LoginFailed`,
    :class:`CommandTimedOut` or :class:`CommandFailed`.
    """
    lib = load()
    ctx = lib.iscsi_create_context(initiator_name.encode())
    if not ctx:
        raise CommandFailed(f"cannot create an iSCSI context for initiator {initiator_name}")
    session = Session(lib=lib, ctx=ctx, deadline=deadline, abandoned=abandoned)
    try:
        session._open(portal=portal, target=target, credentials=credentials)
    except BaseException:
        session.close()
        raise
    return session


class Session:
    """One iSCSI session; all methods block and must run in a worker thread."""

    def __init__(
        self,
        *,
        lib: ctypes.CDLL,
        ctx: int,
        deadline: float,
        abandoned: threading.Event | None,
    ) -> None:
        self._lib = lib
        self._ctx: int | None = ctx
        self._deadline = deadline
        self._abandoned = abandoned
        self._logged_in = False
        #: False once a step failed: the connection may be unusable, skip logout.
        self._healthy = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- opening -----------------------------------------------------------

    def _open(self, *, portal: str, target: str | None, credentials: Credentials | None) -> None:
        lib, ctx = self._lib, self._context()
        lib.iscsi_set_noautoreconnect(ctx, 1)
        lib.iscsi_set_reconnect_max_retries(ctx, 0)
        lib.iscsi_set_header_digest(ctx, _HEADER_DIGEST_NONE_CRC32C)
        if target is None:
            lib.iscsi_set_session_type(ctx, _SESSION_DISCOVERY)
        else:
            lib.iscsi_set_session_type(ctx, _SESSION_NORMAL)
            if lib.iscsi_set_targetname(ctx, target.encode()) != 0:
                raise CommandFailed(f"invalid target name {target!r}: {self._error()}")
        if credentials is not None:
            rc = lib.iscsi_set_initiator_username_pwd(
                ctx, credentials.user.encode(), credentials.password.encode()
            )
            if rc != 0:
                raise CommandFailed(f"cannot set CHAP credentials: {self._error()}")

        # The TCP handshake has no PDU timeout: bound it by SYN retries
        # (each doubles the wait: 1 retry ~3 s, 2 ~7 s, 3 ~15 s).
        remaining = self._remaining()
        syn_retries = 1
        while syn_retries < 6 and 2 ** (syn_retries + 1) - 1 < remaining + PDU_TIMEOUT_GRACE:
            syn_retries += 1
        lib.iscsi_set_tcp_syncnt(ctx, syn_retries)

        self._arm()
        if lib.iscsi_connect_sync(ctx, portal.encode()) != 0:
            detail = self._error()
            self._healthy = False
            raise _diagnose_connect(portal=portal, detail=detail, timeout=self._remaining())
        self._arm()
        if lib.iscsi_login_sync(ctx) != 0:
            self._healthy = False
            raise _login_error(self._error())
        self._logged_in = True

    # -- commands ----------------------------------------------------------

    def discover(self) -> list[DiscoveredTarget]:
        """SendTargets=All on a DISCOVERY session."""
        lib, ctx = self._lib, self._context()
        self._arm()
        head = lib.iscsi_discovery_sync(ctx)
        if not head:
            self._healthy = False
            raise _transport_error("SendTargets discovery", self._error())
        try:
            found = []
            node = head
            while node:
                address = node.contents
                portals = []
                portal = address.portals
                while portal:
                    if portal.contents.portal is not None:
                        portals.append(portal.contents.portal.decode(errors="replace"))
                    portal = portal.contents.next
                if address.target_name is not None:
                    found.append(
                        DiscoveredTarget(
                            name=address.target_name.decode(errors="replace"),
                            portals=tuple(portals),
                        )
                    )
                node = address.next
            return found
        finally:
            lib.iscsi_free_discovery_data(ctx, head)

    def test_unit_ready(self, lun: int) -> None:
        """TEST UNIT READY; raises :class:`CheckCondition` (e.g. NOT READY)."""
        self._command(
            "TEST UNIT READY", lun, lambda ctx: self._lib.iscsi_testunitready_sync(ctx, lun)
        )

    def read_capacity(self, lun: int) -> Capacity:
        """READ CAPACITY(16) of ``lun``."""
        data = self._command(
            "READ CAPACITY(16)", lun, lambda ctx: self._lib.iscsi_readcapacity16_sync(ctx, lun)
        )
        if len(data) < 12:
            raise CommandFailed(f"READ CAPACITY(16) on LUN {lun}: short answer ({len(data)} bytes)")
        last_lba = int.from_bytes(data[0:8], "big")
        block_size = int.from_bytes(data[8:12], "big")
        return Capacity(blocks=last_lba + 1, block_size=block_size)

    def report_luns(self) -> list[int]:
        """REPORT LUNS (select report 0): the target's LUN numbers, sorted.

        Peripheral and flat-space addressed LUNs are decoded; other address
        methods (rare, hierarchical) are skipped.
        """
        alloc = _INITIAL_REPORT_LUNS_BYTES
        while True:
            data = self._command(
                "REPORT LUNS",
                0,
                functools.partial(self._report_luns_task, alloc=alloc),
            )
            if len(data) < 8:
                raise CommandFailed(f"REPORT LUNS: short answer ({len(data)} bytes)")
            needed = 8 + int.from_bytes(data[0:4], "big")
            if needed <= len(data) or alloc >= _MAX_REPORT_LUNS_BYTES:
                break
            alloc = min(needed, _MAX_REPORT_LUNS_BYTES)
        luns = set()
        for offset in range(8, min(needed, len(data)) - 7, 8):
            method = data[offset] >> 6
            if method == 0 and data[offset] & 0x3F == 0:  # peripheral, bus 0
                luns.add(data[offset + 1])
            elif method == 1:  # flat space
                luns.add(((data[offset] & 0x3F) << 8) | data[offset + 1])
        return sorted(luns)

    def _report_luns_task(self, ctx: int, *, alloc: int) -> Any:
        return self._lib.iscsi_reportluns_sync(ctx, 0, alloc)

    def device_type(self, lun: int) -> DeviceType:
        """Standard INQUIRY byte 0 of ``lun``."""
        data = self._command(
            "INQUIRY", lun, lambda ctx: self._lib.iscsi_inquiry_sync(ctx, lun, 0, 0, 36)
        )
        if not data:
            raise CommandFailed(f"INQUIRY on LUN {lun}: empty answer")
        return DeviceType(qualifier=data[0] >> 5, device_type=data[0] & 0x1F)

    def write_protected(self, lun: int) -> bool:
        """The WP bit of MODE SENSE(6)'s device-specific parameter (block devices)."""
        data = self._command(
            "MODE SENSE(6)",
            lun,
            lambda ctx: self._lib.iscsi_modesense6_sync(ctx, lun, 1, 0, 0x3F, 0, 255),
        )
        if len(data) < 4:
            raise CommandFailed(f"MODE SENSE(6) on LUN {lun}: short answer ({len(data)} bytes)")
        return bool(data[2] & 0x80)

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        """Log out (best effort, only on a healthy session with time left) and free."""
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            return
        try:
            if self._logged_in and self._healthy and not self._given_up():
                self._lib.iscsi_set_timeout(ctx, 1)
                self._lib.iscsi_logout_sync(ctx)
        finally:
            self._lib.iscsi_destroy_context(ctx)

    # -- internals ---------------------------------------------------------

    def _context(self) -> int:
        if self._ctx is None:
            raise CommandFailed("iSCSI session already closed")
        return self._ctx

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _given_up(self) -> bool:
        return (self._abandoned is not None and self._abandoned.is_set()) or self._remaining() <= 0

    def _arm(self) -> None:
        """Stop if the caller gave up; else give the next PDU the time left (+ grace)."""
        if self._abandoned is not None and self._abandoned.is_set():
            raise CommandTimedOut("the caller stopped waiting")
        remaining = self._remaining()
        if remaining <= 0:
            raise CommandTimedOut("deadline passed")
        self._lib.iscsi_set_timeout(self._context(), math.ceil(remaining) + PDU_TIMEOUT_GRACE)

    def _error(self) -> str:
        ctx = self._ctx
        message = self._lib.iscsi_get_error(ctx) if ctx is not None else None
        return message.decode(errors="replace").strip() if message else "unknown error"

    def _command(self, name: str, lun: int, issue: Callable[[int], Any]) -> bytes:
        """Run one SCSI command; returns its data-in bytes.

        Case 1: no task (transport failure or PDU timeout) -> CommandTimedOut
        or CommandFailed, and the session is marked unusable.
        Case 2: CHECK CONDITION with UNIT ATTENTION -> retried (a fresh session
        reports "power on / bus reset" once per LUN).
        Case 3: other CHECK CONDITION -> CheckCondition with decoded sense.
        Case 4: another non-GOOD status (BUSY, RESERVATION CONFLICT) -> CommandFailed.
        """
        for _ in range(UNIT_ATTENTION_RETRIES):
            self._arm()
            task = issue(self._context())
            if not task:
                self._healthy = False
                raise _transport_error(f"{name} on LUN {lun}", self._error())
            try:
                contents = task.contents
                status = contents.status
                if status == _STATUS_GOOD:
                    size = max(0, contents.datain.size)
                    return bytes(contents.datain.data[:size]) if size else b""
                if status == _STATUS_CHECK_CONDITION:
                    code = contents.sense.ascq
                    sense = Sense(key=contents.sense.key, asc=(code >> 8) & 0xFF, ascq=code & 0xFF)
                    if sense.key == SENSE_UNIT_ATTENTION:
                        continue
                    raise CheckCondition(command=name, lun=lun, sense=sense)
                raise CommandFailed(f"{name} on LUN {lun}: SCSI status 0x{status:x}")
            finally:
                self._lib.scsi_free_scsi_task(task)
        raise CommandFailed(
            f"{name} on LUN {lun}: still UNIT ATTENTION after {UNIT_ATTENTION_RETRIES} tries"
        )


def _transport_error(what: str, detail: str) -> base.BackendError:
    if "timed out" in detail:
        return CommandTimedOut(f"{what}: {detail}")
    return CommandFailed(f"{what}: {detail}")


def _login_error(detail: str) -> base.BackendError:
    """Classify libiscsi's login failure message."""
    if "timed out" in detail:
        return CommandTimedOut(f"login: {detail}")
    match = _LOGIN_STATUS.search(detail)
    if match is None:
        return LoginFailed(status=-1, status_text="", detail=detail)
    return LoginFailed(
        status=int(match.group("code")), status_text=match.group("text").strip(), detail=detail
    )


def split_portal(portal: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``; raises ValueError."""
    host, sep, port = portal.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not host:port: {portal!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _diagnose_connect(*, portal: str, detail: str, timeout: float) -> base.BackendError:
    """Why libiscsi could not connect, found with a plain TCP connect.

    libiscsi reports a refused connection as a generic service failure, which
    no operator can act on; the kernel's errno can.
    """
    try:
        host, port = split_portal(portal)
    except ValueError:
        return ConnectFailed(
            portal=portal, reason=f"cannot be connected to: {detail}", detail=detail
        )
    if timeout <= 0:
        return CommandTimedOut(f"connect to {portal}: deadline passed")
    try:
        with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
            pass
    except ConnectionRefusedError:
        return ConnectFailed(portal=portal, reason="refused the connection", detail=detail)
    except TimeoutError:
        return ConnectFailed(
            portal=portal, reason=f"did not answer within {min(timeout, 5.0):.3g}s", detail=detail
        )
    except socket.gaierror as exc:
        return ConnectFailed(
            portal=portal, reason=f"cannot be resolved: {exc.strerror or exc}", detail=detail
        )
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return ConnectFailed(portal=portal, reason="is unreachable", detail=detail)
        return ConnectFailed(
            portal=portal, reason=f"cannot be connected to: {exc.strerror or exc}", detail=detail
        )
    # The portal accepts TCP now: it was a transient failure or libiscsi's own.
    return ConnectFailed(portal=portal, reason=f"connection failed: {detail}", detail=detail)
