"""The harness end to end at a tiny size: real etcd, controller, generators and ceiling.

It checks the JSON and the invariants that do not depend on the machine's speed
(no timing thresholds): every required key is there, host-status writes never
exceed the material changes, nothing is written when nothing changes, and the
naive baseline writes every report of every heartbeat.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.test_bench_report import REQUIRED

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_harness_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    argv = [
        sys.executable,
        "-m",
        "benchmarks.heartbeat",
        "--hosts",
        "20",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
        "--idle",
        "0.5",
        "--naive-hosts",
        "10",
        "--naive-duration",
        "1",
        "--ceiling-duration",
        "1",
        "--generators",
        "1",
        "--concurrency",
        "8",
        "--no-betterproto2-ceiling",
        "--workdir",
        str(tmp_path),
        "--json",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        output, _ = proc.communicate(timeout=100)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the harness stops its children on SIGTERM
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"harness did not finish in time:\n{output.decode(errors='replace')}")
    assert proc.returncode == 0, output.decode(errors="replace")

    doc = json.loads(out.read_text())
    for key in (*REQUIRED, "controller_rss_mb", "hosts", "pools_per_host"):
        assert key in doc, key
        assert key in doc["full_reports"], f"full_reports.{key}"
    assert doc["hosts"] == 20 and doc["pools_per_host"] == 8
    for workload in (doc, doc["full_reports"]):
        assert workload["errors"] == 0, workload["first_error"]
        assert workload["heartbeats"] > 0
        assert workload["etcd_writes"] <= workload["changed_reports"]
        assert workload["heartbeats_per_s"] > 0
        assert workload["ceiling_per_s"] > 0
    assert doc["idle_etcd_writes"] == 0
    assert doc["naive"]["heartbeats"] > 0
    assert doc["naive"]["etcd_writes_per_heartbeat"] == pytest.approx(8.0)
    assert doc["controller_rss_mb"] > 0
    assert [t["target"] for t in doc["targets"]]
    assert not any(p.name.startswith("hb-") for p in tmp_path.iterdir()), "work dir left behind"
    assert os.path.exists(out)
