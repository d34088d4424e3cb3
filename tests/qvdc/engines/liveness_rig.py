"""In-process replicas for liveness tests: the real wiring of one controller's liveness
(a ClusterView following etcd's watch, a LivenessMonitor, a Catalog for registration) on
a fake clock of its own. The test drives the passes: a paused replica is one whose clock
and passes stand still."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qvdc.domain.model import NodeId, NodeState
from qvdc.engines.catalog import Catalog
from qvdc.engines.liveness import LivenessMonitor
from qvdc.engines.view import ClusterView
from qvdc.kits import tasks
from qvdc.kits.timing import FakeClock
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore

GRACE = 30.0


@dataclass
class Replica:
    name: str
    clock: FakeClock
    view: ClusterView
    monitor: LivenessMonitor
    catalog: Catalog
    following: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        self.following = asyncio.create_task(self.view.run(), name=f"view-{self.name}")
        await self.view.wait_ready(timeout=5.0)
        await self.caught_up()  # a second follow(): wait_ready is already set

    async def stop_following(self) -> None:
        if self.following is not None:
            await tasks.cancel_and_wait(self.following)
            self.following = None

    async def caught_up(self) -> None:
        await self.view.wait_for_revision(await self.view.store.revision(timeout=5.0), timeout=5.0)

    async def register(self, hostname: str) -> NodeId:
        def build(node_id: str, old: Mapping[str, Any] | None) -> dict[str, Any]:
            return {"id": node_id, "hostname": hostname}

        node_id, _ = await self.catalog.register_node(hostname=hostname, build=build)
        return NodeId(node_id)

    async def heartbeat(self, *node_ids: NodeId) -> None:
        for node_id in node_ids:
            self.monitor.observe(node_id)
        await self.monitor._write_transitions()

    async def pass_(self, advance: float, *, heard: tuple[NodeId, ...] = ()) -> None:
        """Move this replica's clock on, take the heartbeats of ``heard``, run one liveness
        pass and write what it decided."""
        self.clock.advance(advance)
        for node_id in heard:
            self.monitor.observe(node_id)
        self.monitor.check()
        await self.monitor._write_transitions()


async def make_replica(store: EtcdStore, name: str, *, grace: float = GRACE) -> Replica:
    clock = FakeClock()
    view = ClusterView(store=store)
    monitor = LivenessMonitor(
        store=store,
        view=view,
        clock=clock,
        replica_id=name,
        grace=grace,
        startup_grace=grace,
        check_period=5.0,
        mass_outage_fraction=1.0,
        timeout=5.0,
    )
    catalog = Catalog(store=store, view=view, monitor=monitor, clock=clock, timeout=5.0)
    replica = Replica(name=name, clock=clock, view=view, monitor=monitor, catalog=catalog)
    await store.put(keys.replica(name), name.encode())  # presence (a lease in production)
    await replica.follow()
    return replica


async def status(store: EtcdStore, node_id: str) -> NodeState:
    kv = await store.get(keys.node_status(node_id))
    assert kv is not None
    return codec.decode_node_state(node_id, kv.value)
