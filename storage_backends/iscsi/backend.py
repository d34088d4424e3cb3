"""The iSCSI backend itself: discover, log in, probe over libiscsi, log out.

The design and the health rules are in the package docstring
(:mod:`storage_backends.iscsi`); configs and failure messages are in
:mod:`storage_backends.iscsi.targets`, logins in :mod:`storage_backends.iscsi.initiators`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from storage_backends import _exec, _libiscsi, base, configs
from storage_backends.iscsi import initiators, targets
from storage_backends.iscsi.targets import KIND, IscsiConfig, parse_config

logger = logging.getLogger(__name__)

T = TypeVar("T")


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
        initiator: initiators.Initiator | None = None,
        initiator_name: str | None = None,
    ) -> None:
        if initiator_name is not None:
            if not configs.is_iscsi_name(initiator_name):
                raise base.InvalidConfig(
                    f"iscsi initiator_name must be an iSCSI name, got {initiator_name!r}"
                )
            name = initiator_name
        else:
            host_name = targets.host_initiator_name()
            name = (
                host_name
                if host_name and configs.is_iscsi_name(host_name)
                else targets.DEFAULT_INITIATOR_NAME
            )
        self.initiator_name = name
        self.initiator: initiators.Initiator = (
            initiator
            if initiator is not None
            else initiators.default_initiator(initiator_name=name)
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
            message = targets.describe_failure(
                exc, config=config, initiator_name=self.initiator_name
            )
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
            raise targets.translate(
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
                raise targets.LunUnusable(
                    _unusable_lun_message(config, luns=luns, data_luns=data_luns)
                )
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
        return base.pool_info(spec, kind=self.kind, health=health, mount_path=device_path, **fields)


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
