"""What a run measured, typed: one workload, the naive baseline, one host count.

The JSON document keeps the flat keys it always had (``tests/benchmarks``
checks them, RESULTS.md explains them): each result's ``to_json()`` writes its
fields in that layout, in that order. :func:`summarize` turns one phase's raw
measurements (and its ceiling's) into a :class:`Workload`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from benchmarks.heartbeat import fleet, stats
from benchmarks.heartbeat.observer import SLOW_S
from benchmarks.heartbeat.phases import PhaseOutcome


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


@dataclass(frozen=True, slots=True)
class FleetInfo:
    """The simulated fleet a result is about."""

    hosts: int
    pools_per_host: int
    hosts_per_pool: int
    pools: int
    mode: str

    @classmethod
    def of(cls, shape: fleet.FleetShape, *, mode: str) -> FleetInfo:
        return cls(
            hosts=shape.hosts,
            pools_per_host=shape.pools_per_host,
            hosts_per_pool=shape.hosts_per_pool,
            pools=shape.pools,
            mode=mode,
        )


@dataclass(frozen=True, slots=True)
class Workload:
    """One workload (steady state, or full reports) against its ceilings and the baseline."""

    heartbeats_per_s: float | None
    ceiling_per_s: float | None
    ratio_to_ceiling: float | None
    ceiling_betterproto2_per_s: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    ceiling_latency_p99_ms: float | None
    heartbeats: int
    etcd_writes: int
    changed_reports: int
    etcd_writes_per_heartbeat: float | None
    changed_reports_per_heartbeat: float | None
    writes_to_changes: float | None
    naive_etcd_writes_per_heartbeat: float | None
    write_amplification: float | None
    etcd_writes_by_family: dict[str, int]
    etcd_puts_total: int
    etcd_txns_total: int
    etcd_slow_applies: int
    etcd_slow_fsyncs: int
    etcd_slow_commits: int
    aggregation_lag_p50_ms: float | None
    aggregation_lag_p99_ms: float | None
    aggregation_lag_samples: int
    aggregation_lag_unobserved: int
    controller_cpu_s: float | None
    controller_cpu_utilisation: float | None
    controller_cpu_per_heartbeat_us: float | None
    ceiling_cpu_per_heartbeat_us: float | None
    cpu_ratio_to_ceiling: float | None
    ceiling_cpu_utilisation: float | None
    etcd_cpu_s: float | None
    generator_cpu_s: float | None
    harness_cpu_s: float | None
    errors: int
    first_error: str
    full_syncs: int
    duration_s: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def summarize(
    phase: PhaseOutcome,
    ceiling: PhaseOutcome | None,
    ceiling_bp2: PhaseOutcome | None,
    *,
    naive_writes: float | None,
) -> Workload:
    """One workload's figures (see ``--help`` and RESULTS.md for their meaning)."""
    writes = phase.writes.get("hoststatus", 0) + phase.writes.get("hoststatus:delete", 0)
    writes_per_hb = stats.ratio(writes, phase.heartbeats)
    lags = phase.lag.lags if phase.lag is not None else []
    per_s = phase.per_s
    ceiling_per_s = ceiling.per_s if ceiling is not None else None
    cpu_per_hb = stats.ratio(phase.server_cpu_s, phase.heartbeats_in_window)
    ceiling_cpu_per_hb = (
        stats.ratio(ceiling.server_cpu_s, ceiling.heartbeats_in_window) if ceiling else None
    )
    stalls = stats.etcd_stalls(phase.metrics, slow=SLOW_S)
    return Workload(
        heartbeats_per_s=_round(per_s),
        ceiling_per_s=_round(ceiling_per_s),
        ratio_to_ceiling=_round(stats.ratio(per_s, ceiling_per_s), 3),
        ceiling_betterproto2_per_s=_round(ceiling_bp2.per_s if ceiling_bp2 else None),
        latency_p50_ms=_round(stats.ms(stats.percentile(phase.latencies, 50)), 2),
        latency_p99_ms=_round(stats.ms(stats.percentile(phase.latencies, 99)), 2),
        ceiling_latency_p99_ms=_round(
            stats.ms(stats.percentile(ceiling.latencies, 99)) if ceiling else None, 2
        ),
        heartbeats=phase.heartbeats,
        etcd_writes=writes,
        changed_reports=phase.material,
        etcd_writes_per_heartbeat=_round(writes_per_hb, 6),
        changed_reports_per_heartbeat=_round(stats.ratio(phase.material, phase.heartbeats), 6),
        writes_to_changes=_round(stats.ratio(writes, phase.material), 4),
        naive_etcd_writes_per_heartbeat=_round(naive_writes, 3),
        write_amplification=_round(stats.ratio(naive_writes, writes_per_hb), 1),
        etcd_writes_by_family=phase.writes,
        etcd_puts_total=int(phase.metrics.get("etcd_mvcc_put_total", 0)),
        etcd_txns_total=int(phase.metrics.get("etcd_mvcc_txn_total", 0)),
        etcd_slow_applies=stalls["etcd_slow_applies"],
        etcd_slow_fsyncs=stalls["etcd_slow_fsyncs"],
        etcd_slow_commits=stalls["etcd_slow_commits"],
        aggregation_lag_p50_ms=_round(stats.ms(stats.percentile(lags, 50)), 1),
        aggregation_lag_p99_ms=_round(stats.ms(stats.percentile(lags, 99)), 1),
        aggregation_lag_samples=len(lags),
        aggregation_lag_unobserved=phase.lag.unobserved if phase.lag else 0,
        controller_cpu_s=_round(phase.server_cpu_s, 2),
        controller_cpu_utilisation=_round(stats.ratio(phase.server_cpu_s, phase.duration), 3),
        controller_cpu_per_heartbeat_us=_round(_us(cpu_per_hb), 1),
        ceiling_cpu_per_heartbeat_us=_round(_us(ceiling_cpu_per_hb), 1),
        cpu_ratio_to_ceiling=_round(stats.ratio(ceiling_cpu_per_hb, cpu_per_hb), 3),
        ceiling_cpu_utilisation=_round(
            stats.ratio(ceiling.server_cpu_s, ceiling.duration) if ceiling else None, 3
        ),
        etcd_cpu_s=_round(phase.etcd_cpu_s, 2),
        generator_cpu_s=_round(phase.generator_cpu_s, 2),
        harness_cpu_s=_round(phase.harness_cpu_s, 2),
        errors=phase.errors,
        first_error=phase.first_error,
        full_syncs=phase.full_syncs,
        duration_s=phase.duration,
    )


