"""Client errors to store errors, in one table.

gRPC ``UNAVAILABLE``/``CANCELLED``/``ABORTED`` (the channel closed), an unusable
client and etcd's "too many requests" become :class:`StoreUnavailable`;
``DEADLINE_EXCEEDED`` and our own deadline become :class:`StoreTimeout`; a refused
authentication token becomes :class:`AuthTokenInvalid` (a StoreUnavailable whose
connection is reopened);
everything else etcd rejects becomes :class:`StoreError` with etcd's reason.
Three rejections a caller inside this package handles itself get their own
private types. Exceptions that are not from the client (programming errors)
are returned unchanged, so they propagate as they are.
"""

from __future__ import annotations

import aetcd
from aetcd import rpc

from qvdc.store import records


class RevisionCompacted(records.StoreError):
    """A read or compaction named a compacted revision (handled inside this package)."""


class ResponseTooLarge(records.StoreError):
    """etcd's answer was over the client's receive limit (a listing asks for fewer keys)."""


class AuthTokenInvalid(records.StoreUnavailable):
    """etcd refused the connection's authentication token: open a new connection."""


class LeaseNotFound(records.StoreError):
    """etcd does not know the lease (turned into LeaseExpired by the caller)."""


_UNAVAILABLE_CODES = frozenset({"UNAVAILABLE", "CANCELLED", "ABORTED"})


def kind_of(error: records.StoreError) -> str:
    """A short, bounded name of ``error``'s kind, for the etcd error counter
    (``EtcdStore.error_counts``): timeout, unavailable, compacted, lease_not_found,
    too_large or refused (any other rejection)."""
    if isinstance(error, records.StoreTimeout):
        return "timeout"
    if isinstance(error, records.StoreUnavailable):
        return "unavailable"
    if isinstance(error, RevisionCompacted | records.Compacted):
        return "compacted"
    if isinstance(error, LeaseNotFound | records.LeaseExpired):
        return "lease_not_found"
    if isinstance(error, ResponseTooLarge):
        return "too_large"
    return "refused"


def map_exception(exc: Exception, *, endpoint: str, what: str, limit: float | None) -> Exception:
    """The StoreError for a client exception; other exceptions are returned as they are."""
    if isinstance(exc, records.StoreError):
        return exc
    if isinstance(exc, TimeoutError):
        return records.StoreTimeout(f"{what}: etcd {endpoint} did not answer within {limit} s")
    if isinstance(exc, rpc.AioRpcError):
        code = exc.code().name
        details = exc.details() or ""
        message = f"{what}: etcd {endpoint}: {code}: {details}"
        if code == "DEADLINE_EXCEEDED":
            return records.StoreTimeout(message)
        if code == "UNAUTHENTICATED" and "invalid auth token" in details:
            return AuthTokenInvalid(message)
        if code in _UNAVAILABLE_CODES or "too many requests" in details:
            return records.StoreUnavailable(message)
        if code == "OUT_OF_RANGE" and "compacted" in details:
            return RevisionCompacted(message)
        if code == "RESOURCE_EXHAUSTED" and "larger than max" in details:
            return ResponseTooLarge(message)
        if code == "NOT_FOUND" and "lease not found" in details:
            return LeaseNotFound(message)
        return records.StoreError(message)
    if isinstance(exc, rpc.BaseError):  # e.g. UsageError: the channel was closed under us
        return records.StoreUnavailable(f"{what}: etcd {endpoint}: client unusable: {exc!r}")
    if isinstance(exc, aetcd.RevisionCompactedError):
        return records.Compacted(exc.compacted_revision)
    if isinstance(exc, aetcd.ConnectionTimeoutError):
        return records.StoreTimeout(f"{what}: etcd {endpoint}: {exc}")
    if isinstance(exc, aetcd.ConnectionFailedError):
        return records.StoreUnavailable(f"{what}: etcd {endpoint}: {exc}")
    if isinstance(exc, aetcd.ClientError):
        return records.StoreError(f"{what}: etcd {endpoint}: {exc!r}")
    return exc
