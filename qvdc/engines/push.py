"""Assignment push: wake a node's heartbeat stream when what it must mount changes.

Each open ``StreamHeartbeat`` registers a wake-up callback for its node. When
``assignments/<node>/<pool>`` changes, or the definition of a pool the node
is assigned changes (``pools/<pool>``), the node's callbacks are called
(synchronously, from the watch's change feed) and the stream sends an
unsolicited response at once, instead of on the next heartbeat up to an
interval later.

A callback rather than a waiting task per stream: with 100,000 open streams
an idle ``asyncio.Event`` and a task parked on it cost about 3 KB each
(measured), for a push that happens a few times a day.
"""

from __future__ import annotations

from collections.abc import Callable

from qvdc.engines.view import ClusterView
from qvdc.store.etcd import KeyValue

Wake = Callable[[], None]
"""Called when the node's assignment may have changed; must not block or raise."""


class PushHub:
    def __init__(self, *, view: ClusterView) -> None:
        self._view = view
        self._sessions: dict[str, tuple[Wake, ...]] = {}  # usually one stream per node
        #: Streams opened (a node's first and every reconnection), for ``qvdc.metrics``.
        self.opened = 0
        view.subscribe(self._on_change)

    def open(self, node_id: str, wake: Wake) -> None:
        self.opened += 1
        self._sessions[node_id] = (*self._sessions.get(node_id, ()), wake)

    def close(self, node_id: str, wake: Wake) -> None:
        # == not "is": a bound method is a new object at every attribute access.
        remaining = tuple(w for w in self._sessions.get(node_id, ()) if w != wake)
        if remaining:
            self._sessions[node_id] = remaining
        else:
            self._sessions.pop(node_id, None)

    @property
    def open_streams(self) -> int:
        return sum(len(v) for v in self._sessions.values())

    def _wake(self, node_id: str) -> None:
        for wake in self._sessions.get(node_id, ()):
            wake()

    def _on_change(self, key: str, old: KeyValue | None, new: KeyValue | None) -> None:
        parts = key.split("/")
        if parts[0] == "assignments" and len(parts) == 3:
            self._wake(parts[1])
        elif parts[0] == "pools" and len(parts) == 2:
            for node_id in self._view.nodes_assigned_to(parts[1]):
                self._wake(node_id)
