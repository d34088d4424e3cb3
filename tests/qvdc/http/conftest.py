"""A real controller replica with its HTTP server on loopback, and a plain HTTP client."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any, cast

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.engines.view import ClusterView
from qvdc.settings import ControllerSettings, EtcdSettings, HttpSettings
from qvdc.store.etcd import EtcdStore
from tests.fixtures.etcd import FaultyStore
from tests.qvdc.api.helpers import controller_settings


def http_settings(etcd_settings: EtcdSettings) -> ControllerSettings:
    return dataclasses.replace(
        controller_settings(etcd_settings),
        http=HttpSettings(enabled=True, host="127.0.0.1", port=0, close_timeout=1.0),
    )


def unaggregated(view: ClusterView, *pool_ids: str) -> ClusterView:
    """``view`` as a replica sees it while the leader has not written the aggregate of
    ``pool_ids`` (of every pool when none is given): just created, or the leader catching
    up. Fault injection for the readers (status page, /metrics); all else is the real view."""

    class Unaggregated:
        def __getattr__(self, name: str) -> Any:
            return getattr(view, name)

        def pool_status(self, pool_id: str) -> Any:
            hidden = not pool_ids or pool_id in pool_ids
            return None if hidden else view.pool_status(pool_id)

    return cast(ClusterView, Unaggregated())


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """A plain HTTP/1.1 client (http.client, in a thread), as upstream's agent posts."""

    def __init__(self, port: int, *, context: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.context = context  # HTTPS, verifying the server against it

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], chunked: bool
    ) -> Answer:
        conn = (
            http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=self.context)
            if self.context is not None
            else http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        )
        try:
            if chunked:
                conn.request(
                    method, path, body=iter([body or b""]), headers=headers, encode_chunked=True
                )
            else:
                conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
        finally:
            conn.close()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> Answer:
        return await asyncio.to_thread(self._request, method, path, body, headers or {}, chunked)

    async def call(self, procedure: str, body: Any) -> Answer:
        """A Connect unary call with a JSON body (a dict, or raw bytes)."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.request(
            "POST", f"/{procedure}", raw, headers={"Content-Type": "application/json"}
        )


@pytest.fixture
async def faulty(store: EtcdStore) -> AsyncIterator[FaultyStore]:
    wrapped = FaultyStore(store)
    try:
        yield wrapped
    finally:
        wrapped.heal()
        await wrapped.close()


@pytest.fixture
async def controller(faulty: FaultyStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=faulty, settings=http_settings(etcd_settings))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


@pytest.fixture
def client(controller: Controller) -> Http:
    return Http(controller.http_port)


@pytest.fixture
async def channel(controller: Controller) -> AsyncIterator[grpclib.client.Channel]:
    ch = grpclib.client.Channel("127.0.0.1", controller.port)
    try:
        yield ch
    finally:
        ch.close()


@pytest.fixture
def pools(channel: grpclib.client.Channel) -> storage.StoragePoolServiceStub:
    return storage.StoragePoolServiceStub(channel)


@pytest.fixture
def nodes(channel: grpclib.client.Channel) -> compute.NodeServiceStub:
    return compute.NodeServiceStub(channel)