@dataclass(frozen=True, slots=True)
class Loads:
    """The machine's load averages when a measurement started and when it ended."""

    start: list[float]
    end: list[float]


@dataclass(frozen=True, slots=True)
class NaiveResult:
    """The naive baseline: full reports against a replica that writes every report."""

    fleet: FleetInfo
    loads: Loads
    heartbeats: int
    heartbeats_per_s: float | None
    etcd_writes: int
    etcd_writes_by_family: dict[str, int]
    etcd_writes_per_heartbeat: float | None
    reports_per_heartbeat: int
    controller_cpu_per_heartbeat_us: float | None
    errors: int
    first_error: str

    @classmethod
    def of(cls, phase: PhaseOutcome, *, fleet: FleetInfo, loads: Loads) -> NaiveResult:
        writes = phase.writes.get("hoststatus", 0)
        return cls(
            fleet=fleet,
            loads=loads,
            heartbeats=phase.heartbeats,
            heartbeats_per_s=_round(phase.per_s),
            etcd_writes=writes,
            etcd_writes_by_family=phase.writes,
            etcd_writes_per_heartbeat=_round(stats.ratio(writes, phase.heartbeats), 3),
            reports_per_heartbeat=fleet.pools_per_host,
            controller_cpu_per_heartbeat_us=_round(
                _us(stats.ratio(phase.server_cpu_s, phase.heartbeats_in_window)), 1
            ),
            errors=phase.errors,
            first_error=phase.first_error,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.fleet),
            "load_average_start": self.loads.start,
            "heartbeats": self.heartbeats,
            "heartbeats_per_s": self.heartbeats_per_s,
            "etcd_writes": self.etcd_writes,
            "etcd_writes_by_family": self.etcd_writes_by_family,
            "etcd_writes_per_heartbeat": self.etcd_writes_per_heartbeat,
            "reports_per_heartbeat": self.reports_per_heartbeat,
            "controller_cpu_per_heartbeat_us": self.controller_cpu_per_heartbeat_us,
            "errors": self.errors,
            "first_error": self.first_error,
            "load_average_end": self.loads.end,
        }


@dataclass(frozen=True, slots=True)
class SetupTimes:
    """Seconds the set-up of one host count took, by step."""

    register_s: float
    create_pools_s: float
    open_s: float
    settle_s: float
    total_s: float

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True, slots=True)
class Memory:
    """The controller's memory and set-up CPU at one host count."""

    controller_rss_mb: float
    controller_rss_steady_mb: float
    controller_rss_baseline_mb: float
    rss_per_host_kb: float
    controller_setup_cpu_s: float

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class SizeResult:
    """Everything measured at one host count (the steady state at the top level)."""

    fleet: FleetInfo
    loads: Loads
    setup: SetupTimes
    connections: int
    #: Only when the ceiling ran.
    ceiling_rss_per_host_kb: float | None
    steady: Workload
    full: Workload
    memory: Memory
    idle_etcd_writes_by_family: dict[str, int]
    idle_heartbeats: int
    naive: dict[str, Any]

    @property
    def idle_etcd_writes(self) -> int:
        return sum(self.idle_etcd_writes_by_family.values())

    def to_json(self) -> dict[str, Any]:
        fleet = dataclasses.asdict(self.fleet)
        out: dict[str, Any] = {
            **fleet,
            "load_average_start": self.loads.start,
            "setup": self.setup.to_json(),
            "connections": self.connections,
        }
        if self.ceiling_rss_per_host_kb is not None:
            out["ceiling_rss_per_host_kb"] = self.ceiling_rss_per_host_kb
        memory = self.memory.to_json()
        out.update(self.steady.to_json())
        out.update(memory)
        out["idle_etcd_writes"] = self.idle_etcd_writes
        out["idle_etcd_writes_by_family"] = self.idle_etcd_writes_by_family
        out["idle_heartbeats"] = self.idle_heartbeats
        out["full_reports"] = {
            **self.full.to_json(),
            **memory,
            "hosts": self.fleet.hosts,
            "pools_per_host": self.fleet.pools_per_host,
            "mode": self.fleet.mode,
        }
        out["naive"] = self.naive
        out["load_average_end"] = self.loads.end
        return out


def failed(*, hosts: int | None, error: str) -> dict[str, Any]:
    """The JSON of a measurement that failed: its traceback (and host count)."""
    return {"error": error} if hosts is None else {"hosts": hosts, "error": error}
