"""ClusterView over a real etcd: rows decoded as they change, held once, own writes not decoded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from qvdc.domain.model import Health, HostPoolStatus, NodeId, PoolId, PoolReport
from qvdc.engines.view import ClusterView
from qvdc.kits import tasks
from qvdc.store import codec, keys
from qvdc.store.etcd import EtcdStore


@contextlib.asynccontextmanager
async def following(view: ClusterView) -> AsyncIterator[ClusterView]:
    task = asyncio.create_task(view.run(), name="view")
    try:
        await view.wait_ready(timeout=10)
        yield view
    finally:
        await tasks.cancel_and_wait(task)


def status(node: str, used: int) -> HostPoolStatus:
    report = PoolReport(
        pool_id=PoolId("p1"),
        health=Health.HEALTHY,
        total_bytes=100,
        used_bytes=used,
        mount_path="/srv/pools/p1",
    )
    return HostPoolStatus(node_id=NodeId(node), report=report, changed_at=1_700_000_000.0)


async def test_rows_are_decoded_as_they_change_and_held_once(store: EtcdStore) -> None:
    listed = codec.encode_host_status(status("n1", 10))
    await store.put(keys.host_status("p1", "n1"), listed)
    view = ClusterView(store=store)
    async with following(view):
        at = await store.put(
            keys.host_status("p1", "n2"), codec.encode_host_status(status("n2", 20))
        )
        await view.wait_for_revision(at, timeout=10)

        rows = view.host_statuses("p1")
        assert rows == {"n1": status("n1", 10), "n2": status("n2", 20)}
        # No raw JSON kept next to the decoded row, and one string object per mount path.
        assert all(kv.value == b"" for kv in view.cache.scan(keys.host_statuses_of("p1")))
        assert rows[NodeId("n1")].report.mount_path is rows[NodeId("n2")].report.mount_path
        assert view.rows_of("n1") == {"p1": status("n1", 10)}

        await store.delete(keys.host_status("p1", "n1"))
        deleted = await store.revision()
        await view.wait_for_revision(deleted, timeout=10)
        assert view.host_status("p1", "n1") is None and view.rows_of("n1") == {}


async def test_own_writes_are_not_decoded_again(store: EtcdStore) -> None:
    view = ClusterView(store=store)
    key = keys.host_status("p1", "n1")
    async with following(view):
        mine = status("n1", 10)
        value = codec.encode_host_status(mine)
        view.expect(key, value, mine)
        at = await store.put(key, value)
        await view.wait_for_revision(at, timeout=10)
        assert view.host_status("p1", "n1") is mine  # the writer's object, not a decoded copy

        # Bytes other than the expected ones (someone else's write) are decoded.
        view.expect(key, value, mine)
        other = status("n1", 50)
        at = await store.put(key, codec.encode_host_status(other))
        await view.wait_for_revision(at, timeout=10)
        row = view.host_status("p1", "n1")
        assert row == other and row is not other


async def test_node_ids_follow_the_node_keys(store: EtcdStore) -> None:
    await store.put(keys.node("listed"), b"{}")
    view = ClusterView(store=store)
    async with following(view):
        assert view.has_node("listed") and not view.has_node("later")
        at = await store.put(keys.node("later"), b"{}")
        await view.wait_for_revision(at, timeout=10)
        assert view.has_node("later")
        # A node's other keys are not the node.
        at = await store.put(keys.node_status("ghost"), b"{}")
        await view.wait_for_revision(at, timeout=10)
        assert not view.has_node("ghost")
        await store.delete(keys.node("listed"))
        await view.wait_for_revision(await store.revision(), timeout=10)
        assert not view.has_node("listed") and view.has_node("later")


async def test_an_undecodable_row_is_indexed_but_never_read_as_a_report(store: EtcdStore) -> None:
    view = ClusterView(store=store)
    async with following(view):
        at = await store.put(keys.host_status("p1", "n1"), b"not json")
        await view.wait_for_revision(at, timeout=10)
        # The intake still sees that the host has a row there (and may delete it) ...
        assert dict(view.rows_of("n1")) == {"p1": None}
        # ... but nothing reads it as a report.
        assert view.host_status("p1", "n1") is None and view.host_statuses("p1") == {}


def test_pools_share_their_assigned_node_ids() -> None:
    """Every pool record names a host with the one interned id string, which the
    aggregates' host rows then share (80,000 duplicates at 10,000 hosts before)."""

    def pool(pool_id: str) -> bytes:
        spec = {"backend": {"type": "NFS"}, "assignedNodeIds": ["node-7"]}
        return codec.dumps({"id": pool_id, "name": pool_id, "spec": spec})

    first, second = codec.decode_pool(pool("p1")), codec.decode_pool(pool("p2"))
    assert first.assigned_node_ids == second.assigned_node_ids == ("node-7",)
    assert first.assigned_node_ids[0] is second.assigned_node_ids[0]
