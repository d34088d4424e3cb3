"""Domain exceptions: what went wrong, in the caller's terms, with no transport in sight.

Handlers and engines raise these; one module at the API edge (``qvdc/api/errors.py``) maps
them to gRPC status codes, so the rest of the controller never imports grpclib to report a
bad request (one error-translation boundary per edge).

Design points:

* Every error may name the request ``field`` it is about, in protobuf field-path form
  (``spec.backend.local_dir.path``). When it does, the message starts with the field:
  ``"spec.backend.local_dir.path: must be an absolute path"``, so an operator reading only
  the status message knows what to fix.
* ``code`` is the gRPC status *name* (a plain string, not a grpclib enum: the domain layer
  must not import transport code). The API layer may map by class or by this name.
* ``retryable`` tells callers whether trying again unchanged can succeed: true for
  :class:`Unavailable`, :class:`DeadlineExceeded` and :class:`Conflict` (an
  optimistic-concurrency conflict: re-read and retry), false for everything else.
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """Base of every domain error.

    ``DomainError(message, *, field=None)``: ``reason`` is ``message`` as given, ``field`` the
    field path or ``None``, and ``message`` (also ``str(error)``) is ``"<field>: <reason>"``
    when a field is named, else the reason alone.
    """

    code: ClassVar[str] = "UNKNOWN"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.reason = message
        self.field = field
        self.message = f"{field}: {message}" if field else message
        super().__init__(self.message)


class InvalidArgument(DomainError):
    """The request itself is malformed; fixing the request is the only remedy."""

    code = "INVALID_ARGUMENT"


class NotFound(DomainError):
    """A referenced pool or node does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(DomainError):
    """The thing to create exists already (for example a pool with the same name)."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The request is well formed but the system is not in a state that allows it
    (for example an unsupported backend type, or deleting a pool that still has volumes)."""

    code = "FAILED_PRECONDITION"


class Unavailable(DomainError):
    """A dependency (etcd, a host) cannot be reached right now; retrying later may succeed."""

    code = "UNAVAILABLE"
    retryable = True


class DeadlineExceeded(DomainError):
    """The caller's deadline passed before a dependency (etcd) answered.

    Retryable: with more time, or once the dependency is quick again.
    """

    code = "DEADLINE_EXCEEDED"
    retryable = True


class Conflict(DomainError):
    """An optimistic-concurrency conflict: the record changed since it was read.

    Retryable: re-read, re-apply the change, write again.
    """

    code = "ABORTED"
    retryable = True
