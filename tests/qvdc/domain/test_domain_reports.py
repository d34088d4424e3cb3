"""qvdc.domain.reports: which host reports can be true, table and property tests."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qvdc.domain.model import Health, PoolId, PoolReport
from qvdc.domain.reports import UINT64_MAX, checked, inconsistency

GIB = 1024**3


def report(**fields: object) -> PoolReport:
    base: dict[str, object] = {
        "pool_id": PoolId("p"),
        "health": Health.HEALTHY,
        "total_bytes": 100 * GIB,
        "used_bytes": 40 * GIB,
        "available_bytes": 60 * GIB,
        "volume_count": 3,
    }
    base.update(fields)
    return PoolReport(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({}, None),
        ({"total_bytes": 0, "used_bytes": 0, "available_bytes": 0}, None),
        ({"used_bytes": 100 * GIB, "available_bytes": 0}, None),  # full is fine
        # reserved blocks: used + available may be less than total, never more per field
        ({"used_bytes": 10, "available_bytes": 10, "total_bytes": 100}, None),
        ({"used_bytes": 101 * GIB}, "used 108447924224 B is more than total 107374182400 B"),
        ({"available_bytes": 101 * GIB}, "available 108447924224 B is more than total"),
        ({"total_bytes": UINT64_MAX + 1}, "total_bytes 18446744073709551616 is outside"),
        ({"used_bytes": -1}, "used_bytes -1 is outside"),
        ({"volume_count": 2**32}, "volume_count 4294967296 is outside"),
        ({"health": 999}, "health 999 is not a known value"),
        ({"health": -1}, "health -1 is not a known value"),
        ({"health": 4}, None),  # UNMOUNTED as a plain int is a member
        ({"total_bytes": UINT64_MAX, "used_bytes": UINT64_MAX, "available_bytes": 0}, None),
    ],
)
def test_inconsistency(fields: dict[str, object], reason: str | None) -> None:
    got = inconsistency(report(**fields))
    if reason is None:
        assert got is None
    else:
        assert got is not None and got.startswith(reason)


def test_an_inconsistent_report_becomes_an_error_row_that_counts_no_capacity() -> None:
    bad = checked(report(used_bytes=12, total_bytes=10, available_bytes=0))
    assert bad.health is Health.ERROR
    assert (bad.total_bytes, bad.used_bytes, bad.available_bytes) == (0, 0, 0)
    assert (
        bad.error_message == "inconsistent report from the host: used 12 B is more than total 10 B"
    )
    assert bad.pool_id == "p"


def test_a_consistent_report_is_returned_unchanged() -> None:
    good = report()
    assert checked(good) is good


capacities = st.integers(min_value=-(2**70), max_value=2**70)


@given(total=capacities, used=capacities, available=capacities, health=st.sampled_from(Health))
def test_a_checked_report_always_fits_uint64_and_is_consistent(
    total: int, used: int, available: int, health: Health
) -> None:
    out = checked(
        report(total_bytes=total, used_bytes=used, available_bytes=available, health=health)
    )
    assert inconsistency(out) is None
    for value in (out.total_bytes, out.used_bytes, out.available_bytes):
        assert 0 <= value <= UINT64_MAX
    assert out.used_bytes <= out.total_bytes and out.available_bytes <= out.total_bytes
    consistent = 0 <= used <= total <= UINT64_MAX and 0 <= available <= total
    assert (out.health is health) == consistent or (not consistent and health is Health.ERROR)
    if not consistent:
        assert out.health is Health.ERROR and out.error_message


@given(health=st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_a_health_that_is_no_member_is_never_healthy(health: int) -> None:
    got = checked(report(health=health))
    if health in {h.value for h in Health}:
        assert got.health == health
    else:
        assert got.health is Health.ERROR
        assert f"health {health}" in got.error_message
