"""Desired versus reported pools of one host, and which reports are worth writing.

Two small decisions the heartbeat intake makes for every heartbeat, kept pure here:

* ``diff_assignments``: which pools the controller wants the host to have but the host did
  not report (``missing``: the intake records them UNMOUNTED for that host, DESIGN.md §5), and
  which pools the host reported without being assigned (``unexpected``: kept and flagged by
  aggregation, never counted; the host's reconciler detaches them on the next response).
* ``material_reports``: which reports changed enough against the last stored one to be worth
  an etcd write. The rule itself (``kits.materiality``) is shared with the node daemon, which
  uses it to decide what a delta heartbeat carries, so both sides agree on "material".

Results are sorted tuples or lists in a stated order, never set-iteration order, so that
what the controller writes and logs is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from qvdc.domain.model import PoolId, PoolReport
from qvdc.kits import materiality


@dataclass(frozen=True, slots=True)
class AssignmentDiff:
    """``missing``: desired but not reported; ``unexpected``: reported but not desired.

    Both sorted by pool id.
    """

    missing: tuple[PoolId, ...]
    unexpected: tuple[PoolId, ...]


def diff_assignments(
    *, desired: AbstractSet[PoolId], reported: AbstractSet[PoolId]
) -> AssignmentDiff:
    """Return the pools a host lacks (``missing``) and has unasked (``unexpected``), sorted."""
    return AssignmentDiff(
        missing=tuple(sorted(desired - reported)),
        unexpected=tuple(sorted(reported - desired)),
    )


def material_reports(
    *,
    previous: Mapping[PoolId, PoolReport],
    reports: Iterable[PoolReport],
    fraction: float = materiality.DEFAULT_FRACTION,
    min_bytes: int = materiality.DEFAULT_MIN_BYTES,
) -> list[PoolReport]:
    """Return the reports that changed materially against ``previous`` (keyed by pool id).

    Cases, per pool:

    * no previous report                    -> material (first sighting);
    * previous report, material change      -> material (``materiality.is_material_change``:
      health, mount path, error, volume count, or capacity beyond the threshold);
    * previous report, no material change   -> dropped;
    * the same pool reported twice          -> only the last report is considered.

    The result keeps the order in which pools first appear in ``reports``.
    """
    latest: dict[PoolId, PoolReport] = {}
    for report in reports:
        latest[report.pool_id] = report
    return [
        report
        for pool_id, report in latest.items()
        if materiality.is_material_change(
            previous.get(pool_id), report, fraction=fraction, min_bytes=min_bytes
        )
    ]
