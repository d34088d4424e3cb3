"""Setting a fleet up through the controller's public API, before anything is measured.

:func:`register_fleet` registers every simulated host (``RegisterNode``) and
creates each cluster's pools (``CreatePool``, assigned to the cluster's hosts),
split over the generators; :func:`attach_and_open` hands each generator its
hosts and opens one heartbeat stream per host with a first, full heartbeat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks.heartbeat import fleet, generators, loadgen
from benchmarks.heartbeat.generators import GeneratorPool
from benchmarks.heartbeat.progress import Progress


@dataclass(frozen=True, slots=True)
class Registered:
    """The hosts' plans (node id, pool ids) and the seconds each step took."""

    plans: list[loadgen.HostPlan]
    register_s: float
    create_pools_s: float


@dataclass(frozen=True, slots=True)
class Opened:
    """Seconds the slowest generator took to open its streams, and the channels opened."""

    seconds: float
    channels: int


async def register_fleet(
    gens: GeneratorPool,
    progress: Progress,
    *,
    shape: fleet.FleetShape,
    target: tuple[str, int],
    label: str = "",
) -> Registered:
    """Register every host and create every cluster's pools through the public API."""
    t0 = time.monotonic()
    chunks = generators.split(range(shape.hosts), len(gens))
    bar = progress.counter(f"{label}register hosts", total=shape.hosts)
    try:
        answers = await gens.call(
            "register",
            [{"target": target, "hosts": c, "concurrency": 24, "timeout": 3600.0} for c in chunks],
            timeout=3600,
            on_progress=bar.advance,
        )
    finally:
        bar.close()
    node_ids = [nid for a in answers for nid in a["node_ids"]]
    register_s = time.monotonic() - t0

    t0 = time.monotonic()
    pools: list[tuple[str, list[str]]] = []
    for cluster in range(shape.clusters):
        members = [node_ids[h] for h in shape.hosts_of(cluster)]
        pools.extend((fleet.pool_name(cluster, j), members) for j in range(shape.pools_per_host))
    bar = progress.counter(f"{label}create pools", total=len(pools))
    try:
        answers = await gens.call(
            "create_pools",
            [
                {"target": target, "pools": c, "concurrency": 16, "timeout": 3600.0}
                for c in generators.split(pools, len(gens))
            ],
            timeout=3600,
            on_progress=bar.advance,
        )
    finally:
        bar.close()
    pool_ids = [pid for a in answers for pid in a["pool_ids"]]
    create_pools_s = time.monotonic() - t0
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
    return Registered(plans=plans, register_s=register_s, create_pools_s=create_pools_s)


async def attach_and_open(
    gens: GeneratorPool,
    progress: Progress,
    *,
    plans: list[loadgen.HostPlan],
    target: tuple[str, int],
    label: str,
) -> Opened:
    """Give each generator its hosts, and open one stream per host with a full heartbeat."""
    await gens.call(
        "attach", [{"hosts": c} for c in generators.split(plans, len(gens))], timeout=600
    )
    bar = progress.counter(label, total=len(plans))
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
    return Opened(
        seconds=max(a["seconds"] for a in answers),
        channels=sum(a["channels"] for a in answers),
    )
