"""An iSCSI pool's target: its validated config, and what failing to reach it means.

Shared by the initiators (which log in) and the backend (which probes), so both
describe a refused portal, a rejected CHAP login or an unknown target the same
way, naming the field an operator must fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

from storage_backends import _libiscsi, base, configs

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


def translate(
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
