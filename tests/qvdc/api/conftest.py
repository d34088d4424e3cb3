"""A real controller replica (grpclib server on 127.0.0.1, real etcd) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.settings import EtcdSettings
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import controller_settings


@pytest.fixture
async def controller(store: EtcdStore, etcd_settings: EtcdSettings) -> AsyncIterator[Controller]:
    c = Controller(store=store, settings=controller_settings(etcd_settings))
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


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
