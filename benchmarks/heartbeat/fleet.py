"""The simulated fleet: which hosts share which pools, and how their reports move.

Layout. Hosts are grouped into clusters of ``hosts_per_pool`` hosts; each
cluster shares ``pools_per_host`` NFS pools, every one assigned to every host
of the cluster (like a rack or a vSphere-style cluster mounting the same
datastores). So each host reports ``pools_per_host`` pools and the pool count
stays realistic: ``ceil(hosts / hosts_per_pool) * pools_per_host`` (with the
defaults, half as many pools as hosts).

Reports. Every pool on every host starts HEALTHY with 10 TiB of capacity.
Each heartbeat round, each report:

* drifts *below* the material threshold (``qvdc.kits.materiality``: 1 % of the
  capacity or 1 GiB, whichever is smaller): ``used_bytes`` moves within
  +/- a quarter of the threshold around the last material value, so drift
  never accumulates into a material change; or, with probability
  ``change_fraction``,
* changes *materially*: half of the time its health flips (HEALTHY <->
  DEGRADED), half of the time its usage jumps by twice the threshold.

:meth:`PoolState.next_report` returns the report and whether it is material
by that very rule, so what the generator counts as intended changes is exactly
what the controller must write.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from benchmarks.heartbeat.wire import ReportEncoder, ReportValues
from qvdc.kits import materiality

HEALTHY = 1
DEGRADED = 2
HEALTH_NAMES = {0: "UNKNOWN", 1: "HEALTHY", 2: "DEGRADED", 3: "ERROR", 4: "UNMOUNTED"}

TOTAL_BYTES = 10 * 1024**4
VOLUME_COUNT = 12
THRESHOLD = materiality.capacity_threshold(
    TOTAL_BYTES, fraction=materiality.DEFAULT_FRACTION, min_bytes=materiality.DEFAULT_MIN_BYTES
)
"""Bytes a capacity figure must move by to be material (1 GiB for 10 TiB)."""

DRIFT = THRESHOLD // 4
JUMP = 2 * THRESHOLD


@dataclass(frozen=True, slots=True)
class FleetShape:
    """How many hosts, pools per host, and hosts sharing each pool."""

    hosts: int
    pools_per_host: int = 8
    hosts_per_pool: int = 16

    def __post_init__(self) -> None:
        if self.hosts < 1 or self.pools_per_host < 1 or self.hosts_per_pool < 1:
            raise ValueError("hosts, pools_per_host and hosts_per_pool must be >= 1")

    @property
    def clusters(self) -> int:
        return math.ceil(self.hosts / self.hosts_per_pool)

    @property
    def pools(self) -> int:
        return self.clusters * self.pools_per_host

    @property
    def reports(self) -> int:
        """Host-pool pairs: rows in ``hoststatus/``."""
        return self.hosts * self.pools_per_host

    def cluster_of(self, host: int) -> int:
        return host // self.hosts_per_pool

    def hosts_of(self, cluster: int) -> range:
        start = cluster * self.hosts_per_pool
        return range(start, min(start + self.hosts_per_pool, self.hosts))


def hostname(host: int) -> str:
    return f"bench-h{host:07d}"


def management_ip(host: int) -> str:
    return f"10.{(host >> 16) & 255}.{(host >> 8) & 255}.{host & 255}"


def pool_name(cluster: int, index: int) -> str:
    return f"bench-c{cluster:06d}-p{index}"


def mount_path(pool_id: str) -> str:
    return f"/var/lib/quantix/pools/{pool_id}"


class PoolState:
    """One host's view of one pool: its current base values and the last material report."""

    __slots__ = ("_rng", "base_used", "encoder", "health", "last", "mount", "pool_id")

    def __init__(self, *, pool_id: str, rng: random.Random) -> None:
        self.pool_id = pool_id
        self.mount = mount_path(pool_id)
        self.encoder = ReportEncoder(pool_id=pool_id, mount_path=self.mount)
        self._rng = rng
        self.health = HEALTHY
        self.base_used = rng.randrange(TOTAL_BYTES // 5, TOTAL_BYTES // 2)
        self.last: ReportValues | None = None

    def _values(self) -> ReportValues:
        used = self.base_used + self._rng.randint(-DRIFT, DRIFT)
        return ReportValues(
            health=self.health,
            total_bytes=TOTAL_BYTES,
            used_bytes=used,
            available_bytes=TOTAL_BYTES - used,
            volume_count=VOLUME_COUNT,
            mount_path=self.mount,
        )

    def change(self) -> None:
        """Make the next report material: flip health, or jump usage by 2 thresholds."""
        if self._rng.random() < 0.5:
            self.health = DEGRADED if self.health == HEALTHY else HEALTHY
        elif self.base_used > TOTAL_BYTES // 2:
            self.base_used -= JUMP
        else:
            self.base_used += JUMP

    def next_report(self, *, change: bool) -> tuple[ReportValues, bool]:
        """This round's report and whether it differs materially from the last material one."""
        if change:
            self.change()
        values = self._values()
        material = materiality.is_material_change(self.last, values)
        if material:
            self.last = values
        return values, material
