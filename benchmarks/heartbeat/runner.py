"""Orchestration: one benchmark run, one host count after the other.

First, once per run, the **naive baseline**: a replica that writes every report
of every heartbeat, as upstream does (:mod:`benchmarks.heartbeat.naive_server`), on its own etcd,
driven by ``--naive-hosts`` hosts sending full reports as upstream nodes do.
Its writes per heartbeat are the reports per heartbeat whatever the fleet
size, so one measurement serves every size's write-amplification ratio.

Then, for each host count of the sweep, on a fresh etcd (``qvdc.store.embedded``):

1. **Set-up (not timed as throughput).** Start one ``qvdc`` replica in its own
   process. Register every simulated host with ``RegisterNode`` and create its
   cluster's pools with ``CreatePool`` (assigned to the cluster's hosts), both
   through the public API. Each generator opens one ``StreamHeartbeat`` per
   host and sends the first, full heartbeat; wait until etcd and the
   controller are quiet.
2. **Idle** (``--idle`` s): delta heartbeats and no change at all. Any etcd
   write counts against the "no change, no write" rule.
3. **Steady state** (warm-up + ``--duration`` s): delta heartbeats; each
   report changes materially with probability ``--change-fraction``.
   Aggregation lag is timed for every change.
4. **Full reports** (warm-up + ``--duration`` s): every heartbeat carries all
   reports (``delta=false`` on the stream, or ``UpdateHeartbeat`` with
   ``--mode unary``); same change rate.
5. **Ceiling**: the bare grpclib server (:mod:`benchmarks.heartbeat.ceiling`)
   driven by the same generators with the same two workloads, with the
   controller's codec (and, up to 10,000 hosts, with betterproto2's).

etcd writes are counted exactly by revision range between quiet points
(:mod:`benchmarks.heartbeat.observer`); CPU and RSS come from ``/proc``. A size
that fails is recorded with its traceback and the next size still runs; the
JSON is rewritten after every size.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import pickle
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.heartbeat import fleet, loadgen, procs, stats
from benchmarks.heartbeat.observer import METRICS, SLOW_S, EtcdObserver, etcd_metrics
from benchmarks.heartbeat.progress import Progress
from qvdc.settings import EtcdSettings
from qvdc.store.embedded import EmbeddedEtcd

HOST = "127.0.0.1"
BETTERPROTO2_CEILING_MAX_HOSTS = 10_000
"""Above this, the betterproto2-codec ceiling (informational) is skipped: opening its
streams alone costs ~1.5 ms per host (full pool definitions encoded by betterproto2)."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything one run needs; the CLI builds it (see ``--help`` for each knob)."""

    hosts: tuple[int, ...]
    pools_per_host: int = 8
    hosts_per_pool: int = 16
    mode: str = "stream"
    duration: float = 20.0
    warmup: float = 3.0
    idle: float = 3.0
    interval: float = 0.0
    concurrency: int = 48
    generators: int = 2
    change_fraction: float = 0.001
    naive_hosts: int = 1000
    naive_duration: float = 8.0
    ceiling: bool = True
    ceiling_duration: float = 10.0
    betterproto2_ceiling: bool = True
    heartbeat_interval: float = 30.0
    grace: float = 600.0
    seed: int = 1
    workdir: Path | None = None
    keep: bool = False
    profile_dir: Path | None = None
    quick: bool = False


class GeneratorError(RuntimeError):
    """A load-generator process failed; the message carries its traceback."""


