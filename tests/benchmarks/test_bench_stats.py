"""The benchmark's arithmetic: percentiles, rates and ratios, lag matching, target checks.

No timing here: every input is a plain number.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.heartbeat import stats


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        pytest.param([], 50, None, id="empty"),
        pytest.param([7.0], 99, 7.0, id="single"),
        pytest.param([1.0, 2.0, 3.0, 4.0], 50, 2.5, id="median-interpolated"),
        pytest.param([3.0, 1.0, 2.0], 50, 2.0, id="unsorted-input"),
        pytest.param([1.0, 2.0, 3.0, 4.0, 5.0], 0, 1.0, id="p0-is-min"),
        pytest.param([1.0, 2.0, 3.0, 4.0, 5.0], 100, 5.0, id="p100-is-max"),
        pytest.param(list(range(1, 101)), 99, 99.01, id="p99-of-1-100"),
    ],
)
def test_percentile_examples(values: list[float], q: float, expected: float | None) -> None:
    result = stats.percentile(values, q)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=200),
    st.floats(min_value=0, max_value=100),
)
def test_percentile_matches_numpy_linear(values: list[float], q: float) -> None:
    expected = float(np.percentile(np.array(values), q, method="linear"))
    assert stats.percentile(values, q) == pytest.approx(expected, rel=1e-9, abs=1e-6)


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        stats.percentile([1.0], q)


def test_rate_and_ratio_are_none_when_undefined() -> None:
    assert stats.rate(100, 4.0) == 25.0
    assert stats.rate(100, 0.0) is None
    assert stats.ratio(8.0, 0.008) == pytest.approx(1000.0)
    assert stats.ratio(8.0, 0.0) is None
    assert stats.ratio(None, 2.0) is None
    assert stats.ratio(2.0, None) is None
    assert stats.ms(0.25) == 250.0
    assert stats.ms(None) is None


def test_write_amplification_arithmetic() -> None:
    """Naive: 8 writes per heartbeat; ours: 0.1 % of 8 reports change -> 1,000x fewer."""
    heartbeats = 100_000
    ours = stats.ratio(800, heartbeats)  # 800 writes for 800 material changes
    naive = stats.ratio(8 * 5_000, 5_000)
    assert ours == pytest.approx(0.008)
    assert naive == 8.0
    assert stats.ratio(naive, ours) == pytest.approx(1000.0)


def _obs(pool: str, at: float, rows: dict[str, tuple[str, int]]) -> stats.Observation:
    return stats.Observation(pool_id=pool, seen_at=at, rows=rows)


def test_match_lags_first_matching_observation_after_sending() -> None:
    changes = [
        stats.Change("p1", "n1", 2, 500, sent_at=10.0),  # DEGRADED, used 500
        stats.Change("p1", "n2", 1, 700, sent_at=10.5),
        stats.Change("p2", "n1", 1, 900, sent_at=11.0),  # never shows up
    ]
    observations = [
        # Before the change was sent: the same values cannot count (it is not this change).
        _obs("p1", 9.0, {"n1": ("DEGRADED", 500)}),
        # After, but the row still shows the old values.
        _obs("p1", 10.05, {"n1": ("HEALTHY", 400), "n2": ("HEALTHY", 600)}),
        _obs("p1", 10.08, {"n1": ("DEGRADED", 500), "n2": ("HEALTHY", 600)}),
        _obs("p1", 10.60, {"n1": ("DEGRADED", 500), "n2": ("HEALTHY", 700)}),
        _obs("p2", 11.2, {"n1": ("HEALTHY", 901)}),
    ]
    result = stats.match_lags(changes, observations)
    assert result.lags == pytest.approx([0.08, 0.10])
    assert result.unobserved == 1


def test_match_lags_with_nothing_observed() -> None:
    result = stats.match_lags([stats.Change("p", "n", 1, 1, 0.0)], [])
    assert result.lags == []
    assert result.unobserved == 1


def test_rows_of_pool_status_reads_the_stored_json() -> None:
    value = json.dumps(
        {
            "phase": "READY",
            "hostStatuses": [
                {"nodeId": "n1", "health": "HEALTHY", "usedBytes": "123"},
                {"nodeId": "n2", "health": "DEGRADED", "usedBytes": "9"},
            ],
        }
    ).encode()
    assert stats.rows_of_pool_status(value) == {"n1": ("HEALTHY", 123), "n2": ("DEGRADED", 9)}
    assert stats.rows_of_pool_status(b"{}") == {}


def _result(**overrides: object) -> dict[str, object]:
    full = {"ratio_to_ceiling": 0.8}
    base: dict[str, object] = {
        "hosts": 100_000,
        "heartbeats_per_s": 12_000.0,
        "ratio_to_ceiling": 0.75,
        "writes_to_changes": 1.0,
        "write_amplification": 900.0,
        "aggregation_lag_p99_ms": 120.0,
        "idle_etcd_writes": 0,
        "controller_rss_mb": 900.0,
        "full_reports": full,
    }
    base.update(overrides)
    return base


def test_evaluate_every_target_passes() -> None:
    assert all(t["holds"] for t in stats.evaluate(_result()))


@pytest.mark.parametrize(
    ("overrides", "failing"),
    [
        ({"heartbeats_per_s": 9_999.0}, "steady state heartbeats/s"),
        ({"ratio_to_ceiling": 0.69}, "steady state / ceiling"),
        ({"full_reports": {"ratio_to_ceiling": 0.5}}, "full reports / ceiling"),
        ({"writes_to_changes": 1.01}, "etcd writes / material changes"),
        ({"write_amplification": 499.0}, "write amplification vs naive"),
        ({"aggregation_lag_p99_ms": 251.0}, "aggregation lag p99 (ms)"),
        ({"idle_etcd_writes": 1}, "writes with no change"),
        ({"controller_rss_mb": 1025.0}, "controller RSS (MB), 100k hosts"),
    ],
)
def test_evaluate_flags_the_failing_target(overrides: dict[str, object], failing: str) -> None:
    verdicts = {t["target"]: t["holds"] for t in stats.evaluate(_result(**overrides))}
    assert verdicts[failing] is False
    assert all(v for name, v in verdicts.items() if name != failing)


def test_evaluate_reports_unmeasured_and_not_applicable_as_none() -> None:
    verdicts = {
        t["target"]: t["holds"]
        for t in stats.evaluate(_result(hosts=10_000, write_amplification=None))
    }
    assert verdicts["write amplification vs naive"] is None
    assert verdicts["controller RSS (MB), 100k hosts"] is None  # applies from 100k hosts


def test_json_safe_replaces_non_finite_numbers() -> None:
    doc = {"a": math.inf, "b": [1.0, math.nan], "c": {"d": -math.inf, "e": 2}}
    assert stats.json_safe(doc) == {"a": None, "b": [1.0, None], "c": {"d": None, "e": 2}}
    json.dumps(stats.json_safe(doc), allow_nan=False)


def test_etcd_stalls_from_two_scrapes() -> None:
    slow = "0.128"
    delta = {
        "etcd_server_slow_apply_total": 2.0,
        "etcd_disk_wal_fsync_duration_seconds_count": 900.0,
        'etcd_disk_wal_fsync_duration_seconds_bucket{le="0.128"}': 897.0,
        "etcd_disk_backend_commit_duration_seconds_count": 300.0,
        'etcd_disk_backend_commit_duration_seconds_bucket{le="0.128"}': 300.0,
    }
    assert stats.etcd_stalls(delta, slow=slow) == {
        "etcd_slow_applies": 2,
        "etcd_slow_fsyncs": 3,
        "etcd_slow_commits": 0,
    }
    assert stats.etcd_stalls({}, slow=slow) == {
        "etcd_slow_applies": 0,
        "etcd_slow_fsyncs": 0,
        "etcd_slow_commits": 0,
    }
