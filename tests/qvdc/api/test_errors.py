"""The one error boundary: every domain error class has its status, nothing else leaks."""

from __future__ import annotations

import logging

import pytest
from grpclib.const import Status

from qvdc.api import errors as api_errors
from qvdc.domain import errors
from qvdc.transport import errors as transport_errors


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


@pytest.fixture(autouse=True)
def fresh_refusal_log(monkeypatch: pytest.MonkeyPatch) -> transport_errors.RefusalLog:
    """Each test starts with full token buckets (the module's log is process-wide)."""
    refusals = transport_errors.RefusalLog(api_errors.log)
    monkeypatch.setattr(api_errors, "_refusals", refusals)
    return refusals


@pytest.mark.parametrize(
    ("exc", "logged"),
    [
        pytest.param(
            errors.Unavailable("etcd down"), "M: UNAVAILABLE: etcd down", id="unavailable"
        ),
        pytest.param(
            errors.DeadlineExceeded("too late"), "M: DEADLINE_EXCEEDED: too late", id="deadline"
        ),
        pytest.param(
            errors.InvalidArgument("is required", field="name"),
            "M: INVALID_ARGUMENT: name: is required",
            id="client-error",
        ),
        pytest.param(errors.NotFound("no pool p1"), "M: NOT_FOUND: no pool p1", id="not-found"),
    ],
)
def test_a_refusal_or_expected_trouble_is_one_info_line_without_a_traceback(
    exc: errors.DomainError, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qvdc.api")
    api_errors.to_grpc_error(exc, method="M")
    records = [r for r in caplog.records if r.name == "qvdc.api.errors"]
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in records] == [
        (logging.INFO, logged, None)
    ]


def test_refusals_are_rate_limited_per_method_and_status(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qvdc.api")
    for _ in range(1000):
        api_errors.to_grpc_error(errors.InvalidArgument("x" * 10_000, field="id"), method="GetPool")
    api_errors.to_grpc_error(errors.NotFound("no pool"), method="GetPool")
    records = [r for r in caplog.records if r.name == "qvdc.api.errors"]
    assert 1 < len(records) <= 12, len(records)
    assert all(len(r.getMessage()) < 300 and r.exc_info is None for r in records)
    assert records[-1].getMessage() == "GetPool: NOT_FOUND: no pool"  # its own bucket


def test_the_first_line_after_a_pause_counts_the_suppressed_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    refusals = transport_errors.RefusalLog(
        logging.getLogger("test.refusals"), burst=2, per_second=1.0, clock=lambda: now[0]
    )
    caplog.set_level(logging.INFO, logger="test.refusals")
    logged = [refusals.refused("M", "INVALID_ARGUMENT", f"no {i}") for i in range(5)]
    assert logged == [True, True, False, False, False]
    now[0] = 1.0
    assert refusals.refused("M", "INVALID_ARGUMENT", "again")
    assert [r.getMessage() for r in caplog.records] == [
        "M: INVALID_ARGUMENT: no 0",
        "M: INVALID_ARGUMENT: no 1",
        "M: INVALID_ARGUMENT: again (and 3 similar lines not logged)",
    ]
    assert not refusals.refused("M", "INVALID_ARGUMENT", "once more")  # 1 s: one token
    assert refusals.refused("M", "NOT_FOUND", "other status, other bucket")


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


@pytest.mark.parametrize("char", ["x", "é", "\U0001f600"])
def test_a_message_quoting_huge_input_is_cut(char: str) -> None:
    """A 1 MiB echo once made a reply header the client refused, breaking its connection."""
    error = api_errors.to_grpc_error(
        errors.NotFound(f"no pool {char * 1_048_576!r}", field="id"), method="GetPool"
    )
    message = error.message or ""
    assert message.startswith("id: no pool '")
    assert len(message.encode()) <= 2 * api_errors.MESSAGE_MAX + 64
    assert message.endswith(f"({1_048_576 + len('id: no pool ') + 2} characters)")