class GeneratorPool:
    """The load-generator processes (multiprocessing, spawn) and their command pipes."""

    def __init__(self, count: int, *, seed: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        for gen_id in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=loadgen.generator_main,
                args=(child, gen_id, seed),
                name=f"loadgen-{gen_id}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    async def call(
        self,
        command: str,
        kwargs: Sequence[dict[str, Any]],
        *,
        timeout: float,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Send ``command`` to every generator (one kwargs dict each) and gather the answers."""
        for conn, kw in zip(self._conns, kwargs, strict=True):
            conn.send((command, kw))
        results: list[dict[str, Any] | None] = [None] * len(self._conns)
        pending = set(range(len(self._conns)))
        deadline = time.monotonic() + timeout
        while pending:
            for i in sorted(pending):
                conn = self._conns[i]
                while conn.poll():
                    kind, payload = conn.recv()
                    if kind == "progress":
                        if on_progress is not None:
                            on_progress(payload)
                        continue
                    if kind == "error":
                        raise GeneratorError(f"generator {i} failed in {command}:\n{payload}")
                    results[i] = payload
                    pending.discard(i)
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"generators did not finish {command} within {timeout:.0f} s")
            await asyncio.sleep(0.02)
        return [r for r in results if r is not None]

    def stop(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("exit", {}))
        for proc in self._procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous chunks of nearly equal size (order kept)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    etcd_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["etcd", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        etcd_version = out.splitlines()[0] if out else ""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "etcd": etcd_version,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


class Harness:
    """Runs the phases of :mod:`runner` for each host count; see the module docstring."""

    def __init__(self, config: Config, *, progress: Progress) -> None:
        self.config = config
        self.progress = progress
        self.gens: GeneratorPool | None = None
        self._children: list[procs.Child] = []

    # ------------------------------------------------------------------ helpers

    @property
    def _gens(self) -> GeneratorPool:
        assert self.gens is not None
        return self.gens

    def _start_controller(self, workdir: Path, endpoint: str, *, naive: bool) -> procs.Child:
        port = procs.free_port()
        name = "qvdc-naive" if naive else "qvdc"
        args = [
            "--etcd",
            endpoint,
            "--listen",
            f"{HOST}:{port}",
            "--heartbeat-interval",
            f"{self.config.heartbeat_interval:g}",
            "--grace",
            f"{self.config.grace:g}",
            "--state-dir",
            str(workdir / name),
            "--log-level",
            "WARNING",
        ]
        # The naive baseline: the same replica with every report written (naive_server).
        module = "benchmarks.heartbeat.naive_server" if naive else "qvdc"
        child = procs.Child(
            name=name, module=module, args=args, log_path=workdir / f"{name}.log", port=port
        )
        self._children.append(child)
        try:
            procs.wait_listening(HOST, port, timeout=60, proc=child.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{name} did not start: {exc}\n{child.log_tail()}") from exc
        return child

    def _start_ceiling(self, workdir: Path, fixture: Path, codec: str) -> procs.Child:
        port = procs.free_port()
        child = procs.Child(
            name=f"ceiling-{codec}",
            module="benchmarks.heartbeat.ceiling",
            args=[
                "--listen",
                f"{HOST}:{port}",
                "--fixture",
                str(fixture),
                "--codec",
                codec,
                "--interval",
                str(max(1, round(self.config.heartbeat_interval))),
            ],
            log_path=workdir / f"ceiling-{codec}.log",
            port=port,
        )
        self._children.append(child)
        try:
            procs.wait_listening(HOST, port, timeout=120, proc=child.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"ceiling did not start: {exc}\n{child.log_tail()}") from exc
        return child

    def _stop(self, child: procs.Child) -> None:
        child.stop()
        if child in self._children:
            self._children.remove(child)

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

    # ------------------------------------------------------------------ phases

    async def _phase(
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
            busy = _cpu_of(server, *([etcd_pid] if etcd_pid else []))
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
            after_rev = await observer.quiesce(quiet=0.5, timeout=600, cpu=_cpu_of(server))
            after_metrics = etcd_metrics(observer.endpoint, METRICS)
            out.writes = dict(observer.counts(before_rev, after_rev))
            out.metrics = {k: after_metrics[k] - before_metrics.get(k, 0) for k in METRICS}
            if track:
                out.lag = stats.match_lags(
                    out.changes, observer.observations(before_rev, after_rev)
                )
            observer.track_values = False
            observer.forget(after_rev)
            await self._compact(observer, after_rev)
        return out

    async def _compact(self, observer: EtcdObserver, revision: int) -> None:
        """Compact etcd's history up to ``revision`` and wait until etcd has removed it
        (``physical``): after the 100,000-host set-up that takes etcd about a minute of
        CPU, which must not run on the shared cores during a measured phase."""
        try:
            await observer.store.compact(revision, physical=True, timeout=1800)
        except Exception as exc:  # noqa: BLE001 - a failed compaction costs disk, not results
            self.progress.note(f"etcd compaction to revision {revision} failed: {exc!r}")

    # ------------------------------------------------------------------ one size

    async def _setup(
        self, shape: fleet.FleetShape, target: tuple[str, int], *, label: str = ""
    ) -> tuple[list[loadgen.HostPlan], dict[str, float]]:
        gens = self._gens
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        chunks = split(range(shape.hosts), len(gens))
        bar = self.progress.counter(f"{label}register hosts", total=shape.hosts)
        try:
            answers = await gens.call(
                "register",
                [
                    {"target": target, "hosts": c, "concurrency": 24, "timeout": 3600.0}
                    for c in chunks
                ],
                timeout=3600,
                on_progress=bar.advance,
            )
        finally:
            bar.close()
        node_ids = [nid for a in answers for nid in a["node_ids"]]
        timings["register_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        pools: list[tuple[str, list[str]]] = []
        for cluster in range(shape.clusters):
            members = [node_ids[h] for h in shape.hosts_of(cluster)]
            pools.extend(
                (fleet.pool_name(cluster, j), members) for j in range(shape.pools_per_host)
            )
        bar = self.progress.counter(f"{label}create pools", total=len(pools))
        try:
            answers = await gens.call(
                "create_pools",
                [
                    {"target": target, "pools": c, "concurrency": 16, "timeout": 3600.0}
                    for c in split(pools, len(gens))
                ],
                timeout=3600,
                on_progress=bar.advance,
            )
        finally:
            bar.close()
        pool_ids = [pid for a in answers for pid in a["pool_ids"]]
        timings["create_pools_s"] = time.monotonic() - t0
        plans = []
        for host in range(shape.hosts):
            cluster = shape.cluster_of(host)
            first = cluster * shape.pools_per_host
            plans.append(
                loadgen.HostPlan(
                    index=host,
                    node_id=node_ids[host],
                    pool_ids=tuple(pool_ids[first : first + shape.pools_per_host]),
                )
            )
        return plans, timings

    async def _attach_and_open(
        self, plans: list[loadgen.HostPlan], target: tuple[str, int], label: str
    ) -> dict[str, Any]:
        gens = self._gens
        await gens.call("attach", [{"hosts": c} for c in split(plans, len(gens))], timeout=600)
        bar = self.progress.counter(label, total=len(plans))
        try:
            answers = await gens.call(
                "open",
                [
                    {"target": target, "mode": "stream", "concurrency": 64, "timeout": 3600.0}
                    for _ in range(len(gens))
                ],
                timeout=3600,
                on_progress=bar.advance,
            )
        finally:
            bar.close()
        errors = sum(a["errors"] for a in answers)
        if errors:
            first = next(a["first_error"] for a in answers if a["first_error"])
            raise RuntimeError(f"{errors} hosts failed their first heartbeat: {first}")
        return {
            "seconds": max(a["seconds"] for a in answers),
            "channels": sum(a["channels"] for a in answers),
        }

    async def _in_fresh_etcd(
        self,
        shape: fleet.FleetShape,
        label: str,
        body: Callable[
            [EmbeddedEtcd, EtcdObserver, Path, dict[str, Any]], Coroutine[Any, Any, None]
        ],
    ) -> dict[str, Any]:
        """Run ``body`` against a fresh etcd in a fresh work dir; always clean up."""
        cfg = self.config
        base = cfg.workdir or Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"hb-{label}-", dir=base))
        etcd_settings = EtcdSettings(
            embedded_quota_bytes=8 * 1024**3, embedded_compaction_retention="0"
        )
        result: dict[str, Any] = {
            "hosts": shape.hosts,
            "pools_per_host": shape.pools_per_host,
            "hosts_per_pool": shape.hosts_per_pool,
            "pools": shape.pools,
            "mode": cfg.mode,
            "load_average_start": load_average(),
        }
        try:
            async with EmbeddedEtcd(data_dir=workdir / "etcd", settings=etcd_settings) as etcd:
                observer = EtcdObserver(endpoint=etcd.endpoint)
                await observer.connect()
                try:
                    await body(etcd, observer, workdir, result)
                finally:
                    await observer.close()
        finally:
            for child in list(self._children):
                self._stop(child)
            with contextlib.suppress(Exception):
                await self._gens.call("close", [{}] * len(self._gens), timeout=120)
            if not cfg.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        result["load_average_end"] = load_average()
        return result

    async def run_naive(self) -> dict[str, Any]:
        """The upstream baseline: ``naive_server``, full reports, on its own etcd.

        Its writes per heartbeat are the reports per heartbeat whatever the fleet
        size, so it is measured once per run, with ``--naive-hosts`` hosts.
        """
        cfg = self.config
        shape = fleet.FleetShape(
            hosts=max(1, min(cfg.naive_hosts, max(cfg.hosts))),
            pools_per_host=cfg.pools_per_host,
            hosts_per_pool=cfg.hosts_per_pool,
        )
        self.progress.note(f"== naive baseline: every report written, {shape.hosts:,} hosts")

        async def body(
            etcd: EmbeddedEtcd, observer: EtcdObserver, workdir: Path, result: dict[str, Any]
        ) -> None:
            ctrl = self._start_controller(workdir, etcd.endpoint, naive=True)
            target = (HOST, ctrl.port)
            plans, _ = await self._setup(shape, target, label="naive: ")
            await self._attach_and_open(plans, target, "naive: open streams")
            rev = await observer.quiesce(quiet=1.0, timeout=600, cpu=_cpu_of(ctrl))
            observer.start(rev)
            naive = await self._phase(
                "naive baseline",
                workload="full",
                mode=cfg.mode,
                duration=cfg.naive_duration,
                warmup=1.0,
                change_fraction=cfg.change_fraction,
                track=False,
                server=ctrl,
                etcd_pid=etcd.pid,
                observer=observer,
            )
            writes = naive.writes.get("hoststatus", 0)
            result.update(
                {
                    "heartbeats": naive.heartbeats,
                    "heartbeats_per_s": _round(naive.per_s),
                    "etcd_writes": writes,
                    "etcd_writes_by_family": naive.writes,
                    "etcd_writes_per_heartbeat": _round(stats.ratio(writes, naive.heartbeats), 3),
                    "reports_per_heartbeat": shape.pools_per_host,
                    "controller_cpu_per_heartbeat_us": _round(
                        _us(stats.ratio(naive.server_cpu_s, naive.heartbeats_in_window)), 1
                    ),
                    "errors": naive.errors,
                    "first_error": naive.first_error,
                }
            )

        return await self._in_fresh_etcd(shape, "naive", body)

    async def run_size(self, hosts: int, naive: dict[str, Any]) -> dict[str, Any]:
        cfg = self.config
        shape = fleet.FleetShape(
            hosts=hosts, pools_per_host=cfg.pools_per_host, hosts_per_pool=cfg.hosts_per_pool
        )
        self.progress.note(
            f"== {hosts:,} hosts x {shape.pools_per_host} pools "
            f"({shape.pools:,} pools, {shape.hosts_per_pool} hosts each)"
        )

        async def body(
            etcd: EmbeddedEtcd, observer: EtcdObserver, workdir: Path, result: dict[str, Any]
        ) -> None:
            await self._run_on(etcd, observer, shape, workdir, result, naive)

        return await self._in_fresh_etcd(shape, str(hosts), body)

    async def _run_on(
        self,
        etcd: EmbeddedEtcd,
        observer: EtcdObserver,
        shape: fleet.FleetShape,
        workdir: Path,
        result: dict[str, Any],
        naive: dict[str, Any],
    ) -> None:
        cfg = self.config
        ctrl = self._start_controller(workdir, etcd.endpoint, naive=False)
        target = (HOST, ctrl.port)
        baseline = ctrl.sample()
        setup_started = time.monotonic()
        plans, timings = await self._setup(shape, target)
        opened = await self._attach_and_open(plans, target, "open streams")
        timings["open_s"] = opened["seconds"]
        t0 = time.monotonic()
        rev = await observer.quiesce(quiet=1.0, timeout=3600, cpu=_cpu_of(ctrl))
        timings["settle_s"] = time.monotonic() - t0
        timings["total_s"] = time.monotonic() - setup_started
        result["setup"] = {k: round(v, 1) for k, v in timings.items()}
        result["connections"] = opened["channels"]
        await self._compact(observer, rev)
        observer.start(rev)
        after_setup = ctrl.sample()
        etcd_pid = etcd.pid

        idle = await self._phase(
            "idle (no change)",
            workload="steady",
            mode="stream",
            duration=cfg.idle,
            warmup=0.0,
            change_fraction=0.0,
            track=False,
            server=ctrl,
            etcd_pid=etcd_pid,
            observer=observer,
        )
        steady = await self._phase(
            "steady state",
            workload="steady",
            mode="stream",
            duration=cfg.duration,
            warmup=cfg.warmup,
            change_fraction=cfg.change_fraction,
            track=True,
            profile=f"controller-steady-{shape.hosts}",
            server=ctrl,
            etcd_pid=etcd_pid,
            observer=observer,
        )
        full = await self._phase(
            "full reports",
            workload="full",
            mode=cfg.mode,
            duration=cfg.duration,
            warmup=cfg.warmup,
            change_fraction=cfg.change_fraction,
            track=True,
            profile=f"controller-full-{shape.hosts}",
            server=ctrl,
            etcd_pid=etcd_pid,
            observer=observer,
        )
        final = ctrl.sample()
        await self._gens.call("close", [{}] * len(self._gens), timeout=120)
        self._stop(ctrl)

        ceilings: dict[str, dict[str, PhaseOutcome]] = {}
        if cfg.ceiling:
            fixture = workdir / "ceiling-fixture.pickle"
            docs, _ = await observer.store.get_prefix("pools/")
            with fixture.open("wb") as f:
                pickle.dump(
                    {
                        "assignments": {p.node_id: list(p.pool_ids) for p in plans},
                        "pools": {kv.key[len("pools/") :]: json.loads(kv.value) for kv in docs},
                    },
                    f,
                )
            codecs = ["controller"]
            if (
                cfg.betterproto2_ceiling
                and _controller_has_own_codec()
                and shape.hosts <= BETTERPROTO2_CEILING_MAX_HOSTS
            ):
                codecs.append("betterproto2")
            for codec in codecs:
                server = self._start_ceiling(workdir, fixture, codec)
                ctarget = (HOST, server.port)
                empty = server.sample()
                await self._attach_and_open(plans, ctarget, f"ceiling ({codec}): open streams")
                if codec == "controller":
                    opened_rss = server.sample().rss_bytes - empty.rss_bytes
                    result["ceiling_rss_per_host_kb"] = round(opened_rss / 1024 / shape.hosts, 2)
                ceilings[codec] = {}
                for key, workload, mode in (
                    ("steady", "steady", "stream"),
                    ("full", "full", cfg.mode),
                ):
                    ceilings[codec][key] = await self._phase(
                        f"ceiling ({codec}): {key}",
                        workload=workload,
                        mode=mode,
                        duration=cfg.ceiling_duration,
                        warmup=min(cfg.warmup, 2.0),
                        change_fraction=cfg.change_fraction,
                        server=server,
                        etcd_pid=None,
                        observer=None,
                        track=False,
                        profile=f"ceiling-{codec}-{key}-{shape.hosts}",
                    )
                await self._gens.call("close", [{}] * len(self._gens), timeout=120)
                self._stop(server)

        naive_writes = naive.get("etcd_writes_per_heartbeat")
        rss = {
            "controller_rss_mb": round(final.peak_rss_bytes / 1024**2, 1),
            "controller_rss_steady_mb": round(final.rss_bytes / 1024**2, 1),
            "controller_rss_baseline_mb": round(baseline.rss_bytes / 1024**2, 1),
            "rss_per_host_kb": round(
                (final.rss_bytes - baseline.rss_bytes) / 1024 / shape.hosts, 2
            ),
            "controller_setup_cpu_s": round(after_setup.cpu_s - baseline.cpu_s, 1),
        }
        steady_result = summarize(
            steady,
            ceilings.get("controller", {}).get("steady"),
            ceilings.get("betterproto2", {}).get("steady"),
            naive_writes=naive_writes,
        )
        full_result = summarize(
            full,
            ceilings.get("controller", {}).get("full"),
            ceilings.get("betterproto2", {}).get("full"),
            naive_writes=naive_writes,
        )
        result.update(steady_result)
        result.update(rss)
        result["idle_etcd_writes"] = sum(idle.writes.values())
        result["idle_etcd_writes_by_family"] = idle.writes
        result["idle_heartbeats"] = idle.heartbeats
        result["full_reports"] = {
            **full_result,
            **rss,
            "hosts": shape.hosts,
            "pools_per_host": shape.pools_per_host,
            "mode": cfg.mode,
        }
        result["naive"] = naive


def _cpu_of(child: procs.Child, *also: int) -> Callable[[], float]:
    """CPU seconds of ``child`` plus those of the processes ``also`` (pids)."""
    return lambda: child.sample().cpu_s + sum(procs.sample(pid).cpu_s for pid in also)


def _controller_has_own_codec() -> bool:
    from benchmarks.heartbeat.ceiling import controller_codec

    return controller_codec() is not None


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


def summarize(
    phase: PhaseOutcome,
    ceiling: PhaseOutcome | None,
    ceiling_bp2: PhaseOutcome | None,
    *,
    naive_writes: float | None,
) -> dict[str, Any]:
    """The JSON keys of one workload (see ``--help`` and RESULTS.md for their meaning)."""
    writes = phase.writes.get("hoststatus", 0) + phase.writes.get("hoststatus:delete", 0)
    writes_per_hb = stats.ratio(writes, phase.heartbeats)
    lags = phase.lag.lags if phase.lag is not None else []
    per_s = phase.per_s
    ceiling_per_s = ceiling.per_s if ceiling is not None else None
    out = {
        "heartbeats_per_s": _round(per_s),
        "ceiling_per_s": _round(ceiling_per_s),
        "ratio_to_ceiling": _round(stats.ratio(per_s, ceiling_per_s), 3),
        "ceiling_betterproto2_per_s": _round(ceiling_bp2.per_s if ceiling_bp2 else None),
        "latency_p50_ms": _round(stats.ms(stats.percentile(phase.latencies, 50)), 2),
        "latency_p99_ms": _round(stats.ms(stats.percentile(phase.latencies, 99)), 2),
        "ceiling_latency_p99_ms": _round(
            stats.ms(stats.percentile(ceiling.latencies, 99)) if ceiling else None, 2
        ),
        "heartbeats": phase.heartbeats,
        "etcd_writes": writes,
        "changed_reports": phase.material,
        "etcd_writes_per_heartbeat": _round(writes_per_hb, 6),
        "changed_reports_per_heartbeat": _round(stats.ratio(phase.material, phase.heartbeats), 6),
        "writes_to_changes": _round(stats.ratio(writes, phase.material), 4),
        "naive_etcd_writes_per_heartbeat": _round(naive_writes, 3),
        "write_amplification": _round(stats.ratio(naive_writes, writes_per_hb), 1),
        "etcd_writes_by_family": phase.writes,
        "etcd_puts_total": int(phase.metrics.get("etcd_mvcc_put_total", 0)),
        "etcd_txns_total": int(phase.metrics.get("etcd_mvcc_txn_total", 0)),
        **stats.etcd_stalls(phase.metrics, slow=SLOW_S),
        "aggregation_lag_p50_ms": _round(stats.ms(stats.percentile(lags, 50)), 1),
        "aggregation_lag_p99_ms": _round(stats.ms(stats.percentile(lags, 99)), 1),
        "aggregation_lag_samples": len(lags),
        "aggregation_lag_unobserved": phase.lag.unobserved if phase.lag else 0,
        "controller_cpu_s": _round(phase.server_cpu_s, 2),
        "controller_cpu_utilisation": _round(stats.ratio(phase.server_cpu_s, phase.duration), 3),
        "controller_cpu_per_heartbeat_us": _round(
            _us(stats.ratio(phase.server_cpu_s, phase.heartbeats_in_window)), 1
        ),
        "ceiling_cpu_per_heartbeat_us": _round(
            _us(stats.ratio(ceiling.server_cpu_s, ceiling.heartbeats_in_window))
            if ceiling
            else None,
            1,
        ),
        "cpu_ratio_to_ceiling": _round(
            stats.ratio(
                stats.ratio(ceiling.server_cpu_s, ceiling.heartbeats_in_window)
                if ceiling
                else None,
                stats.ratio(phase.server_cpu_s, phase.heartbeats_in_window),
            ),
            3,
        ),
        "ceiling_cpu_utilisation": _round(
            stats.ratio(ceiling.server_cpu_s, ceiling.duration) if ceiling else None, 3
        ),
        "etcd_cpu_s": _round(phase.etcd_cpu_s, 2),
        "generator_cpu_s": _round(phase.generator_cpu_s, 2),
        "harness_cpu_s": _round(phase.harness_cpu_s, 2),
        "errors": phase.errors,
        "first_error": phase.first_error,
        "full_syncs": phase.full_syncs,
        "duration_s": phase.duration,
    }
    return out


async def run(
    config: Config,
    *,
    progress: Progress,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON document (largest host count at the top)."""
    harness = Harness(config, progress=progress)
    main_task = asyncio.current_task()
    if main_task is not None:  # SIGTERM stops the run cleanly: children and etcd included
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    started = time.monotonic()
    machine = machine_info()
    load_start = load_average()
    harness.gens = GeneratorPool(config.generators, seed=config.seed)
    sweep: list[dict[str, Any]] = []
    naive: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        done = [r for r in sweep if "error" not in r] or sweep or [{"hosts": 0}]
        top = max(done, key=lambda r: int(r["hosts"]))
        return {
            "command": "python -m benchmarks.heartbeat " + " ".join(sys.argv[1:]),
            "machine": machine,
            "load_average_start": load_start,
            "load_average_end": load_average(),
            "elapsed_s": round(time.monotonic() - started, 1),
            "config": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in dataclasses.asdict(config).items()
            },
            **top,
            "naive": naive,
            "sweep": sweep,
        }

    try:
        try:
            naive = await harness.run_naive()
        except Exception:  # noqa: BLE001 - recorded; the sizes are still measured
            naive = {"error": traceback.format_exc()}
            progress.note(f"naive baseline failed:\n{naive['error']}")
        for hosts in config.hosts:
            try:
                sweep.append(await harness.run_size(hosts, naive))
            except Exception:  # noqa: BLE001 - recorded; the next size still runs
                sweep.append({"hosts": hosts, "error": traceback.format_exc()})
                progress.note(f"{hosts:,} hosts failed:\n{sweep[-1]['error']}")
            if on_result is not None:
                partial = document()
                partial["targets"] = stats.evaluate(partial)
                on_result(stats.json_safe(partial))
    finally:
        harness.gens.stop()
    doc = document()
    doc["targets"] = stats.evaluate(doc)
    safe: dict[str, Any] = stats.json_safe(doc)
    return safe
