"""The naive baseline: what upstream would write, measured once per run.

A replica that writes every report of every heartbeat
(:mod:`benchmarks.heartbeat.naive_server`) on its own etcd, driven by
``--naive-hosts`` hosts sending full reports as upstream nodes do. Its writes
per heartbeat are the reports per heartbeat whatever the fleet size, so one
measurement serves every host count's write-amplification ratio.
"""

from __future__ import annotations

from benchmarks.heartbeat import fleet, provisioning, results
from benchmarks.heartbeat.harness import HOST, Environment, Harness
from benchmarks.heartbeat.phases import PhaseOutcome, cpu_of


async def run_naive(harness: Harness) -> results.NaiveResult:
    """Measure the naive baseline in a fresh etcd; see the module docstring."""
    cfg = harness.config
    shape = fleet.FleetShape(
        hosts=max(1, min(cfg.naive_hosts, max(cfg.hosts))),
        pools_per_host=cfg.pools_per_host,
        hosts_per_pool=cfg.hosts_per_pool,
    )
    harness.progress.note(f"== naive baseline: every report written, {shape.hosts:,} hosts")

    async def body(env: Environment) -> PhaseOutcome:
        ctrl = harness.start_controller(env.workdir, env.etcd.endpoint, naive=True)
        target = (HOST, ctrl.port)
        registered = await provisioning.register_fleet(
            harness.gens, harness.progress, shape=shape, target=target, label="naive: "
        )
        await provisioning.attach_and_open(
            harness.gens,
            harness.progress,
            plans=registered.plans,
            target=target,
            label="naive: open streams",
        )
        rev = await env.observer.quiesce(quiet=1.0, timeout=600, cpu=cpu_of(ctrl))
        env.observer.start(rev)
        return await harness.phases.run(
            "naive baseline",
            workload="full",
            mode=cfg.mode,
            duration=cfg.naive_duration,
            warmup=1.0,
            change_fraction=cfg.change_fraction,
            track=False,
            server=ctrl,
            etcd_pid=env.etcd.pid,
            observer=env.observer,
        )

    phase, loads = await harness.in_fresh_etcd("naive", body)
    return results.NaiveResult.of(
        phase, fleet=results.FleetInfo.of(shape, mode=cfg.mode), loads=loads
    )
