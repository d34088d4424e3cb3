"""The harness's arithmetic: percentiles, rates, ratios, lag matching, target checks.

Pure functions on plain numbers, tested in ``tests/benchmarks`` (no timing).
"Undefined" results (a rate over zero seconds, a ratio to zero) are ``None``,
never a made-up number, and JSON shows them as ``null``.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

HEALTH_NAMES = {0: "UNKNOWN", 1: "HEALTHY", 2: "DEGRADED", 3: "ERROR", 4: "UNMOUNTED"}


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    Same definition as ``numpy.percentile(..., method="linear")``: the value at
    rank ``(n - 1) * q / 100`` of the sorted values. None for no values.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rate(count: float, seconds: float) -> float | None:
    """Events per second; None when no time elapsed."""
    return count / seconds if seconds > 0 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``; None when either is unknown or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


@dataclass(frozen=True, slots=True)
class Change:
    """A material change as a simulated host sent it."""

    pool_id: str
    node_id: str
    health: int
    used_bytes: int
    sent_at: float


@dataclass(frozen=True, slots=True)
class Observation:
    """One ``poolstatus/<pool>`` value seen through the etcd watch, decoded to its host rows."""

    pool_id: str
    seen_at: float
    rows: Mapping[str, tuple[str, int]]  # node id -> (health name, used bytes)


def etcd_stalls(delta: Mapping[str, float], *, slow: str) -> dict[str, int]:
    """Stalls in one phase, from the difference of two ``/metrics`` scrapes: applies etcd
    counted as slow (over 100 ms), and WAL fsyncs and backend commits above ``slow``
    seconds (the histogram's count less its ``le=slow`` bucket)."""

    def above(histogram: str) -> int:
        total = delta.get(f"{histogram}_count", 0.0)
        fast = delta.get(f'{histogram}_bucket{{le="{slow}"}}', 0.0)
        return int(total - fast)

    return {
        "etcd_slow_applies": int(delta.get("etcd_server_slow_apply_total", 0.0)),
        "etcd_slow_fsyncs": above("etcd_disk_wal_fsync_duration_seconds"),
        "etcd_slow_commits": above("etcd_disk_backend_commit_duration_seconds"),
    }


def rows_of_pool_status(value: bytes) -> dict[str, tuple[str, int]]:
    """``{node_id: (health, used_bytes)}`` from a stored ``poolstatus`` JSON value."""
    doc = json.loads(value)
    rows = {}
    for row in doc.get("hostStatuses") or ():
        rows[str(row.get("nodeId", ""))] = (
            str(row.get("health", "UNKNOWN")),
            int(row.get("usedBytes", 0)),
        )
    return rows


@dataclass(frozen=True, slots=True)
class LagResult:
    lags: list[float]
    unobserved: int


def match_lags(changes: Sequence[Change], observations: Sequence[Observation]) -> LagResult:
    """Aggregation lag of every change: from ``sent_at`` to the first observation, at or
    after it, of that pool whose row for that host shows exactly the sent values.

    A change never observed (superseded by a newer change of the same report
    before the aggregate was written, or the phase ended first) counts as
    ``unobserved``.
    """
    by_pool: defaultdict[str, list[Observation]] = defaultdict(list)
    for obs in observations:
        by_pool[obs.pool_id].append(obs)
    times: dict[str, list[float]] = {}
    for pool_id, seen in by_pool.items():
        seen.sort(key=lambda o: o.seen_at)
        times[pool_id] = [o.seen_at for o in seen]
    lags: list[float] = []
    unobserved = 0
    for change in changes:
        seen = by_pool.get(change.pool_id, [])
        start = bisect.bisect_left(times.get(change.pool_id, []), change.sent_at)
        want = (HEALTH_NAMES.get(change.health, "UNKNOWN"), change.used_bytes)
        for obs in seen[start:]:
            if obs.rows.get(change.node_id) == want:
                lags.append(obs.seen_at - change.sent_at)
                break
        else:
            unobserved += 1
    return LagResult(lags=lags, unobserved=unobserved)


@dataclass(frozen=True, slots=True)
class Target:
    """One acceptance target: ``key`` of a result compared with ``op`` against ``bound``."""

    name: str
    key: str
    op: str  # ">=" or "<="
    bound: float
    workload: str = "steady"  # "steady" or "full_reports"

    def check(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.bound if self.op == ">=" else value <= self.bound


TARGETS = (
    Target("steady state heartbeats/s", "heartbeats_per_s", ">=", 10_000),
    Target("steady state / ceiling", "ratio_to_ceiling", ">=", 0.70),
    Target("full reports / ceiling", "ratio_to_ceiling", ">=", 0.70, workload="full_reports"),
    Target("etcd writes / material changes", "writes_to_changes", "<=", 1.0),
    Target("write amplification vs naive", "write_amplification", ">=", 500),
    Target("aggregation lag p99 (ms)", "aggregation_lag_p99_ms", "<=", 250),
    Target("writes with no change", "idle_etcd_writes", "<=", 0),
    Target("controller RSS (MB), 100k hosts", "controller_rss_mb", "<=", 1024),
)


def evaluate(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it holds (None: not measured).

    The RSS target applies from 100,000 hosts up; below that it is reported
    as not applicable.
    """
    out = []
    for target in TARGETS:
        source = result if target.workload == "steady" else result.get(target.workload) or {}
        value = source.get(target.key)
        holds = target.check(value)
        if target.key == "controller_rss_mb" and int(result.get("hosts", 0)) < 100_000:
            holds = None
        out.append(
            {
                "target": target.name,
                "workload": target.workload,
                "value": value,
                "bound": f"{target.op} {target.bound:g}",
                "holds": holds,
            }
        )
    return out


def json_safe(value: Any) -> Any:
    """Replace NaN and infinities (not JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
