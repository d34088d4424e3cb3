"""The status page over plain HTTP against a real replica and etcd: the page and its
assets, the JSON snapshot (bounded, no secrets), the event stream (live, capped, ended by
close, a client that does not read dropped), and who may see it with authorization on."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.domain.model import Health, HostRow, NodeId, NodePhase, PoolId, PoolReport
from qvdc.http import status_page
from qvdc.http.status_page import PageLimits, StatusPage, _row_state
from qvdc.security import sealing
from qvdc.settings import EtcdSettings, SecretsSettings
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import TIMEOUT, eventually, register_request, report
from tests.qvdc.http.conftest import Http, http_settings, unaggregated
from tests.qvdc.http.test_connect_auth import (
    ADMIN,
    BOOT,
    VIEWER,
    https,
    start,
    with_certificate,
)

SECRET = "Xq7-chap-Secret-2b9f"
STATE = re.compile(rb"event: state\ndata: (.*?)\n\n")


class Stream:
    """A raw HTTP/1.1 GET of /status/events, reading the events as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""
        self.seen = 0

    @classmethod
    async def open(cls, port: int, path: str = "/status/events") -> tuple[Stream, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        return cls(reader, writer), head

    async def next_state(self, *, timeout: float = TIMEOUT) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = list(STATE.finditer(self.buffer))
                if len(found) > self.seen:
                    self.seen += 1
                    message: dict[str, Any] = json.loads(found[self.seen - 1].group(1))
                    return message
                data = await self.reader.read(65536)
                if not data:
                    raise AssertionError("the stream ended")
                self.buffer += data

    async def rest(self) -> bytes:
        """Everything until the server ends the response (its last, empty chunk)."""
        async with asyncio.timeout(TIMEOUT):
            while not self.buffer.endswith(b"0\r\n\r\n"):
                data = await self.reader.read(65536)
                if not data:
                    break
                self.buffer += data
        return self.buffer

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def channel(controller: Controller) -> AsyncIterator[grpclib.client.Channel]:
    ch = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        yield ch
    finally:
        ch.close()


async def test_the_page_and_its_assets(client: Http) -> None:
    page = await client.request("GET", "/status")
    assert page.status == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert b'<script src="/status/status.js"' in page.body
    assert (await client.request("GET", "/status/")).body == page.body
    script = await client.request("GET", "/status/status.js")
    assert script.status == 200 and script.headers["content-type"].startswith("text/javascript")
    for sink in (b"innerHTML", b"outerHTML", b"insertAdjacentHTML", b"document.write", b"eval("):
        assert sink not in script.body, sink  # text only: nothing reported is parsed as HTML
    style = await client.request("GET", "/status/status.css")
    assert style.status == 200 and style.headers["content-type"].startswith("text/css")
    head = await client.request("HEAD", "/status")
    assert head.status == 200 and head.body == b""
    posted = await client.request("POST", "/status/snapshot.json", b"{}")
    assert posted.status == 405 and posted.headers["allow"] == "GET, HEAD"
    assert (await client.request("GET", "/status/nothing")).status == 404
    assert (await client.request("GET", "/statusx")).status == 404  # not the page's prefix


async def test_the_snapshot_is_bounded_and_carries_no_secret(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "secrets.key"
    sealing.write_new_key(key_file)
    settings = http_settings(etcd_settings).replace(secrets=SecretsSettings(key_file=key_file))
    controller = Controller(store=store, settings=settings)
    await controller.start()
    channel = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        nodes = compute.NodeServiceStub(channel, timeout=TIMEOUT)
        pools = storage.StoragePoolServiceStub(channel, timeout=TIMEOUT)
        ids = [(await nodes.register_node(register_request(f"n{i}"))).id for i in range(3)]
        iscsi = storage.StorageBackend(
            type=storage.StorageBackendBackendType.ISCSI,
            iscsi=storage.IscsiConfig(
                portal="10.0.0.5:3260",
                target="iqn.2024-01.com.example:san",
                lun=1,
                chap_enabled=True,
                chap_user="qvdc",
                chap_password=SECRET,
            ),
        )
        san = await pools.create_pool(
            storage.CreatePoolRequest(
                name="san", spec=storage.StoragePoolSpec(backend=iscsi, assigned_node_ids=ids)
            )
        )
        await pools.create_pool(
            storage.CreatePoolRequest(
                name="zz-second", spec=storage.StoragePoolSpec(backend=iscsi, assigned_node_ids=[])
            )
        )
        for node_id, health in ((ids[0], 1), (ids[1], 3)):
            await nodes.update_heartbeat(
                compute.UpdateHeartbeatRequest(
                    node_id=node_id, storage_pools=[report(san.id, health=health, error="x")]
                )
            )
        client = Http(controller.http_port)

        async def snapshot() -> dict[str, Any]:
            answer = await client.request("GET", "/status/snapshot.json")
            assert answer.status == 200 and answer.headers["content-type"] == "application/json"
            assert SECRET.encode() not in answer.body and b"chap" not in answer.body.lower()
            parsed: dict[str, Any] = answer.json()
            return parsed

        def rows_of_san(message: dict[str, Any]) -> int:
            san_shown = [p for p in message["state"]["pools"] if p["name"] == "san"]
            return len(san_shown[0]["rows"]) if san_shown else 0

        full = await eventually(snapshot, lambda m: rows_of_san(m) == 3, what="san's three rows")
        assert abs(full["now"] - time.time()) < 5
        assert [p["name"] for p in full["state"]["pools"]] == ["san", "zz-second"]
        assert [n["hostname"] for n in full["state"]["nodes"]] == ["n0", "n1", "n2"]

        # n0 healthy and live again (it sorts first by name): the rows that are not come first.
        await nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=ids[0], storage_pools=[report(san.id)])
        )

        def n0_healthy(message: dict[str, Any]) -> bool:
            san_rows = next(p for p in message["state"]["pools"] if p["name"] == "san")["rows"]
            return any(r["hostname"] == "n0" and r["state"] == "healthy" for r in san_rows)

        await eventually(snapshot, n0_healthy, what="n0 healthy again")
        monkeypatch.setattr(status_page, "SLICE", 1)  # a yield between any two nodes or rows
        small = StatusPage(
            view=controller.view,
            heard_at=controller.monitor.last_heartbeat_wall,
            gate=None,
            limits=PageLimits(max_pools=1, max_rows=1, max_nodes=2),
        )
        state = json.loads((await small.current())[0])
        assert [p["name"] for p in state["pools"]] == ["san"] and state["pools_hidden"] == 1
        (row,) = state["pools"][0]["rows"]
        assert row["hostname"] != "n0" and state["pools"][0]["rows_hidden"] == 2
        assert len(state["nodes"]) == 2 and state["nodes_hidden"] == 1
        assert row["reported_at"] is not None and row["changed_at"] is not None

        # A pool the leader has not aggregated yet (just created, or the leader catching
        # up) is shown PENDING with no rows and no capacity, never a made-up phase.
        catching_up = StatusPage(
            view=unaggregated(controller.view, san.id),
            heard_at=controller.monitor.last_heartbeat_wall,
            gate=None,
        )
        state = json.loads((await catching_up.current())[0])
        shown = {p["name"]: p for p in state["pools"]}
        assert {k: shown["san"][k] for k in ("phase", "state", "rows", "total_bytes")} == {
            "phase": "PENDING",
            "state": "pending",
            "rows": [],
            "total_bytes": 0,
        }
        assert shown["san"]["assigned"] == 3 and shown["san"]["updated_at"] is None
        # zz-second is aggregated: PENDING too, but with the aggregate's reason and time.
        assert shown["zz-second"]["message"] == "no host is assigned this pool"
        assert shown["zz-second"]["updated_at"] is not None and shown["san"]["message"] == ""
    finally:
        channel.close()
        await controller.stop()


