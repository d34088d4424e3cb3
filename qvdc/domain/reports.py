"""Whether a host's report for a pool makes physical sense, as a pure rule.

A host's figures are trusted only as far as they are consistent: a report whose
capacities do not fit the wire type (uint64) or contradict each other (more used than
there is, more available than there is) says the host's measurement is broken, so the
row is recorded as ERROR naming the contradiction, with its capacities zeroed so that
nothing downstream (the pool's capacity, a scheduler) counts them. It is never stored
as HEALTHY. A health that is not a :class:`Health` member (the API refuses unknown
enum values; this rule does not rely on it) is an inconsistency too. Used plus
available may be less than total (reserved blocks), so only each alone is bounded.
The intake applies :func:`checked` to every report it writes.
"""

from __future__ import annotations

from dataclasses import replace

from qvdc.domain.model import Health, PoolReport

#: The largest value of the wire's uint64 capacity fields.
UINT64_MAX = 2**64 - 1
#: The largest value of the wire's uint32 volume count.
UINT32_MAX = 2**32 - 1


def inconsistency(report: PoolReport) -> str | None:
    """Why ``report`` cannot be true, or None when it can."""
    try:
        Health(report.health)
    except ValueError:
        return f"health {report.health!r} is not a known value"
    for name in ("total_bytes", "used_bytes", "available_bytes"):
        value = getattr(report, name)
        if not 0 <= value <= UINT64_MAX:
            return f"{name} {value} is outside 0..2^64-1"
    if not 0 <= report.volume_count <= UINT32_MAX:
        return f"volume_count {report.volume_count} is outside 0..2^32-1"
    total = report.total_bytes
    if report.used_bytes > total:
        return f"used {report.used_bytes} B is more than total {total} B"
    if report.available_bytes > total:
        return f"available {report.available_bytes} B is more than total {total} B"
    return None


def checked(report: PoolReport) -> PoolReport:
    """``report`` itself when consistent, else an ERROR report saying why (capacities 0)."""
    reason = inconsistency(report)
    if reason is None:
        return report
    return replace(
        report,
        health=Health.ERROR,
        total_bytes=0,
        used_bytes=0,
        available_bytes=0,
        error_message=f"inconsistent report from the host: {reason}",
    )
