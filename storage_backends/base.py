"""The one interface every storage backend implements.

A backend turns a pool definition into something mounted on this host and
measures it. It knows nothing of gRPC, etcd or the controller: the node daemon
hands it a :class:`PoolSpec` and gets :class:`PoolInfo` back.

Rules every backend follows (httpcore style):

* every method takes an explicit ``timeout`` (seconds) and honours it;
* blocking calls (statvfs, file writes, libraries without asyncio) run off the
  event loop;
* backends never raise ``OSError``, ``CalledProcessError`` or ``TimeoutError``
  upward: :func:`map_exceptions` turns them into :class:`BackendError`
  subclasses, chaining the original;
* ``probe`` never raises for a pool that is merely unhealthy: it returns a
  :class:`PoolInfo` whose health and ``error_message`` say what is wrong.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from storage_backends import configs

_C = TypeVar("_C")


class PoolHealth(enum.IntEnum):
    """Health of a pool on this host. Values equal the wire's ``HealthStatus``."""

    UNKNOWN = 0
    HEALTHY = 1  # mounted and writable
    DEGRADED = 2  # mounted but (nearly) full or read-only
    ERROR = 3  # unreachable, failing, or the probe timed out
    UNMOUNTED = 4  # expected but not mounted


class BackendKind(enum.StrEnum):
    """Backend names used by the registry and the entry-point group."""

    LOCAL_DIR = "local_dir"
    NFS = "nfs"
    CEPH_RBD = "ceph_rbd"
    ISCSI = "iscsi"


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What a backend needs to attach one pool.

    ``config`` holds the backend's settings with the proto field names
    (``path``, ``capacity_gib`` for local_dir; ``server``, ``export_path``,
    ``version``, ``options``, ``mount_point`` for nfs; ...).
    """

    pool_id: str
    kind: str
    config: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """One measurement of one pool on this host."""

    pool_id: str
    kind: str
    health: PoolHealth
    total_bytes: int = 0
    used_bytes: int = 0
    available_bytes: int = 0
    #: Mount path (local_dir, nfs), device path (iscsi) or ``pool[/namespace]`` (ceph_rbd).
    mount_path: str = ""
    volume_count: int = 0
    error_message: str = ""
    #: Wall-clock Unix time the probe finished.
    probed_at: float = 0.0


def pool_info(
    spec: PoolSpec, *, kind: str, health: PoolHealth, mount_path: str, **fields: Any
) -> PoolInfo:
    """A :class:`PoolInfo` of ``spec``'s pool measured now (``probed_at`` is the wall clock).

    ``fields`` are the other PoolInfo fields (capacity, ``volume_count``,
    ``error_message``); those not given are zero or empty.
    """
    return PoolInfo(
        pool_id=spec.pool_id,
        kind=kind,
        health=health,
        mount_path=mount_path,
        probed_at=time.time(),
        **fields,
    )


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    name: str
    size_bytes: int
    path: str = ""


class BackendError(Exception):
    """Base of everything a backend raises. The message is for operators."""


class BackendTimeout(BackendError):
    """An operation did not finish within its timeout."""


class BackendUnavailable(BackendError):
    """The storage (server, device, path) cannot be reached."""


class MountError(BackendError):
    """Attaching or detaching failed."""


class ProbeError(BackendError):
    """Measuring failed."""


class InvalidConfig(BackendError):
    """The pool's configuration cannot work; retrying will not help."""


def parse_config(parse: Callable[..., _C], config: Mapping[str, Any], /, **options: Any) -> _C:
    """``parse(config, **options)`` (one of the :mod:`storage_backends.configs` parsers),
    its :class:`~storage_backends.configs.ConfigError` raised as :class:`InvalidConfig`
    with the same message (``"nfs.server is required"``)."""
    try:
        return parse(config, **options)
    except configs.ConfigError as exc:
        raise InvalidConfig(str(exc)) from exc


@runtime_checkable
class StorageBackend(Protocol):
    """A storage backend. One instance serves every pool of its kind on a host."""

    kind: str

    def validate(self, spec: PoolSpec) -> None:
        """Raise :class:`InvalidConfig` naming the field if ``spec`` cannot work."""
        ...

    async def attach(self, spec: PoolSpec, *, timeout: float) -> PoolInfo:
        """Make the pool available on this host (idempotent) and measure it."""
        ...

    async def detach(self, spec: PoolSpec, *, timeout: float) -> None:
        """Release the pool (idempotent). Never deletes user data."""
        ...

    async def probe(self, spec: PoolSpec, *, timeout: float) -> PoolInfo:
        """Measure health, capacity and volume count; never raises for an unhealthy pool."""
        ...

    async def list_volumes(self, spec: PoolSpec, *, timeout: float) -> list[VolumeInfo]:
        """The volumes in the pool."""
        ...


_ERRNO_CLASSES: Mapping[int, type[BackendError]] = {
    errno.ENOENT: BackendUnavailable,
    errno.ENOTCONN: BackendUnavailable,
    errno.ECONNREFUSED: BackendUnavailable,
    errno.EHOSTUNREACH: BackendUnavailable,
    errno.ETIMEDOUT: BackendTimeout,
}


@contextlib.contextmanager
def map_exceptions(what: str, default: type[BackendError] = ProbeError) -> Iterator[None]:
    """Translate OS-level failures of ``what`` into :class:`BackendError`, chaining the cause."""
    try:
        yield
    except BackendError:
        raise
    except TimeoutError as exc:
        raise BackendTimeout(f"{what}: timed out") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip() if exc.stderr else ""
        raise default(f"{what}: exit {exc.returncode}{': ' + detail if detail else ''}") from exc
    except OSError as exc:
        cls = _ERRNO_CLASSES.get(exc.errno or 0, default)
        raise cls(f"{what}: {exc.strerror or exc}") from exc
