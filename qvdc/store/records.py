"""What callers of the store pass and get back: rows, transaction parts, leases, errors.

Plain values with no etcd client behind them, so they can be built, compared
and matched in code and tests that never open a connection. Every key here is
relative to the configured prefix. ``qvdc.store.etcd`` re-exports them all.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """etcd cannot be reached (connection refused, stream removed, no leader)."""


class StoreTimeout(StoreUnavailable):
    """An etcd request did not finish within its timeout."""


class Compacted(StoreError):
    """A watch asked for a revision etcd has compacted away; re-list."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted; oldest available is {compact_revision}")
        self.compact_revision = compact_revision


class LeaseExpired(StoreError):
    """The lease is gone (expired or revoked): grant a new one and rewrite its keys."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:x} not found (expired or revoked)")
        self.lease_id = lease_id


@dataclasses.dataclass(frozen=True, slots=True)
class KeyValue:
    key: str  # relative to the prefix
    value: bytes
    mod_revision: int
    create_revision: int
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str  # relative to the prefix
    value: bytes  # b"" for deletes
    mod_revision: int
    create_revision: int = 0  # 0 for deletes
    version: int = 0  # 0 for deletes; 1 for a put that created the key


@dataclasses.dataclass(frozen=True, slots=True)
class Compare:
    key: str
    target: Literal["mod_revision", "version", "value"]
    op: Literal["==", "!=", "<", ">"]
    operand: int | bytes

    @staticmethod
    def mod_revision(key: str, revision: int) -> Compare:
        """The key's mod_revision equals ``revision`` (0: the key is absent)."""
        return Compare(key, "mod_revision", "==", revision)

    @staticmethod
    def absent(key: str) -> Compare:
        return Compare(key, "version", "==", 0)

    @staticmethod
    def present(key: str) -> Compare:
        return Compare(key, "version", ">", 0)


@dataclasses.dataclass(frozen=True, slots=True)
class Op:
    kind: Literal["put", "delete"]
    key: str
    value: bytes = b""
    lease: int | None = None

    @staticmethod
    def put(key: str, value: bytes, *, lease: int | None = None) -> Op:
        return Op("put", key, value, lease)

    @staticmethod
    def delete(key: str) -> Op:
        return Op("delete", key)


@dataclasses.dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclasses.dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: int