async def test_events_follow_the_view(
    controller: Controller, channel: grpclib.client.Channel
) -> None:
    page = controller.status_page
    assert page is not None
    stream, head = await Stream.open(controller.http_port)
    try:
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-type: text/event-stream" in head.lower()
        first = await stream.next_state()
        assert first["state"]["nodes"] == [] and first["state"]["listed"] is True
        assert page.streams == 1
        nodes = compute.NodeServiceStub(channel, timeout=TIMEOUT)
        await nodes.register_node(register_request("late-host"))
        second = await stream.next_state(timeout=page.limits.min_interval + TIMEOUT)
        assert [n["hostname"] for n in second["state"]["nodes"]] == ["late-host"]
        assert second["state"]["nodes"][0]["phase"] in ("PENDING", "READY", "UNKNOWN")
    finally:
        stream.close()
    # The browser went away: the stream's handler ends and frees its place.
    await eventually(lambda: asyncio.sleep(0, page.streams), lambda n: n == 0, what="freed")


async def test_streams_are_capped_and_end_on_close(controller: Controller) -> None:
    page = controller.status_page
    assert page is not None
    page.limits = dataclasses.replace(page.limits, max_streams=1)
    first, _ = await Stream.open(controller.http_port)
    try:
        await first.next_state()
        second, head = await Stream.open(controller.http_port)
        second.close()
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 10" in head.lower()
        page.close()
        ended = await first.rest()
        assert ended.endswith(b"0\r\n\r\n")  # the response completed, not cut
        assert page.streams == 0
        third, head = await Stream.open(controller.http_port)
        third.close()
        assert head.startswith(b"HTTP/1.1 503")  # stopping: no new stream
    finally:
        first.close()


