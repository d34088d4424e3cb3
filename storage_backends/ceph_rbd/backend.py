"""The Ceph RBD backend itself: one cluster connection per pool, driven from worker threads.

The design (what attach and probe mean without krbd, the bounds, the diagnosis,
the config fields) is in the package docstring (:mod:`storage_backends.ceph_rbd`);
the cluster's JSON is read in :mod:`storage_backends.ceph_rbd.answers` and the
monitors' reachability judged in :mod:`storage_backends.ceph_rbd.reachability`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import importlib
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final, Generic, TypeVar

from storage_backends import _exec, base, configs
from storage_backends.ceph_rbd import answers, diagnosis

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

_IDLE: Final = "idle"


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


# -- per-pool connection state ----------------------------------------------------


@dataclass(eq=False)
class _PoolState:
    """One pool's cached cluster connection, owned by that pool's worker thread.

    Only worker threads (one at a time per pool, by ThreadRunner) touch
    ``cluster`` and ``ioctx``; the event loop reads ``step`` (a plain string
    swap) to say what a stuck worker is stuck on.
    """

    #: Set once an attach succeeded; probes of a pool not attached say so.
    attached: bool = False
    #: librados handle (``rados.Rados``) and the pool's ``rados.Ioctx``.
    cluster: Any = None
    ioctx: Any = None
    #: The config the handle was opened with (a changed one means reconnect).
    connected_with: CephPoolConfig | None = None
    fsid: str = ""
    #: Set after an error on the handle: the next call reconnects.
    broken: bool = False
    #: What the worker is doing now, for messages about stuck calls. It keeps
    #: the failing step after an error (the caller may read it after the
    #: worker returned) and is reset only after a success.
    step: str = _IDLE


class _Abandoned(base.BackendError):
    """The caller stopped waiting; the worker stops between steps."""


class ClusterUnreachable(base.BackendUnavailable):
    """No monitor of the cluster answered in time (librados ETIMEDOUT, or no TCP connection)."""


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[T]):
    """What one bounded run produced: a result, or an error and where it stuck."""

    result: T | None = None
    error: base.BackendError | None = None
    #: The worker's step when the caller stopped waiting.
    step: str = _IDLE
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
        self._pools: dict[str, _PoolState] = {}
        self._workers = _exec.ThreadRunner(name=f"quantix-{KIND}")
        self._modules: tuple[ModuleType, ModuleType] | None = None

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

    def _bindings(self) -> tuple[ModuleType, ModuleType]:
        """The ``rados`` and ``rbd`` modules, imported on first use."""
        if self._modules is None:
            try:
                self._modules = (
                    importlib.import_module("rados"),
                    importlib.import_module("rbd"),
                )
            except ImportError as exc:
                raise base.BackendUnavailable(BINDINGS_MISSING) from exc
        return self._modules

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
        self._bindings()
        deadline = time.monotonic() + timeout
        state = self._pools.setdefault(spec.pool_id, _PoolState())
        outcome = await self._run_diagnosed(
            functools.partial(self._open_pool, state=state, config=config),
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
                functools.partial(_close_worker, state=state),
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
            self._bindings()
        except base.BackendUnavailable as exc:
            return error(message=str(exc))
        outcome = await self._run_diagnosed(
            functools.partial(self._measure, spec=spec, state=state, config=config),
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
        self._bindings()
        outcome = await self._run_diagnosed(
            functools.partial(self._list_images, state=state, config=config),
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
        state: _PoolState,
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
        state: _PoolState,
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
        return base.PoolInfo(
            pool_id=spec.pool_id,
            kind=self.kind,
            health=health,
            mount_path=config.location,
            error_message=message,
            probed_at=time.time(),
        )

    # -- worker-thread bodies ------------------------------------------------

    def _open_pool(
        self, abandoned: threading.Event, *, state: _PoolState, config: CephPoolConfig
    ) -> str:
        """attach's work: connect, check pool and namespace; returns the cluster fsid.

        On failure the connection is closed, so a failed attach leaves nothing.
        """
        del abandoned  # a few quick calls; each bounded by librados
        try:
            self._ensure_ready(state=state, config=config)
            if config.namespace:
                self._check_namespace(state=state, config=config)
        except BaseException:
            _close(state)
            raise
        state.step = _IDLE
        return state.fsid

    def _measure(
        self,
        abandoned: threading.Event,
        *,
        spec: base.PoolSpec,
        state: _PoolState,
        config: CephPoolConfig,
    ) -> base.PoolInfo:
        """probe's work: health, capacity, volume count. Raises BackendError on failure."""
        try:
            self._ensure_ready(state=state, config=config)
            health_doc = self._mon_json(
                state,
                config,
                {"prefix": "health", "format": "json"},
                step="asking the monitors for cluster health",
            )
            _stop_if(abandoned)
            df_doc = self._mon_json(
                state,
                config,
                {"prefix": "df", "detail": "detail", "format": "json"},
                step="asking the monitors for pool usage (ceph df)",
            )
            _stop_if(abandoned)
            if config.namespace:
                self._check_namespace(state=state, config=config)
                _stop_if(abandoned)
            state.step = f"listing RBD images in {config.location} (waiting for OSDs)"
            with self._translate(config, what=f"listing RBD images in {config.location}"):
                image_names = self._bindings()[1].RBD().list(state.ioctx)
        except _Abandoned:
            raise
        except BaseException:
            state.broken = True
            raise
        state.step = _IDLE

        health, health_message = answers.classify_health(health_doc)
        capacity = answers.pool_capacity(df_doc, pool=config.pool_name)
        messages = [health_message] if health_message else []
        if isinstance(capacity, str):
            messages.append(f"capacity unknown: {capacity}")
            if health is base.PoolHealth.HEALTHY:
                health = base.PoolHealth.DEGRADED
            capacity = answers.Capacity(total=0, used=0, available=0)
        return base.PoolInfo(
            pool_id=spec.pool_id,
            kind=self.kind,
            health=health,
            total_bytes=capacity.total,
            used_bytes=capacity.used,
            available_bytes=capacity.available,
            mount_path=config.location,
            volume_count=len(image_names),
            error_message="; ".join(messages),
            probed_at=time.time(),
        )

    def _list_images(
        self, abandoned: threading.Event, *, state: _PoolState, config: CephPoolConfig
    ) -> list[base.VolumeInfo]:
        """list_volumes' work: every image with its size (one open per image)."""
        rbd = self._bindings()[1]
        prefix = f"{config.location}/"
        volumes = []
        try:
            self._ensure_ready(state=state, config=config)
            state.step = f"listing RBD images in {config.location} (waiting for OSDs)"
            with self._translate(config, what=f"listing RBD images in {config.location}"):
                names = rbd.RBD().list(state.ioctx)
            for name in names:
                _stop_if(abandoned)
                state.step = f"reading the size of RBD image {prefix}{name} (waiting for OSDs)"
                with self._translate(config, what=f"reading RBD image {prefix}{name}"):
                    try:
                        with rbd.Image(state.ioctx, name, read_only=True) as image:
                            size = int(image.size())
                    except rbd.ImageNotFound:  # removed while listing
                        continue
                volumes.append(base.VolumeInfo(name=name, size_bytes=size, path=prefix + name))
        except _Abandoned:
            raise
        except BaseException:
            state.broken = True
            raise
        state.step = _IDLE
        return volumes

    # -- worker-thread helpers -----------------------------------------------

    def _ensure_ready(self, *, state: _PoolState, config: CephPoolConfig) -> None:
        """Connect (or reconnect) if needed, check the pool exists, open its ioctx.

        Case 1: a healthy handle opened with this config -> reuse it.
        Case 2: the handle is broken or was opened with another config ->
        close it and connect afresh.
        Case 3: no handle -> connect.
        Then (always, as it costs no round trip) check the pool is still in
        the cluster's OSD map, and open the ioctx if there is none.
        """
        if state.cluster is not None and (state.broken or state.connected_with != config):
            logger.debug("reconnecting ceph_rbd %s (broken=%s)", config.location, state.broken)
            _close(state)
        if state.cluster is None:
            self._connect(state=state, config=config)
        state.step = f"looking up RBD pool '{config.pool_name}'"
        with self._translate(config, what=f"looking up RBD pool '{config.pool_name}'"):
            exists = bool(state.cluster.pool_exists(config.pool_name))
        if not exists:
            raise base.MountError(
                f"RBD pool '{config.pool_name}' does not exist in cluster {state.fsid}"
            )
        if state.ioctx is None:
            with self._translate(config, what=f"opening RBD pool '{config.pool_name}'"):
                ioctx = state.cluster.open_ioctx(config.pool_name)
                if config.namespace:
                    ioctx.set_namespace(config.namespace)
            state.ioctx = ioctx

    def _connect(self, *, state: _PoolState, config: CephPoolConfig) -> None:
        """Open a librados handle for ``config`` (bounded by client_mount_timeout)."""
        rados = self._bindings()[0]
        state.step = f"connecting to the Ceph monitors {self._monitors_text(config)}"
        options = {
            "client_mount_timeout": str(self._client_timeout),
            "rados_mon_op_timeout": str(self._client_timeout),
            "rados_osd_op_timeout": str(self._client_timeout),
            # librados logs to stderr by default; the node has its own logging.
            "log_to_stderr": "false",
            "err_to_stderr": "false",
        }
        if config.monitors:
            options["mon_host"] = ",".join(str(m) for m in config.monitors)
        if config.keyring_path:
            options["keyring"] = config.keyring_path
        try:
            cluster = rados.Rados(
                name=config.client_name,
                clustername="ceph",
                conffile=str(self._conf_path) if self._conf_path is not None else None,
                conf=options,
            )
        except rados.Error as exc:
            raise base.BackendUnavailable(
                f"cannot set up a Ceph client from {self._conf_path or 'the pool config'}: "
                f"{_describe(exc)}"
            ) from exc
        try:
            with self._translate(config, what=None):
                cluster.connect()
                fsid = str(cluster.get_fsid())
            _check_cluster_id(config, fsid=fsid)
        except BaseException:
            _shutdown(cluster)
            raise
        state.cluster = cluster
        state.fsid = fsid
        state.connected_with = config
        state.broken = False
        logger.debug("connected to Ceph cluster %s as %s", fsid, config.client_name)

    def _check_namespace(self, *, state: _PoolState, config: CephPoolConfig) -> None:
        """Raise MountError if the pool's RBD namespace does not exist (an OSD read)."""
        state.step = f"looking up RBD namespace {config.location} (waiting for OSDs)"
        with self._translate(config, what=f"looking up RBD namespace {config.location}"):
            exists = bool(self._bindings()[1].RBD().namespace_exists(state.ioctx, config.namespace))
        if not exists:
            raise base.MountError(
                f"RBD namespace '{config.namespace}' does not exist in pool "
                f"'{config.pool_name}' of cluster {state.fsid}"
            )

    def _mon_json(
        self, state: _PoolState, config: CephPoolConfig, command: dict[str, str], *, step: str
    ) -> Any:
        """Run a monitor command and parse its JSON output (bounded by rados_mon_op_timeout)."""
        state.step = step
        prefix = command["prefix"]
        with self._translate(config, what=f"Ceph monitor command '{prefix}'"):
            ret, out, outs = state.cluster.mon_command(json.dumps(command), b"")
        if ret == -errno.ETIMEDOUT:
            raise ClusterUnreachable(self._unreachable(config))
        if ret < 0:
            reason = outs or errno.errorcode.get(-ret, str(-ret))
            raise base.ProbeError(f"Ceph monitor command '{prefix}' failed: {reason}")
        try:
            return json.loads(out)
        except ValueError as exc:
            raise base.ProbeError(
                f"Ceph monitor command '{prefix}' returned invalid JSON: {exc}"
            ) from exc

    @contextlib.contextmanager
    def _translate(self, config: CephPoolConfig, *, what: str | None) -> Iterator[None]:
        """Turn rados/rbd errors into BackendErrors an operator can act on.

        ``what`` names the call; None means connecting. Timeouts talking to
        the monitors say the cluster is unreachable; timeouts of OSD requests
        say the OSDs did not answer; permission errors point at user and
        keyring.
        """
        rados, rbd = self._bindings()
        try:
            yield
        except (rados.Error, rbd.Error) as exc:
            code = getattr(exc, "errno", None)
            if code in (errno.ETIMEDOUT, -errno.ETIMEDOUT):
                if what is None or what.startswith("Ceph monitor"):
                    raise ClusterUnreachable(self._unreachable(config)) from exc
                raise base.ProbeError(
                    f"{what} timed out after {self._client_timeout}s: the OSDs did not answer"
                ) from exc
            if code in (errno.EACCES, errno.EPERM, -errno.EACCES, -errno.EPERM):
                raise base.BackendUnavailable(
                    f"Ceph cluster refused {config.client_name}: {_describe(exc)} "
                    "(check ceph.user and ceph.keyring_path)"
                ) from exc
            if what is None:
                raise base.BackendUnavailable(
                    f"cannot connect to the Ceph cluster at {self._monitors_text(config)} "
                    f"as {config.client_name}: {_describe(exc)}"
                ) from exc
            raise base.ProbeError(f"{what} failed: {_describe(exc)}") from exc

    def _unreachable(self, config: CephPoolConfig) -> str:
        return diagnosis.unreachable_message(
            config, seconds=float(self._client_timeout), conf_path=self._conf_path
        )

    def _monitors_text(self, config: CephPoolConfig) -> str:
        return diagnosis.monitors_text(config, conf_path=self._conf_path)


