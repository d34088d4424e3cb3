"""Storage backends: turn a pool definition into mounted storage and measure it.

A library with no gRPC, etcd or controller knowledge (enforced by
import-linter). The node daemon builds one backend per kind with
:func:`get_backend` and calls the :class:`StorageBackend` methods; see
:mod:`storage_backends.base` for the contract and :mod:`storage_backends.registry`
for how kinds (including third-party entry points) are found.
"""

from storage_backends.base import (
    BackendError,
    BackendKind,
    BackendTimeout,
    BackendUnavailable,
    InvalidConfig,
    MountError,
    PoolHealth,
    PoolInfo,
    PoolSpec,
    ProbeError,
    StorageBackend,
    VolumeInfo,
    map_exceptions,
)
from storage_backends.registry import available_kinds, get_backend

__all__ = [
    "BackendError",
    "BackendKind",
    "BackendTimeout",
    "BackendUnavailable",
    "InvalidConfig",
    "MountError",
    "PoolHealth",
    "PoolInfo",
    "PoolSpec",
    "ProbeError",
    "StorageBackend",
    "VolumeInfo",
    "available_kinds",
    "get_backend",
    "map_exceptions",
]
