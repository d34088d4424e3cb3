"""One pool's connection to its Ceph cluster, and the calls made on it from worker threads.

Everything here blocks (librados, librbd) and runs in the pool's worker thread
(:class:`storage_backends._exec.ThreadRunner`, driven by
:class:`~storage_backends.ceph_rbd.backend.CephRbdBackend`). A :class:`PoolState`
holds the cached handle; a :class:`Client` is how this node connects (the
ceph.conf it reads, librados' timeouts, the imported bindings) and runs the
three worker bodies: :meth:`Client.open_pool` (attach), :meth:`Client.measure`
(probe) and :meth:`Client.list_images` (list_volumes). Any error on a handle
marks it broken, so the next call reconnects (see :mod:`storage_backends.ceph_rbd`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from storage_backends import base, configs
from storage_backends.ceph_rbd import answers, diagnosis

logger = logging.getLogger(__name__)

KIND: Final = base.BackendKind.CEPH_RBD.value

#: The step of a worker that is doing nothing.
IDLE: Final = "idle"


@dataclass(eq=False)
class PoolState:
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
    connected_with: configs.CephRbdConfig | None = None
    fsid: str = ""
    #: Set after an error on the handle: the next call reconnects.
    broken: bool = False
    #: What the worker is doing now, for messages about stuck calls. It keeps
    #: the failing step after an error (the caller may read it after the
    #: worker returned) and is reset only after a success.
    step: str = IDLE


class Abandoned(base.BackendError):
    """The caller stopped waiting; the worker stops between steps."""


class ClusterUnreachable(base.BackendUnavailable):
    """No monitor of the cluster answered in time (librados ETIMEDOUT, or no TCP connection)."""


@dataclass(frozen=True, slots=True)
class Client:
    """How this node talks to Ceph clusters; its methods run in worker threads.

    ``timeout`` is librados' connect, monitor and OSD timeout in whole seconds;
    ``rados`` and ``rbd`` are the imported binding modules.
    """

    conf_path: Path | None
    timeout: int
    rados: ModuleType
    rbd: ModuleType

    # -- worker-thread bodies (one per backend call) ----------------------------

    def open_pool(
        self, abandoned: threading.Event, *, state: PoolState, config: configs.CephRbdConfig
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
            close(state)
            raise
        state.step = IDLE
        return state.fsid

    def measure(
        self,
        abandoned: threading.Event,
        *,
        spec: base.PoolSpec,
        state: PoolState,
        config: configs.CephRbdConfig,
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
                image_names = self.rbd.RBD().list(state.ioctx)
        except Abandoned:
            raise
        except BaseException:
            state.broken = True
            raise
        state.step = IDLE

        health, health_message = answers.classify_health(health_doc)
        capacity = answers.pool_capacity(df_doc, pool=config.pool_name)
        messages = [health_message] if health_message else []
        if isinstance(capacity, str):
            messages.append(f"capacity unknown: {capacity}")
            if health is base.PoolHealth.HEALTHY:
                health = base.PoolHealth.DEGRADED
            capacity = answers.Capacity(total=0, used=0, available=0)
        return base.pool_info(
            spec,
            kind=KIND,
            health=health,
            total_bytes=capacity.total,
            used_bytes=capacity.used,
            available_bytes=capacity.available,
            mount_path=config.location,
            volume_count=len(image_names),
            error_message="; ".join(messages),
        )

    def list_images(
        self, abandoned: threading.Event, *, state: PoolState, config: configs.CephRbdConfig
    ) -> list[base.VolumeInfo]:
        """list_volumes' work: every image with its size (one open per image)."""
        rbd = self.rbd
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
        except Abandoned:
            raise
        except BaseException:
            state.broken = True
            raise
        state.step = IDLE
        return volumes

    # -- worker-thread helpers -----------------------------------------------

    def _ensure_ready(self, *, state: PoolState, config: configs.CephRbdConfig) -> None:
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
            close(state)
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

    def _connect(self, *, state: PoolState, config: configs.CephRbdConfig) -> None:
        """Open a librados handle for ``config`` (bounded by client_mount_timeout)."""
        rados = self.rados
        state.step = f"connecting to the Ceph monitors {self._monitors_text(config)}"
        options = {
            "client_mount_timeout": str(self.timeout),
            "rados_mon_op_timeout": str(self.timeout),
            "rados_osd_op_timeout": str(self.timeout),
            # librados logs to stderr by default; the node has its own logging.
            "log_to_stderr": "false",
            "err_to_stderr": "false",
        }
        if config.monitors:
            options["mon_host"] = ",".join(str(m) for m in config.monitors)
        if config.keyring_path:
            options["keyring"] = config.keyring_path
        if config.key:  # the pool's write-only key: handed over in memory, no file written
            options["key"] = config.key
        try:
            cluster = rados.Rados(
                name=config.client_name,
                clustername="ceph",
                conffile=str(self.conf_path) if self.conf_path is not None else None,
                conf=options,
            )
        except rados.Error as exc:
            raise base.BackendUnavailable(
                f"cannot set up a Ceph client from {self.conf_path or 'the pool config'}: "
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

    def _check_namespace(self, *, state: PoolState, config: configs.CephRbdConfig) -> None:
        """Raise MountError if the pool's RBD namespace does not exist (an OSD read)."""
        state.step = f"looking up RBD namespace {config.location} (waiting for OSDs)"
        with self._translate(config, what=f"looking up RBD namespace {config.location}"):
            exists = bool(self.rbd.RBD().namespace_exists(state.ioctx, config.namespace))
        if not exists:
            raise base.MountError(
                f"RBD namespace '{config.namespace}' does not exist in pool "
                f"'{config.pool_name}' of cluster {state.fsid}"
            )

    def _mon_json(
        self, state: PoolState, config: configs.CephRbdConfig, command: dict[str, str], *, step: str
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
    def _translate(self, config: configs.CephRbdConfig, *, what: str | None) -> Iterator[None]:
        """Turn rados/rbd errors into BackendErrors an operator can act on.

        ``what`` names the call; None means connecting. Timeouts talking to
        the monitors say the cluster is unreachable; timeouts of OSD requests
        say the OSDs did not answer; permission errors point at user and
        keyring.
        """
        rados, rbd = self.rados, self.rbd
        try:
            yield
        except (rados.Error, rbd.Error) as exc:
            code = getattr(exc, "errno", None)
            if code in (errno.ETIMEDOUT, -errno.ETIMEDOUT):
                if what is None or what.startswith("Ceph monitor"):
                    raise ClusterUnreachable(self._unreachable(config)) from exc
                raise base.ProbeError(
                    f"{what} timed out after {self.timeout}s: the OSDs did not answer"
                ) from exc
            if code in (errno.EACCES, errno.EPERM, -errno.EACCES, -errno.EPERM):
                raise base.BackendUnavailable(
                    f"Ceph cluster refused {config.client_name}: {_describe(exc)} "
                    "(check ceph.user and ceph.keyring_path or ceph.key)"
                ) from exc
            if what is None:
                raise base.BackendUnavailable(
                    f"cannot connect to the Ceph cluster at {self._monitors_text(config)} "
                    f"as {config.client_name}: {_describe(exc)}"
                ) from exc
            raise base.ProbeError(f"{what} failed: {_describe(exc)}") from exc

    def _unreachable(self, config: configs.CephRbdConfig) -> str:
        return diagnosis.unreachable_message(
            config, seconds=float(self.timeout), conf_path=self.conf_path
        )

    def _monitors_text(self, config: configs.CephRbdConfig) -> str:
        return diagnosis.monitors_text(config, conf_path=self.conf_path)


# -- module helpers ---------------------------------------------------------------


def _check_cluster_id(config: configs.CephRbdConfig, *, fsid: str) -> None:
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
        raise Abandoned("the caller stopped waiting")


def close(state: PoolState) -> None:
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


def close_worker(abandoned: threading.Event, *, state: PoolState) -> None:
    """detach's work."""
    del abandoned  # shutdown is quick, even with the monitors gone (measured)
    state.step = "closing the connection"
    try:
        close(state)
    finally:
        state.attached = False
        state.step = IDLE


def _shutdown(cluster: Any) -> None:
    try:
        cluster.shutdown()
    except Exception:  # see _close
        logger.debug("shutting down a Ceph handle failed", exc_info=True)


def _describe(exc: BaseException) -> str:
    """rados/rbd errors read "[errno 2] RADOS object not found (error ...)"; keep that."""
    return str(exc) or type(exc).__name__
