"""The status page in headless Chromium, against a real replica on real etcd.

A fleet (tests/qvdc/http/status_fleet.py) registers and beats over gRPC: one healthy
host, one reporting ERROR with markup in its message, one disabled (MAINTENANCE), one
silent (its row STALE). The page is loaded once; the test reads the rendered DOM (rows,
their state classes, the STALE and MAINTENANCE badges, the messages as text), then
changes the fleet and waits for the same page, never reloaded, to show the change.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import grpclib.client

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from qvdc.transport import tls
from tests.fixtures.chromium import Browser, Tab, require_chromium
from tests.qvdc.api.helpers import TIMEOUT, create_request, eventually, report
from tests.qvdc.http.status_fleet import GIB, HOSTILE, Fleet
from tests.qvdc.http.test_connect_auth import VIEWER, start

ROWS = """[...document.querySelectorAll('.pool[data-pool-id="%s"] tr.host')].map(tr => ({
  host: tr.querySelector('.hostname').textContent,
  cls: tr.className,
  state: tr.dataset.state,
  badges: [...tr.querySelectorAll('.badge')].map(b => b.textContent),
  colours: [...tr.querySelectorAll('.badge')].map(b => getComputedStyle(b).color),
  mount: tr.querySelector('.mount').textContent,
  message: tr.nextElementSibling && tr.nextElementSibling.classList.contains('host-message')
    ? tr.nextElementSibling.textContent : '',
}))"""


async def rows(tab: Tab, pool_id: str) -> dict[str, dict[str, Any]]:
    found = await tab.evaluate(ROWS % pool_id)
    return {row["host"]: row for row in found}


async def test_status_page_shows_the_fleet_and_follows_it_live(controller: Controller) -> None:
    executable = require_chromium()
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        fleet = Fleet(channel)
        await fleet.seed()
        gold = fleet.pool_ids["gold"]
        pools = fleet.pools

        async def gold_rows() -> list[storage.PoolHostStatus]:
            pool = await pools.get_pool(storage.GetPoolRequest(id=gold), timeout=TIMEOUT)
            return pool.status.host_statuses

        async with fleet.beating():
            # host-d beat once: its row turns stale after the grace (3 s), the others beat.
            await eventually(
                gold_rows,
                lambda hs: len(hs) == 4 and [h.hostname for h in hs if h.stale] == ["host-d"],
                timeout=15,
                what="host-d stale, the others live",
            )
            url = f"http://127.0.0.1:{controller.http_port}/status"
            async with Browser(executable) as browser:
                tab = await browser.open(url)
                await tab.wait_for("document.querySelectorAll('tr.host').length === 5")
                await tab.wait_for("document.getElementById('link').textContent === 'live'")
                await tab.evaluate("window.__loadedOnce = 'yes'")
                shown = await rows(tab, gold)
                assert set(shown) == {"host-a", "host-b", "host-c", "host-d"}
                assert shown["host-a"]["state"] == "healthy"
                assert "state-healthy" in shown["host-a"]["cls"]
                assert shown["host-a"]["badges"] == ["HEALTHY"]
                assert shown["host-a"]["mount"] == "/var/lib/quantix/pools/gold"
                assert shown["host-b"]["state"] == "error"
                assert shown["host-b"]["badges"] == ["ERROR"]
                # The hostile message is shown as text, and nothing of it ran or was parsed.
                assert HOSTILE in shown["host-b"]["message"]
                assert await tab.evaluate("window.__xss === undefined")
                assert (
                    await tab.evaluate("document.querySelectorAll('img, main script').length") == 0
                )
                assert shown["host-c"]["state"] == "maintenance"
                assert "MAINTENANCE" in shown["host-c"]["badges"]
                assert shown["host-d"]["state"] == "stale"
                assert "STALE" in shown["host-d"]["badges"]
                assert "state-stale" in shown["host-d"]["cls"]
                # Colours as rendered: green for the live healthy row, red for the error, and
                # the stale row's last health not in green (never shown healthy on old data).
                green, red = shown["host-a"]["colours"][0], shown["host-b"]["colours"][0]
                assert green != red
                assert green not in shown["host-d"]["colours"]
                # Not-healthy rows first, then by hostname.
                assert list(shown)[-1] == "host-a"

                # The pool's phase and message as the API has them.
                pool = await pools.get_pool(storage.GetPoolRequest(id=gold), timeout=TIMEOUT)
                card = await tab.evaluate(
                    f"""(() => {{ const c = document.querySelector('.pool[data-pool-id="{gold}"]');
                    return {{ phase: c.dataset.phase, cls: c.className,
                      message: (c.querySelector('.pool-message') || {{}}).textContent || ''
                    }}; }})()"""
                )
                assert card["phase"] == pool.status.phase.name
                assert card["message"] == pool.status.error_message
                # The node list, with each node's phase as ListNodes has it.
                listed = await fleet.nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
                phases = {n.hostname: n.status.phase.name for n in listed.nodes}
                node_rows = await tab.evaluate(
                    "[...document.querySelectorAll('tr.node')].map(tr => [tr.querySelector("
                    "'.hostname').textContent, tr.dataset.phase, tr.querySelector('.reason')"
                    ".textContent])"
                )
                assert {h: p for h, p, _ in node_rows} == phases
                assert phases["host-c"] == "MAINTENANCE"
                assert [r for h, _, r in node_rows if h == "host-c"] == [f"firmware {HOSTILE}"]

                # Live: host-b recovers and host-c is enabled; the same page shows both.
                fleet.reports["host-b"] = [
                    report(gold, total=2048 * GIB, used=700 * GIB, mount="/mnt/b")
                ]
                await fleet.nodes.enable_node(
                    compute.EnableNodeRequest(id=fleet.ids["host-c"]), timeout=TIMEOUT
                )
                await tab.wait_for(
                    f"""(() => {{ const rows = {ROWS % gold};
                    const b = rows.find(r => r.host === 'host-b');
                    const c = rows.find(r => r.host === 'host-c');
                    return b && b.state === 'healthy' && b.mount === '/mnt/b' && b.message === ''
                      && c && c.state === 'healthy'; }})()""",
                    timeout=15,
                )
                assert await tab.evaluate("window.__loadedOnce") == "yes"  # not reloaded
                assert controller.status_page is not None
                assert controller.status_page.streams == 1
    finally:
        channel.close()


async def test_the_snapshot_matches_the_api(controller: Controller) -> None:
    """The JSON the page renders says what GetPool says, row for row."""
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        fleet = Fleet(channel)
        await fleet.seed()
        gold = fleet.pool_ids["gold"]
        page = controller.status_page
        assert page is not None

        async def both() -> tuple[dict[str, Any], storage.StoragePool]:
            await asyncio.sleep(page.limits.min_interval)  # past the rate bound: rebuilt
            state = json.loads((await page.current())[0])
            shown = next(p for p in state["pools"] if p["id"] == gold)
            pool = await fleet.pools.get_pool(storage.GetPoolRequest(id=gold), timeout=TIMEOUT)
            return shown, pool

        def same(pair: tuple[dict[str, Any], storage.StoragePool]) -> bool:
            shown, pool = pair
            return (
                len(pool.status.host_statuses) == 4
                and shown["phase"] == pool.status.phase.name
                and {r["hostname"]: r["health"] for r in shown["rows"]}
                == {h.hostname: h.health.name for h in pool.status.host_statuses}
                and shown["used_bytes"] == pool.status.capacity.used_bytes
                and shown["total_bytes"] == pool.status.capacity.total_bytes
                and shown["message"] == pool.status.error_message
            )

        shown, pool = await eventually(both, same, what="the snapshot to say what GetPool says")
        assert pool.status.phase.name == "DEGRADED"  # host-b's ERROR, whatever else changed
        assert shown["healthy"] == len(pool.status.healthy_node_ids)
    finally:
        channel.close()


async def test_over_https_with_a_viewer_token(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    """Authorization on: the browser signs in with Basic (the viewer token as password),
    the page comes over HTTPS and HTTP/2, follows a change, and closing the tab frees its
    stream."""
    executable = require_chromium()
    controller, pki = await start(store, etcd_settings, tmp_path)
    admin = pki.operator("ada")
    context = tls.client_context(ca=pki.ca, cert=admin.cert, key=admin.key)
    channel = grpclib.client.Channel("127.0.0.1", controller.port, ssl=context)
    page = controller.status_page
    assert page is not None
    try:
        basic = base64.b64encode(f"ops:{VIEWER}".encode()).decode()
        url = f"https://127.0.0.1:{controller.http_port}/status"
        async with Browser(executable, args=("--ignore-certificate-errors",)) as browser:
            tab = await browser.open(url, headers={"Authorization": f"Basic {basic}"})
            await tab.wait_for("document.getElementById('link').textContent === 'live'")
            protocol = "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            assert await tab.evaluate(protocol) == "h2"
            assert await tab.evaluate("document.querySelectorAll('.pool').length") == 0
            pools = storage.StoragePoolServiceStub(channel, timeout=TIMEOUT)
            await pools.create_pool(create_request("late-pool"))
            await tab.wait_for(
                "[...document.querySelectorAll('.pool-name')].map(e => e.textContent)"
                ".join() === 'late-pool'"
            )
            assert page.streams == 1
            await tab.close()
            await eventually(
                lambda: asyncio.sleep(0, page.streams), lambda n: n == 0, what="stream freed"
            )
    finally:
        channel.close()
        await controller.stop()
