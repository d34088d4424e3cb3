"""Assignment push: wake a node's heartbeat stream when what it must mount changes.

Each open ``StreamHeartbeat`` registers an ``asyncio.Event`` for its node.
When ``assignments/<node>/<pool>`` changes, or the definition of a pool the
node is assigned changes (``pools/<pool>``), the node's events are set and the
stream sends an unsolicited response at once, instead of on the next
heartbeat up to an interval later.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from qvdc.engines.view import ClusterView
from qvdc.store.etcd import KeyValue


class PushHub:
    def __init__(self, *, view: ClusterView) -> None:
        self._view = view
        self._sessions: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        view.subscribe(self._on_change)

    def open(self, node_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._sessions[node_id].add(event)
        return event

    def close(self, node_id: str, event: asyncio.Event) -> None:
        events = self._sessions.get(node_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._sessions[node_id]

    @property
    def open_streams(self) -> int:
        return sum(len(v) for v in self._sessions.values())

    def _wake(self, node_id: str) -> None:
        for event in self._sessions.get(node_id, ()):
            event.set()

    def _on_change(self, key: str, old: KeyValue | None, new: KeyValue | None) -> None:
        parts = key.split("/")
        if parts[0] == "assignments" and len(parts) == 3:
            self._wake(parts[1])
        elif parts[0] == "pools" and len(parts) == 2:
            for node_id in self._view.nodes_assigned_to(parts[1]):
                self._wake(node_id)
