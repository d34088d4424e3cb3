"""Presenting a run: the terminal table, the targets, and the sweep plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return format(value, spec)
    return str(value)


ROWS: tuple[tuple[str, str, str], ...] = (
    ("heartbeats/s", "heartbeats_per_s", ",.0f"),
    ("ceiling/s (same codec)", "ceiling_per_s", ",.0f"),
    ("ratio to ceiling", "ratio_to_ceiling", ".2f"),
    ("ceiling/s (betterproto2 codec)", "ceiling_betterproto2_per_s", ",.0f"),
    ("latency p50 (ms)", "latency_p50_ms", ".2f"),
    ("latency p99 (ms)", "latency_p99_ms", ".2f"),
    ("controller CPU / heartbeat (us)", "controller_cpu_per_heartbeat_us", ",.1f"),
    ("ceiling CPU / heartbeat (us)", "ceiling_cpu_per_heartbeat_us", ",.1f"),
    ("CPU ratio to ceiling", "cpu_ratio_to_ceiling", ".2f"),
    ("controller CPU utilisation", "controller_cpu_utilisation", ".2f"),
    ("changed reports / heartbeat", "changed_reports_per_heartbeat", ".5f"),
    ("etcd writes / heartbeat", "etcd_writes_per_heartbeat", ".5f"),
    ("writes / changed reports", "writes_to_changes", ".3f"),
    ("naive etcd writes / heartbeat", "naive_etcd_writes_per_heartbeat", ".3f"),
    ("write amplification avoided", "write_amplification", ",.0f"),
    ("aggregation lag p50 (ms)", "aggregation_lag_p50_ms", ".1f"),
    ("aggregation lag p99 (ms)", "aggregation_lag_p99_ms", ".1f"),
    ("lag samples / unobserved", "_lag_samples", ""),
    ("etcd stalls: apply / fsync / commit", "_etcd_stalls", ""),
    ("errors", "errors", ",d"),
)


def _cell(result: Mapping[str, Any], key: str, spec: str) -> str:
    if key == "_lag_samples":
        seen = result.get("aggregation_lag_samples", 0)
        return f"{seen}/{result.get('aggregation_lag_unobserved', 0)}"
    if key == "_etcd_stalls":
        kinds = ("etcd_slow_applies", "etcd_slow_fsyncs", "etcd_slow_commits")
        return "/".join(_fmt(result.get(k), ",d") for k in kinds)
    return _fmt(result.get(key), spec)


def table(doc: Mapping[str, Any]) -> str:
    """One column per (host count, workload); one row per measurement."""
    sweep: Sequence[Mapping[str, Any]] = doc.get("sweep") or [doc]
    columns: list[tuple[str, Mapping[str, Any]]] = []
    for result in sweep:
        columns.append((f"{result['hosts']:,} steady", result))
        columns.append((f"{result['hosts']:,} full", result.get("full_reports") or {}))
    label_width = max(len(r[0]) for r in ROWS) + 2
    widths = [max(14, len(title) + 2) for title, _ in columns]
    lines = [
        "".ljust(label_width)
        + "".join(t.rjust(w) for (t, _), w in zip(columns, widths, strict=True))
    ]
    for label, key, spec in ROWS:
        cells = [
            _cell(res, key, spec).rjust(w) for (_, res), w in zip(columns, widths, strict=True)
        ]
        lines.append(label.ljust(label_width) + "".join(cells))
    lines.append("")
    naive = doc.get("naive") or {}
    if "error" in naive:
        lines.append("naive baseline: FAILED (traceback in the JSON's 'naive.error')")
    elif naive:
        lines.append(
            f"naive baseline (every report written, {naive.get('hosts', 0):,} hosts, "
            "full reports): "
            f"{_fmt(naive.get('etcd_writes_per_heartbeat'), '.3f')} etcd writes per heartbeat "
            f"at {_fmt(naive.get('heartbeats_per_s'), ',.0f')} heartbeats/s"
        )
    for result in sweep:
        if "error" in result:
            lines.append(f"{result['hosts']:,} hosts: FAILED (traceback in the JSON's 'error')")
            continue
        setup = result.get("setup") or {}
        lines.append(
            f"{result['hosts']:,} hosts: controller RSS peak "
            f"{_fmt(result.get('controller_rss_mb'), ',.0f')} MB, "
            f"{_fmt(result.get('rss_per_host_kb'), '.1f')} KB/host (a bare grpclib server: "
            f"{_fmt(result.get('ceiling_rss_per_host_kb'), '.1f')} KB/stream); "
            f"etcd writes with no change: {_fmt(result.get('idle_etcd_writes'), 'd')}; "
            f"set-up {_fmt(setup.get('total_s'), '.0f')} s; load average "
            f"{result.get('load_average_start')} -> {result.get('load_average_end')}"
        )
    return "\n".join(lines)


def targets(doc: Mapping[str, Any]) -> str:
    lines = [f"Targets at {doc.get('hosts', 0):,} hosts:"]
    for t in doc.get("targets") or ():
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["holds"]]
        lines.append(
            f"  [{mark}] {t['target']:<34} {_fmt(t['value'], ',.3g'):>10}  (target {t['bound']})"
        )
    return "\n".join(lines)


def plot(doc: Mapping[str, Any], path: Path) -> None:
    """Throughput and aggregation lag across the sweep (PNG; matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = sorted(doc.get("sweep") or [doc], key=lambda r: int(r["hosts"]))
    hosts = [int(r["hosts"]) for r in sweep]

    def series(key: str, sub: str | None = None) -> list[float]:
        out = []
        for r in sweep:
            src = r.get(sub) or {} if sub else r
            value = src.get(key)
            out.append(float("nan") if value is None else float(value))
        return out

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    ax1.plot(hosts, series("heartbeats_per_s"), "o-", label="steady state (delta)")
    ax1.plot(hosts, series("ceiling_per_s"), "o--", label="steady-state ceiling")
    ax1.plot(hosts, series("heartbeats_per_s", "full_reports"), "s-", label="full reports")
    ax1.plot(hosts, series("ceiling_per_s", "full_reports"), "s--", label="full-reports ceiling")
    ax1.axhline(10_000, color="grey", linestyle=":", label="target 10,000/s")
    ax1.set_xscale("log")
    ax1.set_xlabel("simulated hosts")
    ax1.set_ylabel("accepted heartbeats / s")
    ax1.set_title("Heartbeat throughput (1 replica)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)

    ax2.plot(hosts, series("aggregation_lag_p50_ms"), "o-", label="steady p50")
    ax2.plot(hosts, series("aggregation_lag_p99_ms"), "o--", label="steady p99")
    ax2.plot(hosts, series("aggregation_lag_p50_ms", "full_reports"), "s-", label="full p50")
    ax2.plot(hosts, series("aggregation_lag_p99_ms", "full_reports"), "s--", label="full p99")
    ax2.axhline(250, color="grey", linestyle=":", label="target p99 250 ms")
    ax2.set_xscale("log")
    ax2.set_xlabel("simulated hosts")
    ax2.set_ylabel("ms")
    ax2.set_title("Aggregation lag (report sent -> aggregate in etcd watch)")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    machine = doc.get("machine") or {}
    fig.suptitle(
        f"python -m benchmarks.heartbeat - {machine.get('cpus', '?')} CPUs, "
        f"{doc.get('pools_per_host', 8)} pools/host, load avg {doc.get('load_average_start')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(doc: Mapping[str, Any]) -> str:
    """The results of a run as Markdown tables (for ``benchmarks/RESULTS.md``)."""
    sweep: Sequence[Mapping[str, Any]] = doc.get("sweep") or [doc]
    titles = []
    results = []
    for result in sweep:
        titles += [f"{result['hosts']:,} steady", f"{result['hosts']:,} full"]
        results += [result, result.get("full_reports") or {}]
    lines = [
        "| | " + " | ".join(titles) + " |",
        "|---|" + "---:|" * len(titles),
    ]
    for label, key, spec in ROWS:
        cells = [_cell(res, key, spec) for res in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| hosts | controller RSS peak (MB) | KB/host | bare grpclib KB/stream "
        "| no-change etcd writes | set-up (s) | load average start -> end |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in sweep:
        lines.append(
            f"| {result['hosts']:,} | {_fmt(result.get('controller_rss_mb'), ',.0f')} "
            f"| {_fmt(result.get('rss_per_host_kb'), '.1f')} "
            f"| {_fmt(result.get('ceiling_rss_per_host_kb'), '.1f')} "
            f"| {_fmt(result.get('idle_etcd_writes'), 'd')} "
            f"| {_fmt((result.get('setup') or {}).get('total_s'), ',.0f')} "
            f"| {result.get('load_average_start')} -> {result.get('load_average_end')} |"
        )
    lines += [
        "",
        f"Targets at {doc.get('hosts', 0):,} hosts:",
        "",
        "| target | value | bound | holds |",
        "|---|---:|---|---|",
    ]
    for t in doc.get("targets") or ():
        mark = {True: "yes", False: "**no**", None: "n/a"}[t["holds"]]
        lines.append(f"| {t['target']} | {_fmt(t['value'], ',.3g')} | {t['bound']} | {mark} |")
    return "\n".join(lines)


def main() -> None:
    """``python -m benchmarks.heartbeat.report RUN.json``: print a run as Markdown."""
    import json
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.heartbeat.report RUN.json")
    with open(sys.argv[1], encoding="utf-8") as f:
        print(markdown(json.load(f)))


if __name__ == "__main__":
    main()
