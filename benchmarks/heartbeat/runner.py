"""Orchestration: one benchmark run, one host count after the other.

First, once per run, the naive baseline (:mod:`benchmarks.heartbeat.baseline`);
then each host count of the sweep (:mod:`benchmarks.heartbeat.sweep`), each on
a fresh etcd (:mod:`benchmarks.heartbeat.harness`). A measured phase is
:mod:`benchmarks.heartbeat.phases`; the set-up through the public API is
:mod:`benchmarks.heartbeat.provisioning`; what is reported is
:mod:`benchmarks.heartbeat.results`.

etcd writes are counted exactly by revision range between quiet points
(:mod:`benchmarks.heartbeat.observer`); CPU and RSS come from ``/proc``. A
measurement that fails is recorded with its traceback and the next one still
runs; the JSON is rewritten after every host count.

The document: the command, the machine, the load averages, the elapsed time
and the config, then the largest successful host count's result at the top
level, the naive baseline under ``naive``, every host count under ``sweep``,
and the targets' verdicts under ``targets``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.heartbeat import baseline, machine, results, stats, sweep
from benchmarks.heartbeat.config import Config
from benchmarks.heartbeat.generators import GeneratorPool
from benchmarks.heartbeat.harness import Harness
from benchmarks.heartbeat.progress import Progress


async def run(
    config: Config,
    *,
    progress: Progress,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON document (largest host count at the top)."""
    main_task = asyncio.current_task()
    if main_task is not None:  # SIGTERM stops the run cleanly: children and etcd included
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    started = time.monotonic()
    info = machine.machine_info()
    load_start = machine.load_average()
    gens = GeneratorPool(config.generators, seed=config.seed)
    harness = Harness(config, progress=progress, gens=gens)
    sweep_json: list[dict[str, Any]] = []
    naive_json: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        done = [r for r in sweep_json if "error" not in r] or sweep_json or [{"hosts": 0}]
        top = max(done, key=lambda r: int(r["hosts"]))
        doc = {
            "command": "python -m benchmarks.heartbeat " + " ".join(sys.argv[1:]),
            "machine": info,
            "load_average_start": load_start,
            "load_average_end": machine.load_average(),
            "elapsed_s": round(time.monotonic() - started, 1),
            "config": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in dataclasses.asdict(config).items()
            },
            **top,
            "naive": naive_json,
            "sweep": sweep_json,
        }
        doc["targets"] = stats.evaluate(doc)
        safe: dict[str, Any] = stats.json_safe(doc)
        return safe

    try:
        naive: results.NaiveResult | None = None
        try:
            naive = await baseline.run_naive(harness)
            naive_json = naive.to_json()
        except Exception:  # noqa: BLE001 - recorded; the sizes are still measured
            naive_json = results.failed(hosts=None, error=traceback.format_exc())
            progress.note(f"naive baseline failed:\n{naive_json['error']}")
        for hosts in config.hosts:
            try:
                size = await sweep.run_size(harness, hosts, naive=naive, naive_json=naive_json)
                sweep_json.append(size.to_json())
            except Exception:  # noqa: BLE001 - recorded; the next size still runs
                sweep_json.append(results.failed(hosts=hosts, error=traceback.format_exc()))
                progress.note(f"{hosts:,} hosts failed:\n{sweep_json[-1]['error']}")
            if on_result is not None:
                on_result(document())
    finally:
        gens.stop()
    return document()
