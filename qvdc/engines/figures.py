"""Each node's latest heartbeat figures (CPU, memory, load, running VMs), in memory.

The heartbeat carries the host's own measurements; the controller stores none of them in
etcd (the heartbeat path writes nothing per heartbeat: ``qvdc.engines.intake``). The
replica that receives a node's heartbeats keeps the latest figures here, one small
record per node updated in place (no record allocated per heartbeat; it refers to the
request's own numbers), and GetNodeMetrics reads them: about 250 bytes per node (the
record, its dict entry, the floats it keeps alive), a few attribute stores per heartbeat.
Their time is the monitor's wall time of the same heartbeat.

So the figures are where the node heartbeats: another replica has none for it (the API
says which replica holds them), and they are as old as the node's last heartbeat (the
API refuses them once the node is OFFLINE or silent past its grace).
"""

from __future__ import annotations

from typing import Protocol

from qvdc.engines.view import ClusterView
from qvdc.store import keys
from qvdc.store.etcd import KeyValue


class HeartbeatFigures(Protocol):
    """What a heartbeat carries of the host's figures (``UpdateHeartbeatRequest``)."""

    @property
    def cpu_usage_percent(self) -> float: ...
    @property
    def memory_used_mib(self) -> int: ...
    @property
    def memory_total_mib(self) -> int: ...
    @property
    def running_vm_count(self) -> int: ...
    @property
    def load_1m(self) -> float: ...
    @property
    def load_5m(self) -> float: ...
    @property
    def load_15m(self) -> float: ...


class Figures:
    """One node's latest figures, as its last heartbeat carried them."""

    __slots__ = (
        "cpu_usage_percent",
        "load_1m",
        "load_5m",
        "load_15m",
        "memory_total_mib",
        "memory_used_mib",
        "running_vm_count",
    )

    def __init__(self) -> None:
        self.cpu_usage_percent = 0.0
        self.memory_used_mib = 0
        self.memory_total_mib = 0
        self.running_vm_count = 0
        self.load_1m = 0.0
        self.load_5m = 0.0
        self.load_15m = 0.0


class NodeFigures:
    """The latest :class:`Figures` of each node heartbeating to this replica."""

    def __init__(self, *, view: ClusterView) -> None:
        self._latest: dict[str, Figures] = {}
        view.subscribe(self._on_change)

    def latest(self, node_id: str) -> Figures | None:
        return self._latest.get(node_id)

    def slot(self, node_id: str) -> Figures:
        """The node's record, to update in place with the heartbeat's figures."""
        figures = self._latest.get(node_id)
        if figures is None:
            figures = self._latest[node_id] = Figures()
        return figures

    def observe(self, node_id: str, heartbeat: HeartbeatFigures) -> None:
        """A heartbeat of ``node_id`` (accepted: the node exists) carried these figures."""
        figures = self._latest.get(node_id)
        if figures is None:
            figures = self._latest[node_id] = Figures()
        figures.cpu_usage_percent = heartbeat.cpu_usage_percent
        figures.memory_used_mib = heartbeat.memory_used_mib
        figures.memory_total_mib = heartbeat.memory_total_mib
        figures.running_vm_count = heartbeat.running_vm_count
        figures.load_1m = heartbeat.load_1m
        figures.load_5m = heartbeat.load_5m
        figures.load_15m = heartbeat.load_15m

    def _on_change(self, key: str, old: KeyValue | None, new: KeyValue | None) -> None:
        if new is None and key.startswith(keys.NODES):
            self._latest.pop(key[len(keys.NODES) :], None)  # a removed node's go with it

    def __len__(self) -> int:
        return len(self._latest)
