"""The naive baseline's server: a replica that writes every report of every heartbeat.

Upstream writes each pool report of each heartbeat to etcd; the benchmark's
write-amplification ratio compares QvDC with that. The harness starts this
module (``python -m benchmarks.heartbeat.naive_server``) with ``qvdc``'s own
arguments: it is the production replica and entry point (``qvdc.__main__``,
same process tuning), with two parts replaced through ``Controller``'s public
parameters:

* the intake's materiality rule says yes to every report, so every report is
  written (:func:`always_material`);
* the committer's buffer keeps every submission, in order (:class:`OrderedBuffer`),
  instead of the latest value per key: a report submitted twice before a
  commit is written twice.
"""

from __future__ import annotations

import collections

from qvdc import __main__ as qvdc_main
from qvdc import app
from qvdc.engines.committer import Write
from qvdc.kits.materiality import ReportLike
from qvdc.settings import ControllerSettings
from qvdc.store.etcd import EtcdStore


class OrderedBuffer:
    """Every write in submission order. A batch ends before a key it already holds
    (etcd rejects a key twice in one transaction), so that key goes in the next one."""

    def __init__(self) -> None:
        self._queue: collections.deque[Write] = collections.deque()

    def add(self, key: str, value: bytes | None) -> None:
        self._queue.append((key, value))

    def take(self, limit: int) -> list[Write]:
        queue = self._queue
        batch: list[Write] = []
        keys: set[str] = set()
        while queue and len(batch) < limit and queue[0][0] not in keys:
            key, value = queue.popleft()
            keys.add(key)
            batch.append((key, value))
        return batch

    def put_back(self, batch: list[Write]) -> None:
        self._queue.extendleft(reversed(batch))

    def __len__(self) -> int:
        return len(self._queue)


def always_material(
    old: ReportLike | None, new: ReportLike, *, fraction: float, min_bytes: int
) -> bool:
    """Every report is worth writing, as upstream has it."""
    return True


def build(*, store: EtcdStore, settings: ControllerSettings) -> app.Controller:
    """The replica with the naive intake rule and write buffer."""
    return app.Controller(
        store=store,
        settings=settings,
        write_buffer=OrderedBuffer(),
        materiality_rule=always_material,
    )


if __name__ == "__main__":
    qvdc_main.main(factory=build)