# -- module helpers ---------------------------------------------------------------


def _check_cluster_id(config: CephPoolConfig, *, fsid: str) -> None:
    """A ``cluster_id`` that is a UUID must be the fsid of the cluster we reached.

    It guards against monitors of the wrong cluster (a reused address). Any
    other ``cluster_id`` is a label and is not checked.
    """
    try:
        wanted = uuid.UUID(config.cluster_id)
    except ValueError:
        return
    if wanted != uuid.UUID(fsid):
        monitors = diagnosis.monitors_text(config, conf_path=None)
        raise base.MountError(
            f"monitors {monitors} belong to Ceph cluster {fsid}, "
            f"not to ceph.cluster_id {config.cluster_id}"
        )


def _stop_if(abandoned: threading.Event) -> None:
    """Between steps: stop once the caller has given up on this call."""
    if abandoned.is_set():
        raise _Abandoned("the caller stopped waiting")


def _close(state: _PoolState) -> None:
    """Close the pool's ioctx and handle (worker thread). Errors are logged, not raised."""
    ioctx, state.ioctx = state.ioctx, None
    cluster, state.cluster = state.cluster, None
    state.connected_with = None
    state.broken = False
    if ioctx is not None:
        try:
            ioctx.close()
        except Exception:  # a failing close must not hide why we are closing
            logger.debug("closing a Ceph ioctx failed", exc_info=True)
    if cluster is not None:
        _shutdown(cluster)


def _close_worker(abandoned: threading.Event, *, state: _PoolState) -> None:
    """detach's work."""
    del abandoned  # shutdown is quick, even with the monitors gone (measured)
    state.step = "closing the connection"
    try:
        _close(state)
    finally:
        state.attached = False
        state.step = _IDLE


def _shutdown(cluster: Any) -> None:
    try:
        cluster.shutdown()
    except Exception:  # see _close
        logger.debug("shutting down a Ceph handle failed", exc_info=True)


def _describe(exc: BaseException) -> str:
    """rados/rbd errors read "[errno 2] RADOS object not found (error ...)"; keep that."""
    return str(exc) or type(exc).__name__
