"""One measured phase: the generators drive a server while etcd and /proc are watched.

:meth:`PhaseRunner.run` waits until the server and etcd are quiet (an etcd
revision that stands still), tells every generator the phase's
:class:`~benchmarks.heartbeat.loadgen.PhaseSpec` (a start time shared by all,
a warm-up, a measured window), samples the server's and etcd's CPU over the
window, merges the generators' answers, and counts etcd's writes between the
two quiet revisions. Afterwards etcd's history is compacted and the
compaction waited for, so that it does not run during the next phase.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.heartbeat import loadgen, procs, stats
from benchmarks.heartbeat.config import Config
from benchmarks.heartbeat.generators import GeneratorPool
from benchmarks.heartbeat.observer import METRICS, EtcdObserver, etcd_metrics
from benchmarks.heartbeat.progress import Progress


@dataclass(slots=True)
class PhaseOutcome:
    """Everything measured in one phase, merged across generators."""

    name: str
    duration: float
    heartbeats: int = 0  # acknowledged, whole phase
    heartbeats_in_window: int = 0
    errors: int = 0
    first_error: str = ""
    full_syncs: int = 0
    material: int = 0
    latencies: list[float] = dataclasses.field(default_factory=list)
    changes: list[stats.Change] = dataclasses.field(default_factory=list)
    generator_cpu_s: float = 0.0
    server_cpu_s: float | None = None  # in the measured window
    etcd_cpu_s: float | None = None
    harness_cpu_s: float = 0.0
    writes: dict[str, int] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    lag: stats.LagResult | None = None

    @property
    def per_s(self) -> float | None:
        return stats.rate(self.heartbeats_in_window, self.duration)


class PhaseRunner:
    """Runs phases with the run's generators; see the module docstring."""

    def __init__(self, config: Config, *, gens: GeneratorPool, progress: Progress) -> None:
        self.config = config
        self._gens = gens
        self.progress = progress

    def _profile(self, pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
        """py-spy record of ``pid`` for ``seconds`` (only with ``--profile DIR``)."""
        if self.config.profile_dir is None:
            return None
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(exe).exists():
            self.progress.note("--profile: py-spy not found; install it with pip")
            return None
        return subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, int(seconds))),
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def run(
        self,
        name: str,
        *,
        workload: str,
        mode: str,
        duration: float,
        warmup: float,
        change_fraction: float,
        server: procs.Child,
        etcd_pid: int | None,
        observer: EtcdObserver | None,
        track: bool,
        profile: str = "",
    ) -> PhaseOutcome:
        cfg = self.config
        out = PhaseOutcome(name=name, duration=duration)
        before_rev = 0
        before_metrics: dict[str, float] = {}
        if observer is not None:
            # etcd idle too: its background work (a compaction) would take the shared cores.
            busy = cpu_of(server, *([etcd_pid] if etcd_pid else []))
            before_rev = await observer.quiesce(quiet=0.5, timeout=600, cpu=busy)
            before_metrics = etcd_metrics(observer.endpoint, METRICS)
            observer.track_values = track
        start_at = time.monotonic() + 0.5
        measure_from = start_at + warmup
        stop_at = measure_from + duration
        spec = loadgen.PhaseSpec(
            workload=workload,
            mode=mode,
            start_at=start_at,
            measure_from=measure_from,
            stop_at=stop_at,
            interval=cfg.interval,
            concurrency=cfg.concurrency,
            change_fraction=change_fraction,
            track_changes=track,
            max_heartbeats=int(max(1.0, warmup + duration) * 100_000),
        )
        harness_before = resource.getrusage(resource.RUSAGE_SELF)

        async def sample_window() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
            s0 = server.sample()
            e0 = procs.sample(etcd_pid) if etcd_pid else None
            profiler = None
            if profile and cfg.profile_dir is not None:
                profiler = self._profile(server.pid, cfg.profile_dir / f"{profile}.txt", duration)
            await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
            s1 = server.sample()
            out.server_cpu_s = s1.cpu_s - s0.cpu_s
            if e0 is not None and etcd_pid:
                out.etcd_cpu_s = procs.sample(etcd_pid).cpu_s - e0.cpu_s
            if profiler is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    profiler.wait(timeout=30)

        sampler = asyncio.create_task(sample_window())
        bar = self.progress.phase(f"{name}", seconds=warmup + duration + 0.5)
        try:
            results = await self._gens.call(
                "run",
                [{"spec": spec}] * len(self._gens),
                timeout=warmup + duration + loadgen.RPC_TIMEOUT + 60,
                on_progress=bar.advance,
            )
        finally:
            bar.close()
        await sampler
        harness_after = resource.getrusage(resource.RUSAGE_SELF)
        out.harness_cpu_s = (harness_after.ru_utime - harness_before.ru_utime) + (
            harness_after.ru_stime - harness_before.ru_stime
        )
        for r in results:
            out.heartbeats += r["acked"]
            out.heartbeats_in_window += r["acked_in_window"]
            out.errors += r["errors"]
            out.first_error = out.first_error or r["first_error"]
            out.full_syncs += r["full_syncs"]
            out.material += r["material"]
            out.generator_cpu_s += r["cpu_s"]
            lat = array.array("d")
            lat.frombytes(r["latencies"])
            out.latencies.extend(lat)
            out.changes.extend(stats.Change(*c) for c in r["changes"])
        if observer is not None:
            after_rev = await observer.quiesce(quiet=0.5, timeout=600, cpu=cpu_of(server))
            after_metrics = etcd_metrics(observer.endpoint, METRICS)
            out.writes = dict(observer.counts(before_rev, after_rev))
            out.metrics = {k: after_metrics[k] - before_metrics.get(k, 0) for k in METRICS}
            if track:
                out.lag = stats.match_lags(
                    out.changes, observer.observations(before_rev, after_rev)
                )
            observer.track_values = False
            observer.forget(after_rev)
            await self.compact(observer, after_rev)
        return out

    async def compact(self, observer: EtcdObserver, revision: int) -> None:
        """Compact etcd's history up to ``revision`` and wait until etcd has removed it
        (``physical``): after the 100,000-host set-up that takes etcd about a minute of
        CPU, which must not run on the shared cores during a measured phase."""
        try:
            await observer.store.compact(revision, physical=True, timeout=1800)
        except Exception as exc:  # noqa: BLE001 - a failed compaction costs disk, not results
            self.progress.note(f"etcd compaction to revision {revision} failed: {exc!r}")


def cpu_of(child: procs.Child, *also: int) -> Callable[[], float]:
    """CPU seconds of ``child`` plus those of the processes ``also`` (pids)."""
    return lambda: child.sample().cpu_s + sum(procs.sample(pid).cpu_s for pid in also)
