"""Process-wide tuning of a controller replica, imported only by ``qvdc.__main__``.

What a replica's process sets before it starts, and nothing any module needs to
work: CPython's collector (:func:`tune_gc`, :mod:`qvdc.runtime.collector`) and
grpclib's per-stream primitives (:mod:`qvdc.transport.lean_grpclib`: 6 KB less per
open stream). Keeping them here, out of the modules the tests and the node daemon
import, means importing qvdc changes no interpreter or library state.
"""

from __future__ import annotations

import gc

from qvdc.runtime import collector
from qvdc.transport import lean_grpclib


def tune_process() -> None:
    """Tune the collector and install the lean grpclib primitives."""
    tune_gc()
    lean_grpclib.install()


def tune_gc() -> None:
    """Collect young objects less often, so fewer short-lived ones reach the old generation.

    A replica holds millions of long-lived objects (the watch cache, one stream per
    node). With CPython's default thresholds (700, 10, 10) every young collection
    promotes the objects of the heartbeats in flight, and a full collection
    followed every few seconds at 10,000 nodes: latency and aggregation-lag
    spikes of a second. A first generation of 50,000 objects makes promotions,
    and so full collections, much rarer; each young collection stays a
    millisecond or two.

    What survives a full collection is then frozen (:mod:`qvdc.runtime.collector`),
    so the next full collection visits only what was allocated since, not the
    whole fleet.
    """
    gc.set_threshold(50_000, 20, 10)
    collector.CollectorPolicy().install()
