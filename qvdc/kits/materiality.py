"""When has a pool report changed enough to be worth writing or sending?

Shared by the controller (what to write to etcd) and the node daemon (what to
send in a delta heartbeat), so both sides agree on one rule:

* health, mount path, error message or volume count changed -> material;
* any capacity figure moved by more than ``fraction`` of the total capacity
  or by more than ``min_bytes``, whichever is smaller -> material;
* otherwise (capacity drift below the threshold) -> not material.
"""

from __future__ import annotations

from typing import Protocol


class ReportLike(Protocol):
    @property
    def health(self) -> int: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def used_bytes(self) -> int: ...
    @property
    def available_bytes(self) -> int: ...
    @property
    def mount_path(self) -> str: ...
    @property
    def volume_count(self) -> int: ...
    @property
    def error_message(self) -> str: ...


DEFAULT_FRACTION = 0.01
DEFAULT_MIN_BYTES = 1024**3


def capacity_threshold(total_bytes: int, *, fraction: float, min_bytes: int) -> int:
    """Bytes a capacity figure must move by to count as material."""
    return min(int(total_bytes * fraction), min_bytes)


def is_material_change(
    old: ReportLike | None,
    new: ReportLike,
    *,
    fraction: float = DEFAULT_FRACTION,
    min_bytes: int = DEFAULT_MIN_BYTES,
) -> bool:
    """True if ``new`` differs materially from ``old`` (always true when there is no ``old``).

    Runs once per report of every full heartbeat, so it is written flat: health
    values are ints (IntEnums compare by value), and the threshold is
    :func:`capacity_threshold` inlined.
    """
    if old is None:
        return True
    if (
        old.health != new.health
        or old.mount_path != new.mount_path
        or old.error_message != new.error_message
        or old.volume_count != new.volume_count
    ):
        return True
    old_total = old.total_bytes
    new_total = new.total_bytes
    threshold = min(int((old_total if old_total > new_total else new_total) * fraction), min_bytes)
    return (
        abs(old_total - new_total) > threshold
        or abs(old.used_bytes - new.used_bytes) > threshold
        or abs(old.available_bytes - new.available_bytes) > threshold
    )
