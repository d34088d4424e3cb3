"""Desired-versus-reported pool diffs and the material-report filter."""

from __future__ import annotations

import pytest

from qvdc.domain import assignment
from qvdc.domain.model import Health, PoolId, PoolReport

GIB = 1024**3


def ids(*names: str) -> frozenset[PoolId]:
    return frozenset(PoolId(name) for name in names)


@pytest.mark.parametrize(
    ("desired", "reported", "missing", "unexpected"),
    [
        pytest.param(ids(), ids(), (), (), id="nothing"),
        pytest.param(ids("a", "b"), ids("a", "b"), (), (), id="in-sync"),
        pytest.param(ids("c", "a", "b"), ids("b"), ("a", "c"), (), id="missing-sorted"),
        pytest.param(ids(), ids("z", "y"), (), ("y", "z"), id="unexpected-sorted"),
        pytest.param(ids("a", "b"), ids("b", "c"), ("a",), ("c",), id="both"),
    ],
)
def test_diff_assignments(
    desired: frozenset[PoolId],
    reported: frozenset[PoolId],
    missing: tuple[str, ...],
    unexpected: tuple[str, ...],
) -> None:
    assert assignment.diff_assignments(desired=desired, reported=reported) == (
        assignment.AssignmentDiff(missing=missing, unexpected=unexpected)  # type: ignore[arg-type]
    )


def report(pool: str, **changes: object) -> PoolReport:
    fields: dict[str, object] = {
        "pool_id": PoolId(pool),
        "health": Health.HEALTHY,
        "total_bytes": 100 * GIB,
        "used_bytes": 40 * GIB,
        "available_bytes": 60 * GIB,
        "mount_path": f"/mnt/{pool}",
        "volume_count": 3,
        "error_message": "",
    }
    fields.update(changes)
    return PoolReport(**fields)  # type: ignore[arg-type]


PREVIOUS = {PoolId("a"): report("a"), PoolId("b"): report("b")}


@pytest.mark.parametrize(
    ("reports", "expected"),
    [
        pytest.param([report("a"), report("b")], [], id="unchanged-dropped"),
        pytest.param([report("c")], [report("c")], id="first-sighting-material"),
        pytest.param(
            [report("a", used_bytes=40 * GIB + 1000), report("b", health=Health.DEGRADED)],
            [report("b", health=Health.DEGRADED)],
            id="small-drift-dropped-health-change-kept",
        ),
        pytest.param(
            [report("a", used_bytes=42 * GIB)],
            [report("a", used_bytes=42 * GIB)],
            id="capacity-beyond-threshold-kept",
        ),
        pytest.param(
            [report("b", volume_count=4), report("c"), report("a", error_message="x")],
            [report("b", volume_count=4), report("c"), report("a", error_message="x")],
            id="keeps-input-order",
        ),
        pytest.param(
            [report("a", health=Health.ERROR), report("a")],
            [],
            id="duplicate-last-wins-unchanged",
        ),
        pytest.param(
            [report("a"), report("a", health=Health.ERROR)],
            [report("a", health=Health.ERROR)],
            id="duplicate-last-wins-changed",
        ),
    ],
)
def test_material_reports(reports: list[PoolReport], expected: list[PoolReport]) -> None:
    result = assignment.material_reports(
        previous=PREVIOUS, reports=reports, fraction=0.01, min_bytes=GIB
    )
    assert result == expected


def test_material_reports_uses_the_given_thresholds() -> None:
    moved = report("a", used_bytes=41 * GIB)  # 1 GiB moved on a 100 GiB pool
    assert (
        assignment.material_reports(
            previous=PREVIOUS, reports=[moved], fraction=0.01, min_bytes=GIB
        )
        == []
    )
    assert assignment.material_reports(
        previous=PREVIOUS, reports=[moved], fraction=0.001, min_bytes=GIB
    ) == [moved]
    assert assignment.material_reports(
        previous=PREVIOUS, reports=[moved], fraction=0.01, min_bytes=GIB // 2
    ) == [moved]
