"""The JSON a run writes (its keys and their arithmetic), the table, the plot and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks.heartbeat import __main__ as cli
from benchmarks.heartbeat import fleet, generators, phases, report, results, stats

#: Keys the issue requires, for the steady state at the top and under "full_reports".
REQUIRED = (
    "heartbeats_per_s",
    "ceiling_per_s",
    "ratio_to_ceiling",
    "etcd_writes_per_heartbeat",
    "changed_reports_per_heartbeat",
    "naive_etcd_writes_per_heartbeat",
    "aggregation_lag_p50_ms",
    "aggregation_lag_p99_ms",
    "latency_p99_ms",
)


def _phase(**kw: object) -> phases.PhaseOutcome:
    phase = phases.PhaseOutcome(name="steady state", duration=10.0)
    for key, value in kw.items():
        setattr(phase, key, value)
    return phase


def test_summarize_arithmetic() -> None:
    phase = _phase(
        heartbeats=100_000,
        heartbeats_in_window=90_000,
        material=800,
        latencies=[0.001 * i for i in range(1, 101)],
        writes={"hoststatus": 790, "poolstatus": 700},
        server_cpu_s=9.0,
        lag=stats.LagResult(lags=[0.05, 0.10, 0.20], unobserved=2),
        metrics={
            "etcd_server_slow_apply_total": 1.0,
            "etcd_disk_wal_fsync_duration_seconds_count": 50.0,
            'etcd_disk_wal_fsync_duration_seconds_bucket{le="0.128"}': 46.0,
        },
    )
    ceiling = _phase(heartbeats_in_window=120_000, server_cpu_s=8.0)
    out = results.summarize(phase, ceiling, None, naive_writes=8.0).to_json()
    assert out["heartbeats_per_s"] == 9_000.0
    assert out["ceiling_per_s"] == 12_000.0
    assert out["ratio_to_ceiling"] == 0.75
    assert out["etcd_writes"] == 790  # host-status writes only; aggregates are reported apart
    assert out["etcd_writes_per_heartbeat"] == pytest.approx(0.0079)
    assert out["changed_reports_per_heartbeat"] == pytest.approx(0.008)
    assert out["writes_to_changes"] == pytest.approx(790 / 800, abs=1e-4)
    assert out["write_amplification"] == pytest.approx(8.0 / 0.0079, rel=1e-3)
    assert out["latency_p99_ms"] == pytest.approx(99.01, abs=0.01)
    assert out["aggregation_lag_p50_ms"] == 100.0
    assert out["aggregation_lag_samples"] == 3
    assert out["aggregation_lag_unobserved"] == 2
    assert out["controller_cpu_per_heartbeat_us"] == 100.0
    assert out["ceiling_cpu_per_heartbeat_us"] == pytest.approx(66.7, abs=0.1)
    assert out["cpu_ratio_to_ceiling"] == pytest.approx(0.667, abs=0.001)
    assert (out["etcd_slow_applies"], out["etcd_slow_fsyncs"], out["etcd_slow_commits"]) == (
        1,
        4,
        0,
    )
    assert "1/4/0" in report.table({**out, "hosts": 10, "full_reports": out})
    assert out["controller_cpu_utilisation"] == 0.9
    for key in REQUIRED:
        assert key in out


def test_summarize_without_baselines_gives_nulls_not_numbers() -> None:
    out = results.summarize(_phase(), None, None, naive_writes=None).to_json()
    assert out["ceiling_per_s"] is None
    assert out["ratio_to_ceiling"] is None
    assert out["write_amplification"] is None
    assert out["aggregation_lag_p99_ms"] is None
    assert out["heartbeats_per_s"] == 0.0
    json.dumps(out, allow_nan=False)


def _doc() -> dict[str, object]:
    def workload(rate: float) -> dict[str, object]:
        return {
            "heartbeats_per_s": rate,
            "ceiling_per_s": rate * 1.3,
            "ratio_to_ceiling": 0.77,
            "latency_p99_ms": 20.0,
            "aggregation_lag_p50_ms": 50.0,
            "aggregation_lag_p99_ms": 150.0,
            "etcd_writes_per_heartbeat": 0.008,
            "changed_reports_per_heartbeat": 0.008,
            "naive_etcd_writes_per_heartbeat": 8.0,
            "errors": 0,
        }

    sweep = []
    for hosts in (1_000, 10_000):
        sweep.append(
            {
                "hosts": hosts,
                "pools_per_host": 8,
                "controller_rss_mb": 100.0,
                **workload(10_000.0),
                "full_reports": workload(4_000.0),
            }
        )
    doc: dict[str, object] = {"machine": {"cpus": 2}, **sweep[-1], "sweep": sweep}
    doc["targets"] = stats.evaluate(doc)
    return doc


def test_table_and_targets_render() -> None:
    doc = _doc()
    text = report.table(doc)
    assert "1,000 steady" in text and "10,000 full" in text
    assert "heartbeats/s" in text
    verdicts = report.targets(doc)
    assert "PASS" in verdicts and "n/a" in verdicts


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "sweep.png"
    report.plot(_doc(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_quick_and_sweep_configs() -> None:
    quick = cli.config_from(cli.parse_args(["--quick"]))
    assert quick.hosts == (200,)
    assert quick.duration == 3.0
    assert quick.betterproto2_ceiling is False
    sweep = cli.config_from(cli.parse_args(["--sweep", "1000,10_000,100000", "--mode", "unary"]))
    assert sweep.hosts == (1_000, 10_000, 100_000)
    assert sweep.mode == "unary"
    with pytest.raises(SystemExit):
        cli.parse_args(["--sweep", "10,x"])


def test_split_keeps_order_and_balances() -> None:
    assert generators.split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert generators.split([], 2) == [[], []]


#: One workload's keys (the steady state's at the top level, and under "full_reports").
WORKLOAD_KEYS = (
    "heartbeats_per_s",
    "ceiling_per_s",
    "ratio_to_ceiling",
    "ceiling_betterproto2_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "ceiling_latency_p99_ms",
    "heartbeats",
    "etcd_writes",
    "changed_reports",
    "etcd_writes_per_heartbeat",
    "changed_reports_per_heartbeat",
    "writes_to_changes",
    "naive_etcd_writes_per_heartbeat",
    "write_amplification",
    "etcd_writes_by_family",
    "etcd_puts_total",
    "etcd_txns_total",
    "etcd_slow_applies",
    "etcd_slow_fsyncs",
    "etcd_slow_commits",
    "aggregation_lag_p50_ms",
    "aggregation_lag_p99_ms",
    "aggregation_lag_samples",
    "aggregation_lag_unobserved",
    "controller_cpu_s",
    "controller_cpu_utilisation",
    "controller_cpu_per_heartbeat_us",
    "ceiling_cpu_per_heartbeat_us",
    "cpu_ratio_to_ceiling",
    "ceiling_cpu_utilisation",
    "etcd_cpu_s",
    "generator_cpu_s",
    "harness_cpu_s",
    "errors",
    "first_error",
    "full_syncs",
    "duration_s",
)

#: One host count's keys, in the order the JSON had them before the results were typed.
SIZE_KEYS = [
    *("hosts", "pools_per_host", "hosts_per_pool", "pools", "mode", "load_average_start"),
    *("setup", "connections", "ceiling_rss_per_host_kb"),
    *WORKLOAD_KEYS,
    *("controller_rss_mb", "controller_rss_steady_mb", "controller_rss_baseline_mb"),
    *("rss_per_host_kb", "controller_setup_cpu_s"),
    *("idle_etcd_writes", "idle_etcd_writes_by_family", "idle_heartbeats"),
    *("full_reports", "naive", "load_average_end"),
]
NAIVE_KEYS = [
    *("hosts", "pools_per_host", "hosts_per_pool", "pools", "mode", "load_average_start"),
    *("heartbeats", "heartbeats_per_s", "etcd_writes", "etcd_writes_by_family"),
    *("etcd_writes_per_heartbeat", "reports_per_heartbeat", "controller_cpu_per_heartbeat_us"),
    *("errors", "first_error", "load_average_end"),
]


def test_typed_results_write_the_json_layout() -> None:
    info = results.FleetInfo.of(fleet.FleetShape(hosts=32), mode="stream")
    loads = results.Loads(start=[1.0, 1.0, 1.0], end=[2.0, 2.0, 2.0])
    naive_phase = _phase(heartbeats=100, heartbeats_in_window=90, writes={"hoststatus": 800})
    naive = results.NaiveResult.of(naive_phase, fleet=info, loads=loads).to_json()
    assert list(naive) == NAIVE_KEYS
    assert naive["etcd_writes_per_heartbeat"] == 8.0 and naive["reports_per_heartbeat"] == 8
    workload = results.summarize(_phase(heartbeats=10), None, None, naive_writes=8.0)
    assert list(workload.to_json()) == list(WORKLOAD_KEYS)
    memory = results.Memory(
        controller_rss_mb=1.0,
        controller_rss_steady_mb=1.0,
        controller_rss_baseline_mb=1.0,
        rss_per_host_kb=1.0,
        controller_setup_cpu_s=1.0,
    )
    size_result = results.SizeResult(
        fleet=info,
        loads=loads,
        setup=results.SetupTimes(
            register_s=1.04, create_pools_s=2.0, open_s=3.0, settle_s=4.0, total_s=10.0
        ),
        connections=2,
        ceiling_rss_per_host_kb=5.5,
        steady=workload,
        full=dataclasses.replace(workload, heartbeats=20),
        memory=memory,
        idle_etcd_writes_by_family={"nodestatus": 1},
        idle_heartbeats=7,
        naive=naive,
    )
    size = size_result.to_json()
    assert list(size) == SIZE_KEYS
    assert size["heartbeats"] == 10 and size["full_reports"]["heartbeats"] == 20
    assert size["full_reports"]["mode"] == "stream" and size["full_reports"]["rss_per_host_kb"]
    assert size["setup"]["register_s"] == 1.0 and size["idle_etcd_writes"] == 1
    json.dumps(size, allow_nan=False)
    no_ceiling = dataclasses.replace(size_result, ceiling_rss_per_host_kb=None).to_json()
    assert "ceiling_rss_per_host_kb" not in no_ceiling  # as before: only when the ceiling ran
