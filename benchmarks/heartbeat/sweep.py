"""One host count of the sweep, on a fresh etcd.

1. **Set-up (not timed as throughput).** Start one ``qvdc`` replica in its own
   process; register every host and create its cluster's pools through the
   public API (:mod:`benchmarks.heartbeat.provisioning`); open one
   ``StreamHeartbeat`` per host with a first, full heartbeat; wait until etcd
   and the controller are quiet.
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
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.heartbeat import fleet, loadgen, procs, provisioning, results
from benchmarks.heartbeat.harness import HOST, Environment, Harness
from benchmarks.heartbeat.phases import PhaseOutcome, cpu_of

BETTERPROTO2_CEILING_MAX_HOSTS = 10_000
"""Above this, the betterproto2-codec ceiling (informational) is skipped: opening its
streams alone costs ~1.5 ms per host (full pool definitions encoded by betterproto2)."""


@dataclass(frozen=True, slots=True)
class _Ceiling:
    """The ceiling's phases by workload ("steady", "full"), per codec."""

    phases: dict[str, dict[str, PhaseOutcome]]
    rss_per_host_kb: float | None

    def phase(self, codec: str, workload: str) -> PhaseOutcome | None:
        return self.phases.get(codec, {}).get(workload)


@dataclass(frozen=True, slots=True)
class _Measured:
    """What one host count measured, before it is summarized."""

    setup: results.SetupTimes
    connections: int
    idle: PhaseOutcome
    steady: PhaseOutcome
    full: PhaseOutcome
    ceiling: _Ceiling
    memory: results.Memory


async def run_size(
    harness: Harness,
    hosts: int,
    *,
    naive: results.NaiveResult | None,
    naive_json: dict[str, Any],
) -> results.SizeResult:
    """Measure one host count in a fresh etcd; see the module docstring."""
    cfg = harness.config
    shape = fleet.FleetShape(
        hosts=hosts, pools_per_host=cfg.pools_per_host, hosts_per_pool=cfg.hosts_per_pool
    )
    harness.progress.note(
        f"== {hosts:,} hosts x {shape.pools_per_host} pools "
        f"({shape.pools:,} pools, {shape.hosts_per_pool} hosts each)"
    )

    async def body(env: Environment) -> _Measured:
        return await _measure(harness, env, shape)

    measured, loads = await harness.in_fresh_etcd(str(hosts), body)
    naive_writes = naive.etcd_writes_per_heartbeat if naive is not None else None
    ceiling = measured.ceiling
    return results.SizeResult(
        fleet=results.FleetInfo.of(shape, mode=cfg.mode),
        loads=loads,
        setup=measured.setup,
        connections=measured.connections,
        ceiling_rss_per_host_kb=ceiling.rss_per_host_kb,
        steady=results.summarize(
            measured.steady,
            ceiling.phase("controller", "steady"),
            ceiling.phase("betterproto2", "steady"),
            naive_writes=naive_writes,
        ),
        full=results.summarize(
            measured.full,
            ceiling.phase("controller", "full"),
            ceiling.phase("betterproto2", "full"),
            naive_writes=naive_writes,
        ),
        memory=measured.memory,
        idle_etcd_writes_by_family=measured.idle.writes,
        idle_heartbeats=measured.idle.heartbeats,
        naive=naive_json,
    )


async def _measure(harness: Harness, env: Environment, shape: fleet.FleetShape) -> _Measured:
    cfg = harness.config
    observer = env.observer
    ctrl = harness.start_controller(env.workdir, env.etcd.endpoint, naive=False)
    target = (HOST, ctrl.port)
    baseline = ctrl.sample()
    setup_started = time.monotonic()
    registered = await provisioning.register_fleet(
        harness.gens, harness.progress, shape=shape, target=target
    )
    plans = registered.plans
    opened = await provisioning.attach_and_open(
        harness.gens, harness.progress, plans=plans, target=target, label="open streams"
    )
    t0 = time.monotonic()
    rev = await observer.quiesce(quiet=1.0, timeout=3600, cpu=cpu_of(ctrl))
    settle_s = time.monotonic() - t0
    setup = results.SetupTimes(
        register_s=registered.register_s,
        create_pools_s=registered.create_pools_s,
        open_s=opened.seconds,
        settle_s=settle_s,
        total_s=time.monotonic() - setup_started,
    )
    await harness.phases.compact(observer, rev)
    observer.start(rev)
    after_setup = ctrl.sample()
    etcd_pid = env.etcd.pid

    idle = await harness.phases.run(
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
    steady = await harness.phases.run(
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
    full = await harness.phases.run(
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
    await harness.gens.call("close", [{}] * len(harness.gens), timeout=120)
    harness.stop(ctrl)

    if cfg.ceiling:
        ceiling = await _run_ceilings(harness, env, shape, plans)
    else:
        ceiling = _Ceiling(phases={}, rss_per_host_kb=None)
    memory = results.Memory(
        controller_rss_mb=round(final.peak_rss_bytes / 1024**2, 1),
        controller_rss_steady_mb=round(final.rss_bytes / 1024**2, 1),
        controller_rss_baseline_mb=round(baseline.rss_bytes / 1024**2, 1),
        rss_per_host_kb=round((final.rss_bytes - baseline.rss_bytes) / 1024 / shape.hosts, 2),
        controller_setup_cpu_s=round(after_setup.cpu_s - baseline.cpu_s, 1),
    )
    return _Measured(
        setup=setup,
        connections=opened.channels,
        idle=idle,
        steady=steady,
        full=full,
        ceiling=ceiling,
        memory=memory,
    )


async def _run_ceilings(
    harness: Harness, env: Environment, shape: fleet.FleetShape, plans: list[loadgen.HostPlan]
) -> _Ceiling:
    """The bare server with the same fleet, per codec, both workloads."""
    cfg = harness.config
    fixture = env.workdir / "ceiling-fixture.pickle"
    await _write_fixture(env, plans, fixture)
    codecs = ["controller"]
    if cfg.betterproto2_ceiling and shape.hosts <= BETTERPROTO2_CEILING_MAX_HOSTS:
        codecs.append("betterproto2")
    phases: dict[str, dict[str, PhaseOutcome]] = {}
    rss_per_host_kb: float | None = None
    for codec in codecs:
        server: procs.Child = harness.start_ceiling(env.workdir, fixture, codec)
        ctarget = (HOST, server.port)
        empty = server.sample()
        await provisioning.attach_and_open(
            harness.gens,
            harness.progress,
            plans=plans,
            target=ctarget,
            label=f"ceiling ({codec}): open streams",
        )
        if codec == "controller":
            opened_rss = server.sample().rss_bytes - empty.rss_bytes
            rss_per_host_kb = round(opened_rss / 1024 / shape.hosts, 2)
        phases[codec] = {}
        for key, workload, mode in (("steady", "steady", "stream"), ("full", "full", cfg.mode)):
            phases[codec][key] = await harness.phases.run(
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
        await harness.gens.call("close", [{}] * len(harness.gens), timeout=120)
        harness.stop(server)
    return _Ceiling(phases=phases, rss_per_host_kb=rss_per_host_kb)


async def _write_fixture(env: Environment, plans: list[loadgen.HostPlan], path: Path) -> None:
    """What the ceiling server answers with: the assignments and the pool definitions."""
    docs, _ = await env.observer.controller_store.get_prefix("pools/")
    with path.open("wb") as f:
        pickle.dump(
            {
                "assignments": {p.node_id: list(p.pool_ids) for p in plans},
                "pools": {kv.key[len("pools/") :]: json.loads(kv.value) for kv in docs},
            },
            f,
        )
