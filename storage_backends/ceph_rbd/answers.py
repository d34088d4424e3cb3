"""What the cluster's answers say: pure readings of ``ceph health`` and ``ceph df``.

No librados here: the backend runs the commands (``mon_command``) and hands the
decoded JSON over, so these rules are tested with plain dicts. See
:mod:`storage_backends.ceph_rbd` for why these figures and not others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from storage_backends import base


@dataclass(frozen=True, slots=True)
class Capacity:
    """A pool's capacity in logical bytes; ``total == used + available``."""

    total: int
    used: int
    available: int


_HEALTH_BY_STATUS: Final = {
    "HEALTH_OK": base.PoolHealth.HEALTHY,
    "HEALTH_WARN": base.PoolHealth.DEGRADED,
    "HEALTH_ERR": base.PoolHealth.ERROR,
}


def classify_health(doc: Any) -> tuple[base.PoolHealth, str]:
    """Map ``ceph health -f json`` to (health, message); the message is empty when OK.

    Case 1: HEALTH_OK -> HEALTHY, no message.
    Case 2: HEALTH_WARN / HEALTH_ERR -> DEGRADED / ERROR, message "cluster
    health STATUS: <summary> (<CHECK>); ..." over the checks that are not
    muted, in the order the cluster gave them.
    Case 3: anything else (no status, an unknown one) -> DEGRADED saying so:
    the cluster answered, but we cannot vouch for it.
    """
    status = doc.get("status") if isinstance(doc, dict) else None
    health = _HEALTH_BY_STATUS.get(status) if isinstance(status, str) else None
    if health is None:
        return base.PoolHealth.DEGRADED, f"cluster health unknown: status {status!r}"
    if health is base.PoolHealth.HEALTHY:
        return health, ""
    checks = doc.get("checks")
    parts = []
    if isinstance(checks, dict):
        for name, check in checks.items():
            if not isinstance(check, dict) or check.get("muted"):
                continue
            summary = check.get("summary")
            message = summary.get("message") if isinstance(summary, dict) else None
            parts.append(f"{message} ({name})" if message else str(name))
    detail = "; ".join(parts) if parts else "no checks reported"
    return health, f"cluster health {status}: {detail}"


def pool_capacity(doc: Any, *, pool: str) -> Capacity | str:
    """The capacity of ``pool`` from ``ceph df detail -f json``, or why it is unknown.

    used = ``stored`` (``bytes_used`` on clusters too old to report
    ``stored``); available = ``max_avail``, capped by ``quota_bytes - used``
    when the pool has a byte quota; total = used + available. Returns a
    message instead when the pool or its figures are missing (a pool created
    moments ago is not in ``ceph df`` until the mgr's next report).
    """
    pools = doc.get("pools") if isinstance(doc, dict) else None
    entry = next(
        (p for p in pools or [] if isinstance(p, dict) and p.get("name") == pool),
        None,
    )
    if entry is None:
        return f"pool '{pool}' is not listed in ceph df"
    stats = entry.get("stats")
    if not isinstance(stats, dict):
        return f"ceph df has no stats for pool '{pool}'"
    used = stats.get("stored", stats.get("bytes_used"))
    max_avail = stats.get("max_avail")
    if not (_is_size(used) and _is_size(max_avail)):
        return f"ceph df has no usage figures for pool '{pool}'"
    available = max_avail
    quota = stats.get("quota_bytes", 0)
    if _is_size(quota) and quota > 0:
        available = max(0, min(available, quota - used))
    return Capacity(total=used + available, used=used, available=available)


def _is_size(value: object) -> TypeGuard[int]:
    """A byte count: a non-negative int (JSON true/false are not sizes)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
