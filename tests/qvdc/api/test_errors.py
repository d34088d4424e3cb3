"""The one error boundary: every domain error class has its status, nothing else leaks."""

from __future__ import annotations

import logging

import pytest
from grpclib.const import Status

from qvdc.api import errors as api_errors
from qvdc.domain import errors


def _subclasses(cls: type[errors.DomainError]) -> set[type[errors.DomainError]]:
    found: set[type[errors.DomainError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


DOMAIN_ERRORS = sorted(_subclasses(errors.DomainError), key=lambda c: c.__name__)


def test_the_domain_has_errors_to_map() -> None:
    assert {c.__name__ for c in DOMAIN_ERRORS} >= {
        "InvalidArgument",
        "NotFound",
        "AlreadyExists",
        "FailedPrecondition",
        "Unavailable",
        "DeadlineExceeded",
        "Conflict",
    }


@pytest.mark.parametrize("cls", DOMAIN_ERRORS, ids=lambda c: c.__name__)
def test_every_domain_error_is_mapped_to_its_own_status(cls: type[errors.DomainError]) -> None:
    """A new domain error without a status would be answered INTERNAL: this fails first."""
    error = api_errors.to_grpc_error(cls("what went wrong", field="spec.x"), method="M")
    assert error.status != Status.INTERNAL
    assert error.status.name == cls.code
    assert error.message == "spec.x: what went wrong"


@pytest.mark.parametrize(
    ("exc", "logged"),
    [
        pytest.param(errors.Unavailable("etcd down"), "M: etcd down", id="unavailable"),
        pytest.param(errors.DeadlineExceeded("too late"), "M: too late", id="deadline"),
    ],
)
def test_expected_trouble_is_logged_once_without_a_traceback(
    exc: errors.DomainError, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qvdc.api")
    api_errors.to_grpc_error(exc, method="M")
    records = [r for r in caplog.records if r.name == "qvdc.api.errors"]
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in records] == [
        (logging.INFO, logged, None)
    ]


def test_a_bad_request_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="qvdc.api")
    api_errors.to_grpc_error(errors.InvalidArgument("is required", field="name"), method="M")
    assert not [r for r in caplog.records if r.name == "qvdc.api.errors"]


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(RuntimeError("bug"), id="bug"),
        pytest.param(TimeoutError(), id="bare-timeout"),
        pytest.param(OSError("disk"), id="os-error"),
    ],
)
def test_anything_else_is_internal_and_logged_with_its_traceback(
    exc: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qvdc.api")
    error = api_errors.to_grpc_error(exc, method="GetPool")
    assert error.status == Status.INTERNAL
    assert error.message == "internal error in GetPool; see the controller log"
    records = [r for r in caplog.records if r.name == "qvdc.api.errors"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None and records[0].exc_info[1] is exc
