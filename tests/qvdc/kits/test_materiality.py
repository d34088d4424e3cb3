"""``is_material_change``: every non-capacity field, and the capacity threshold, which is
``fraction`` of the total or ``min_bytes``, whichever is smaller, exceeded strictly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qvdc.domain.model import Health, PoolId, PoolReport
from qvdc.kits import materiality

GIB = 1024**3
FRACTION = 0.01


def base(total: int) -> PoolReport:
    return PoolReport(
        pool_id=PoolId("p"),
        health=Health.HEALTHY,
        total_bytes=total,
        used_bytes=total // 4,
        available_bytes=total - total // 4,
        mount_path="/mnt/p",
        volume_count=2,
        error_message="",
    )


SMALL = 10 * GIB  # 1 % = 102.4 MiB < 1 GiB: the fraction rules
SMALL_T = int(SMALL * FRACTION)
LARGE = 1024 * GIB  # 1 % = 10.24 GiB > 1 GiB: the byte floor rules
LARGE_T = GIB


@pytest.mark.parametrize(
    ("old", "new", "material"),
    [
        pytest.param(None, base(SMALL), True, id="no-previous"),
        pytest.param(base(SMALL), base(SMALL), False, id="identical"),
        # Non-capacity fields: any change is material.
        pytest.param(base(SMALL), replace(base(SMALL), health=Health.DEGRADED), True, id="health"),
        pytest.param(base(SMALL), replace(base(SMALL), mount_path="/other"), True, id="mount-path"),
        pytest.param(base(SMALL), replace(base(SMALL), error_message="x"), True, id="error"),
        pytest.param(base(SMALL), replace(base(SMALL), volume_count=3), True, id="volume-count"),
        # Small pool: the 1 % threshold is the smaller one.
        pytest.param(
            base(SMALL),
            replace(base(SMALL), used_bytes=base(SMALL).used_bytes + SMALL_T),
            False,
            id="small-used-exactly-1pct",
        ),
        pytest.param(
            base(SMALL),
            replace(base(SMALL), used_bytes=base(SMALL).used_bytes + SMALL_T + 1),
            True,
            id="small-used-over-1pct",
        ),
        pytest.param(
            base(SMALL),
            replace(base(SMALL), available_bytes=base(SMALL).available_bytes - SMALL_T - 1),
            True,
            id="small-available-over-1pct",
        ),
        # Large pool: the 1 GiB threshold is the smaller one.
        pytest.param(
            base(LARGE),
            replace(base(LARGE), used_bytes=base(LARGE).used_bytes + LARGE_T),
            False,
            id="large-used-exactly-1gib",
        ),
        pytest.param(
            base(LARGE),
            replace(base(LARGE), used_bytes=base(LARGE).used_bytes + LARGE_T + 1),
            True,
            id="large-used-over-1gib-under-1pct",
        ),
        pytest.param(
            base(LARGE),
            replace(base(LARGE), total_bytes=LARGE + LARGE_T + 1),
            True,
            id="large-total-over-1gib",
        ),
        pytest.param(
            base(LARGE),
            replace(base(LARGE), available_bytes=base(LARGE).available_bytes + LARGE_T),
            False,
            id="large-available-exactly-1gib",
        ),
        # An empty pool: the threshold is 0, so any byte moved is material.
        pytest.param(base(0), replace(base(0), used_bytes=1), True, id="zero-total-any-move"),
    ],
)
def test_is_material_change(old: PoolReport | None, new: PoolReport, material: bool) -> None:
    assert materiality.is_material_change(old, new, fraction=FRACTION, min_bytes=GIB) is material


@pytest.mark.parametrize(
    ("total", "threshold"),
    [
        pytest.param(SMALL, SMALL_T, id="fraction-smaller"),
        pytest.param(LARGE, GIB, id="bytes-smaller"),
        pytest.param(0, 0, id="empty"),
    ],
)
def test_capacity_threshold(total: int, threshold: int) -> None:
    assert materiality.capacity_threshold(total, fraction=FRACTION, min_bytes=GIB) == threshold


def test_defaults_are_one_percent_or_one_gib() -> None:
    old = base(LARGE)
    assert not materiality.is_material_change(old, replace(old, used_bytes=old.used_bytes + GIB))
    assert materiality.is_material_change(old, replace(old, used_bytes=old.used_bytes + GIB + 1))
