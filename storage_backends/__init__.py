"""Storage backends: turn a pool definition into mounted storage and measure it.

A library with no gRPC, etcd or controller knowledge (enforced by
import-linter). The node daemon builds one backend per kind with
:func:`get_backend` and calls the :class:`StorageBackend` methods; see
:mod:`storage_backends.base` for the contract and :mod:`storage_backends.registry`
for how kinds (including third-party entry points) are found.
:mod:`storage_backends.configs` is what a valid pool config is, for the backends
and the controller alike.

The names below are loaded on first use (PEP 562), so that the controller, which
imports only the pure :mod:`storage_backends.configs`, does not load every backend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_EXPORTS = {
    "BackendError": "storage_backends.base",
    "BackendKind": "storage_backends.base",
    "BackendTimeout": "storage_backends.base",
    "BackendUnavailable": "storage_backends.base",
    "InvalidConfig": "storage_backends.base",
    "MountError": "storage_backends.base",
    "PoolHealth": "storage_backends.base",
    "PoolInfo": "storage_backends.base",
    "PoolSpec": "storage_backends.base",
    "ProbeError": "storage_backends.base",
    "StorageBackend": "storage_backends.base",
    "VolumeInfo": "storage_backends.base",
    "map_exceptions": "storage_backends.base",
    "available_kinds": "storage_backends.registry",
    "get_backend": "storage_backends.registry",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'storage_backends' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
