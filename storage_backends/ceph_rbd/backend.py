"""The Ceph RBD backend itself: the StorageBackend calls, each bounded and diagnosed.

The design (what attach and probe mean without krbd, the bounds, the diagnosis,
the config fields) is in the package docstring (:mod:`storage_backends.ceph_rbd`).
What runs in the pool's worker thread (the connection and the librados calls) is
:mod:`storage_backends.ceph_rbd.session`; the monitors' reachability is judged in
:mod:`storage_backends.ceph_rbd.diagnosis`. This module runs those calls under the
caller's timeout and words the operator's message when they fail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from storage_backends import _exec, base, configs
from storage_backends.ceph_rbd import diagnosis, session

logger = logging.getLogger(__name__)

T = TypeVar("T")

KIND: Final = base.BackendKind.CEPH_RBD.value

DEFAULT_MON_PORT: Final = configs.CEPH_DEFAULT_MON_PORT
DEFAULT_USER: Final = configs.CEPH_DEFAULT_USER
DEFAULT_PROBE_TIMEOUT: Final = 2.0

BINDINGS_MISSING: Final = (
    "python3-rados not importable (install Debian python3-rados and run "
    "scripts/link-debian-ceph.sh)"
)

#: Seconds (at most) of a call's time spent finding out whether the monitors
#: accept TCP connections, when the call is about to time out.
DIAGNOSIS_BUDGET: Final = 0.5
#: Below this many seconds there is no point in trying (a call given no time).
MIN_DIAGNOSIS: Final = 0.01

# -- configuration ----------------------------------------------------------------


#: One monitor address from ``ceph.monitors``.
Monitor = configs.Monitor
#: A validated ``ceph`` pool config (the proto's CephConfig).
CephPoolConfig = configs.CephRbdConfig


def parse_config(config: Mapping[str, Any], *, have_conf_file: bool) -> CephPoolConfig:
    """Validate a pool's ``ceph`` config; raises InvalidConfig naming the field.

    The rules are :func:`storage_backends.configs.parse_ceph_rbd`, the ones the controller
    applies. ``have_conf_file`` says whether the backend reads a ceph.conf, which may name
    the monitors instead of ``ceph.monitors``.
    """
    return base.parse_config(configs.parse_ceph_rbd, config, monitors_from_conf=have_conf_file)


#: No monitor answered in time (re-exported: raised by attach and list_volumes).
ClusterUnreachable = session.ClusterUnreachable


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[T]):
    """What one bounded run produced: a result, or an error and where it stuck."""

    result: T | None = None
    error: base.BackendError | None = None
    #: The worker's step when the caller stopped waiting.
    step: str = session.IDLE
    #: Per monitor, whether it accepts TCP connections (only checked on trouble).
    reachability: dict[Monitor, diagnosis.Reachability] | None = None


# -- the backend ---------------------------------------------------------------


class CephRbdBackend:
    """RBD pools of Ceph clusters, reached through librados/librbd.

    ``conf_path`` is a ceph.conf to read for every connection (for example
    ``/etc/ceph/ceph.conf``): with it, pools may omit ``ceph.monitors``, and
    any other client settings in it apply; ``ceph.monitors``, when given,
    override its ``mon_host``. ``probe_timeout`` (seconds, default 2; pass the
    node's probe bound) sets librados' connect, monitor and OSD timeouts to
    ``ceil(probe_timeout + 0.5)`` seconds, so a worker thread never outlives
    a timed-out probe by much.
    """

    kind: str = KIND

    def __init__(
        self,
        *,
        conf_path: Path | None = None,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    ) -> None:
        if conf_path is not None and not conf_path.is_absolute():
            raise base.InvalidConfig(f"ceph_rbd conf_path must be absolute, got {conf_path}")
        if not (isinstance(probe_timeout, int | float) and 0 < probe_timeout <= 300):
            raise base.InvalidConfig(
                f"ceph_rbd probe_timeout must be in (0, 300] seconds, got {probe_timeout!r}"
            )
        self._conf_path = conf_path
        self._probe_timeout = float(probe_timeout)
        # librados timeouts: whole seconds (librados rejects fractions), never 0
        # (= no limit), and at least half a second beyond the probe bound: the
        # caller's bound then fires first, deterministically ("probe timed out"
        # rather than a race with librados' ETIMEDOUT), and the abandoned
        # worker returns soon after.
        self._client_timeout = max(1, math.ceil(self._probe_timeout + 0.5))
        self._pools: dict[str, session.PoolState] = {}
        self._workers = _exec.ThreadRunner(name=f"quantix-{KIND}")
        self._connector: session.Client | None = None

    @property
    def client_timeout(self) -> int:
        """The librados connect/monitor/OSD timeout in seconds."""
        return self._client_timeout

    def busy(self, pool_id: str) -> bool:
        """Whether a worker for ``pool_id`` is still running (possibly abandoned)."""
        return self._workers.busy(pool_id)

    # -- configuration -------------------------------------------------------

    def validate(self, spec: base.PoolSpec) -> None:
        """Raise :class:`~storage_backends.base.InvalidConfig` naming the bad field."""
        self._parse(spec)

    def _parse(self, spec: base.PoolSpec) -> CephPoolConfig:
        return parse_config(spec.config, have_conf_file=self._conf_path is not None)

    def _client(self) -> session.Client:
        """How this backend connects; imports ``rados`` and ``rbd`` on first use."""
        if self._connector is None:
            try:
                rados = importlib.import_module("rados")
                rbd = importlib.import_module("rbd")
            except ImportError as exc:
                raise base.BackendUnavailable(BINDINGS_MISSING) from exc
            self._connector = session.Client(
                conf_path=self._conf_path, timeout=self._client_timeout, rados=rados, rbd=rbd
            )
        return self._connector

    # -- StorageBackend ------------------------------------------------------

    async def attach(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        """Connect, check the pool (and namespace) exist, then probe.

        Idempotent: re-attaching reuses the connection (reconnecting if the
        config changed). Raises InvalidConfig, BackendUnavailable (bindings
        missing; :class:`ClusterUnreachable`; the cluster refusing our
        client), MountError (no such pool or namespace, or the monitors
        belong to another cluster than ``cluster_id``) or BackendTimeout. A
        failed attach leaves no connection behind. A probe problem after a
        successful connect is reported in the returned PoolInfo, not raised.
        """
        config = self._parse(spec)
        client = self._client()
        deadline = time.monotonic() + timeout
        state = self._pools.setdefault(spec.pool_id, session.PoolState())
        outcome = await self._run_diagnosed(
            functools.partial(client.open_pool, state=state, config=config),
            key=spec.pool_id,
            state=state,
            config=config,
            timeout=timeout,
        )
        if outcome.error is not None:
            raise self._failure(
                outcome, config=config, timeout=timeout, action=f"attach of {config.location}"
            ) from outcome.error
        if not state.attached:
            logger.info(
                "attached ceph_rbd pool %s: %s in cluster %s as %s",
                spec.pool_id,
                config.location,
                outcome.result,
                config.client_name,
            )
        state.attached = True
        return await self.probe(spec, timeout=max(0.0, deadline - time.monotonic()))

    async def detach(self, spec: base.PoolSpec, *, timeout: float) -> None:
        """Close the pool's connection. Idempotent; never deletes anything.

        The close runs in the pool's worker, after any call still running
        there has returned (librados' own timeouts bound that to a few
        seconds). Should it not return within ``timeout``, the pool is
        forgotten anyway and a warning says its connection stays open until
        the process exits.
        """
        state = self._pools.pop(spec.pool_id, None)
        if state is None:
            return
        was_attached = state.attached
        try:
            await self._workers.run(
                functools.partial(session.close_worker, state=state),
                key=spec.pool_id,
                timeout=timeout,
                what=f"detach ceph_rbd pool {spec.pool_id}",
            )
        except base.BackendTimeout:
            logger.warning(
                "detached ceph_rbd pool %s but could not close its connection within %gs: "
                "a call is still %s",
                spec.pool_id,
                timeout,
                state.step,
            )
            return
        if was_attached:
            logger.info("detached ceph_rbd pool %s", spec.pool_id)

    async def probe(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        """Measure health, capacity and volume count; never raises (but InvalidConfig).

        A pool that is not attached is UNMOUNTED; a failure to measure is
        ERROR with the reason (see :meth:`_failure`).
        """
        config = self._parse(spec)
        error = functools.partial(self._error_info, spec=spec, config=config)
        state = self._pools.get(spec.pool_id)
        if state is None or not state.attached:
            return error(
                health=base.PoolHealth.UNMOUNTED,
                message=f"{config.location} is not attached on this host",
            )
        try:
            client = self._client()
        except base.BackendUnavailable as exc:
            return error(message=str(exc))
        outcome = await self._run_diagnosed(
            functools.partial(client.measure, spec=spec, state=state, config=config),
            key=spec.pool_id,
            state=state,
            config=config,
            timeout=timeout,
        )
        if outcome.result is not None:
            return outcome.result
        failure = self._failure(outcome, config=config, timeout=timeout, action="probe")
        return error(message=str(failure))

    async def list_volumes(self, spec: base.PoolSpec, *, timeout: float) -> list[base.VolumeInfo]:
        """The RBD images in the pool (namespace), with their sizes, sorted by name.

        Raises BackendUnavailable (not attached, bindings missing, cluster
        unreachable), BackendTimeout or ProbeError.
        """
        config = self._parse(spec)
        state = self._pools.get(spec.pool_id)
        if state is None or not state.attached:
            raise base.BackendUnavailable(f"{config.location} is not attached on this host")
        client = self._client()
        outcome = await self._run_diagnosed(
            functools.partial(client.list_images, state=state, config=config),
            key=spec.pool_id,
            state=state,
            config=config,
            timeout=timeout,
        )
        if outcome.error is not None:
            raise self._failure(
                outcome,
                config=config,
                timeout=timeout,
                action=f"listing volumes of {config.location}",
            ) from outcome.error
        return sorted(outcome.result or [], key=lambda v: v.name)

    # -- running bounded work ------------------------------------------------

    async def _run_diagnosed(
        self,
        fn: Callable[[threading.Event], T],
        *,
        key: str,
        state: session.PoolState,
        config: CephPoolConfig,
        timeout: float,
    ) -> _Outcome[T]:
        """Run ``fn`` in the pool's worker under ``timeout``; on trouble, check the monitors.

        Case 1: ``fn`` returns or fails in good time -> its outcome.
        Case 2: ``fn`` has not returned shortly before the deadline -> the
        last :data:`DIAGNOSIS_BUDGET` seconds (at most a quarter of the time)
        are spent finding out, concurrently, whether the monitors accept TCP
        connections, so the failure can be told apart as dead or hung.
        Case 3: ``fn`` failed early because librados timed out talking to the
        monitors -> the same check, in the time left.
        Never raises BackendError; CancelledError passes (the worker is then
        abandoned, not stopped).
        """
        deadline = time.monotonic() + timeout
        budget = min(DIAGNOSIS_BUDGET, timeout / 4)
        reachability: dict[Monitor, diagnosis.Reachability] | None = None
        async with asyncio.TaskGroup() as group:
            attempt = group.create_task(
                self._attempt(fn, key=key, state=state, timeout=timeout),
                name=f"quantix-ceph_rbd:{key}",
            )
            done, _ = await asyncio.wait({attempt}, timeout=max(0.0, timeout - budget))
            if not done and config.monitors and budget >= MIN_DIAGNOSIS:
                reachability = await diagnosis.check_monitors(config.monitors, timeout=budget)
        outcome = attempt.result()
        remaining = deadline - time.monotonic()
        if (
            reachability is None
            and isinstance(outcome.error, ClusterUnreachable)
            and config.monitors
            and remaining >= MIN_DIAGNOSIS
        ):
            reachability = await diagnosis.check_monitors(
                config.monitors, timeout=min(DIAGNOSIS_BUDGET, remaining)
            )
        return dataclasses.replace(outcome, reachability=reachability)

    async def _attempt(
        self,
        fn: Callable[[threading.Event], T],
        *,
        key: str,
        state: session.PoolState,
        timeout: float,
    ) -> _Outcome[T]:
        try:
            return _Outcome(result=await self._workers.run(fn, key=key, timeout=timeout, what=key))
        except base.BackendError as exc:
            # The step is read now: the worker may move on once we stopped waiting.
            return _Outcome(error=exc, step=state.step)
        except Exception as exc:  # a bug or an unmapped library error; logged with traceback
            logger.warning("ceph_rbd pool %s: unexpected error", key, exc_info=True)
            error = base.ProbeError(f"unexpected error while {state.step}: {exc!r}")
            return _Outcome(error=error, step=state.step)

    def _failure(
        self, outcome: _Outcome[Any], *, config: CephPoolConfig, timeout: float, action: str
    ) -> base.BackendError:
        """The error (class and operator's message) for a call that failed.

        Case 1: no monitor accepts TCP connections -> ClusterUnreachable
        "Ceph cluster unreachable: monitors ... did not answer within Xs
        (connection refused)", whatever else happened.
        Case 2: librados timed out talking to monitors that do accept
        connections -> ClusterUnreachable, saying they accept connections.
        Case 3: an earlier call's worker is still stuck -> BackendTimeout
        "<action> timed out after Xs: the previous call on <pool> is still
        <step>" (no second worker was started).
        Case 4: the time ran out -> BackendTimeout "<action> timed out after
        Xs while <step>".
        Case 5: the cluster said no (no such pool, permission denied, ...)
        -> that error as it is.
        """
        error = outcome.error or base.ProbeError(f"{action} failed")
        reachability = outcome.reachability or {}
        if reachability and all(r.reachable is False for r in reachability.values()):
            if isinstance(error, ClusterUnreachable):
                message = str(error)
            else:
                message = diagnosis.unreachable_message(
                    config, seconds=timeout, conf_path=self._conf_path
                )
            return ClusterUnreachable(f"{message} ({diagnosis.reachability_detail(reachability)})")
        if isinstance(error, ClusterUnreachable) and reachability:
            return ClusterUnreachable(f"{error} ({diagnosis.reachability_detail(reachability)})")
        if isinstance(error, _exec.WorkerBusy):
            return base.BackendTimeout(
                f"{action} timed out after {timeout:g}s: the previous call on "
                f"{config.location} is still {outcome.step}"
            )
        if isinstance(error, base.BackendTimeout):
            return base.BackendTimeout(
                f"{action} timed out after {timeout:g}s while {outcome.step}"
            )
        return error

    def _error_info(
        self,
        *,
        spec: base.PoolSpec,
        config: CephPoolConfig,
        message: str,
        health: base.PoolHealth = base.PoolHealth.ERROR,
    ) -> base.PoolInfo:
        return base.pool_info(
            spec, kind=self.kind, health=health, mount_path=config.location, error_message=message
        )