async def test_a_client_that_does_not_read_is_dropped(
    controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    page = StatusPage(
        view=controller.view,
        heard_at=controller.monitor.last_heartbeat_wall,
        gate=None,
        limits=PageLimits(send_timeout=0.2),
    )
    caplog.set_level(logging.INFO, logger="qvdc.http.status_page")
    sent: list[dict[str, Any]] = []

    async def stuck_send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()  # the socket's buffer is full and stays full

    async def never_disconnects() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    scope = {"type": "http", "method": "GET", "path": "/status/events", "headers": []}
    await asyncio.wait_for(page(scope, never_disconnects, stuck_send), TIMEOUT)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert page.streams == 0
    assert "dropped a status-page stream" in caplog.text


async def test_operators_only_when_authorization_is_on(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    controller, pki = await start(store, etcd_settings, tmp_path)
    try:
        client = https(controller, pki)
        anonymous = await client.request("GET", "/status")
        assert anonymous.status == 401
        assert anonymous.headers["www-authenticate"].startswith('Basic realm="QvDC status"')
        assert b"ListPools needs an operator" in anonymous.body
        wrong = await client.request(
            "GET", "/status", headers={"Authorization": "Bearer " + "w" * 20}
        )
        assert wrong.status == 401
        for token in (VIEWER, ADMIN):
            bearer = {"Authorization": f"Bearer {token}"}
            assert (
                await client.request("GET", "/status/snapshot.json", headers=bearer)
            ).status == 200
            # A browser: HTTP Basic, any user name, the token as the password.
            basic = {"Authorization": "Basic " + base64.b64encode(f"ops:{token}".encode()).decode()}
            shown = await client.request("GET", "/status", headers=basic)
            assert shown.status == 200 and b"QvDC status" in shown.body
        garbled = await client.request("GET", "/status", headers={"Authorization": "Basic !!"})
        assert garbled.status == 401
        # A known identity that is not an operator: refused, and no Basic challenge.
        booting = await client.request(
            "GET", "/status", headers={"Authorization": f"Bearer {BOOT}"}
        )
        assert booting.status == 403 and "www-authenticate" not in booting.headers
        # Certificates mean what they mean on gRPC: an operator's opens it, a node's does not.
        viewer = with_certificate(controller, pki, pki.operator("vic-cert", "viewer"))
        assert (await viewer.request("GET", "/status/snapshot.json")).status == 200
        node = with_certificate(controller, pki, pki.node("cert-01"))
        refused = await node.request("GET", "/status")
        assert refused.status == 403 and b"needs an operator" in refused.body
    finally:
        await controller.stop()


async def test_no_token_over_plain_http_with_authorization_on(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    controller, _ = await start(store, etcd_settings, tmp_path, http_tls=False)
    try:
        plain = Http(controller.http_port)
        refused = await plain.request(
            "GET", "/status", headers={"Authorization": f"Bearer {VIEWER}"}
        )
        assert refused.status == 401 and b"not accepted over plain HTTP" in refused.body
    finally:
        await controller.stop()


@pytest.mark.parametrize(
    ("health", "stale", "pending", "phase", "state"),
    [
        (Health.HEALTHY, False, False, NodePhase.READY, "healthy"),
        (Health.DEGRADED, False, False, NodePhase.READY, "degraded"),
        (Health.ERROR, False, False, NodePhase.READY, "error"),
        (Health.UNMOUNTED, False, False, NodePhase.READY, "error"),
        (Health.UNKNOWN, False, False, NodePhase.READY, "unknown"),
        (Health.UNKNOWN, False, True, NodePhase.READY, "pending"),
        (Health.HEALTHY, True, False, NodePhase.OFFLINE, "stale"),
        (Health.HEALTHY, True, False, NodePhase.MAINTENANCE, "maintenance"),
        (Health.ERROR, False, False, NodePhase.DRAINING, "maintenance"),
        (Health.HEALTHY, False, False, None, "healthy"),
    ],
)
def test_the_word_a_row_is_coloured_by(
    health: Health, stale: bool, pending: bool, phase: NodePhase | None, state: str
) -> None:
    row = HostRow(
        node_id=NodeId("n"),
        report=PoolReport(pool_id=PoolId("p"), health=health),
        changed_at=1.0,
        assigned=True,
        stale=stale,
        pending=pending,
    )
    assert _row_state(row, phase) == state


async def test_an_idle_stream_gets_keepalives_and_head_gets_no_body(
    controller: Controller, client: Http
) -> None:
    page = StatusPage(
        view=controller.view,
        heard_at=controller.monitor.last_heartbeat_wall,
        gate=None,
        limits=PageLimits(min_interval=0.05, refresh=0.1, keepalive=0.3),
    )
    sent: list[bytes] = []
    leave = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message.get("body", b""))
        if sum(chunk == b": keepalive\n\n" for chunk in sent) >= 2:
            leave.set()

    async def receive() -> dict[str, Any]:
        await leave.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "GET", "path": "/status/events", "headers": []}
    await asyncio.wait_for(page(scope, receive, send), TIMEOUT)
    states = [chunk for chunk in sent if chunk.startswith(b"retry:")]
    assert len(states) == 1  # nothing changed: one state, then keepalives only
    assert page.streams == 0
    head = await client.request("HEAD", "/status/events")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-type"].startswith("text/event-stream")
