"""A small fleet for the status page: real registrations and heartbeats over gRPC.

Four hosts share pool ``gold``: ``host-a`` healthy, ``host-b`` reporting ERROR with a
hostile message (markup that would run if it were ever put in the page as HTML),
``host-c`` healthy but disabled by an operator (MAINTENANCE, with a hostile reason), and
``host-d``, which reports once and then falls silent, so its row turns STALE. A second
pool, ``scratch``, is on ``host-a`` only. :meth:`Fleet.run` keeps a, b and c beating.
The screenshot (``scripts/screenshot_status.py``) passes plain words for the message and
the reason instead of the markup.
Used by tests/qvdc/http/test_status_page_browser.py and scripts/screenshot_status.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpclib.client

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from tests.qvdc.api.helpers import TIMEOUT, nfs_backend, register_request, report

HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>&amp;'
HOSTS = ("host-a", "host-b", "host-c", "host-d")
GIB = 1 << 30
ERROR = 3
HEALTHY = 1


class Fleet:
    def __init__(
        self,
        channel: grpclib.client.Channel,
        *,
        interval: float = 0.5,
        error: str = f"nfs1.example.com does not answer FSSTAT {HOSTILE}",
        reason: str = f"firmware {HOSTILE}",
    ) -> None:
        self.error = error
        self.reason = reason
        self.nodes = compute.NodeServiceStub(channel, timeout=TIMEOUT)
        self.pools = storage.StoragePoolServiceStub(channel, timeout=TIMEOUT)
        self.interval = interval
        self.ids: dict[str, str] = {}
        self.pool_ids: dict[str, str] = {}
        #: What each beating host reports next: hostname -> reports.
        self.reports: dict[str, list[compute.StoragePoolStatusReport]] = {}

    async def seed(self) -> None:
        for i, host in enumerate(HOSTS):
            node = await self.nodes.register_node(register_request(host, f"10.1.0.{i + 5}:9090"))
            self.ids[host] = node.id
        gold = await self.pools.create_pool(
            storage.CreatePoolRequest(
                name="gold",
                spec=storage.StoragePoolSpec(
                    backend=nfs_backend("nfs1.example.com", "/export/gold"),
                    assigned_node_ids=[self.ids[h] for h in HOSTS],
                ),
            )
        )
        scratch = await self.pools.create_pool(
            storage.CreatePoolRequest(
                name="scratch",
                spec=storage.StoragePoolSpec(
                    backend=nfs_backend("nfs2.example.com", "/export/scratch"),
                    assigned_node_ids=[self.ids["host-a"]],
                ),
            )
        )
        self.pool_ids = {"gold": gold.id, "scratch": scratch.id}
        mount = "/var/lib/quantix/pools/gold"
        self.reports = {
            "host-a": [
                report(gold.id, total=2048 * GIB, used=700 * GIB, volumes=12, mount=mount),
                report(
                    scratch.id,
                    total=512 * GIB,
                    used=100 * GIB,
                    volumes=3,
                    mount="/var/lib/quantix/pools/scratch",
                ),
            ],
            "host-b": [
                report(
                    gold.id,
                    health=ERROR,
                    total=0,
                    used=0,
                    mount=mount,
                    error=self.error,
                )
            ],
            "host-c": [report(gold.id, total=2048 * GIB, used=700 * GIB, volumes=12, mount=mount)],
        }
        await self.beat("host-d", [report(gold.id, total=2048 * GIB, used=700 * GIB, mount=mount)])
        for host, reports in self.reports.items():
            await self.beat(host, reports)
        await self.nodes.disable_node(
            compute.DisableNodeRequest(id=self.ids["host-c"], reason=self.reason)
        )

    async def beat(self, host: str, reports: list[compute.StoragePoolStatusReport]) -> None:
        await self.nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=self.ids[host], storage_pools=reports)
        )

    async def run(self) -> None:
        while True:
            for host, reports in list(self.reports.items()):
                await self.beat(host, reports)
            await asyncio.sleep(self.interval)

    @contextlib.asynccontextmanager
    async def beating(self) -> AsyncIterator[Fleet]:
        task = asyncio.create_task(self.run(), name="fleet-heartbeats")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
