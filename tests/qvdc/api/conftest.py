"""A real controller replica (grpclib server on 127.0.0.1, real etcd) per test."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpclib.client
import pytest

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.security import sealing
from qvdc.settings import EtcdSettings, SecretsSettings
from qvdc.store import keys
from qvdc.store.etcd import EtcdStore
from tests.qvdc.api.helpers import controller_settings, eventually


@pytest.fixture
async def controller(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Controller]:
    """A replica with a secrets key, as `make run` has one (pools may carry CHAP
    passwords). Liveness grace 3 s, or the test module's ``CONTROLLER_GRACE``: a module
    whose registered nodes never heartbeat, and whose frames or events are counted, sets
    a long one so that no node goes OFFLINE mid-test on a slow machine."""
    key_file = tmp_path / "secrets.key"
    sealing.write_new_key(key_file)
    grace = float(getattr(request.module, "CONTROLLER_GRACE", 3.0))
    settings = controller_settings(etcd_settings, grace=grace).replace(
        secrets=SecretsSettings(key_file=key_file)
    )
    c = Controller(store=store, settings=settings)
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


@pytest.fixture
async def replicas(
    store: EtcdStore, etcd_settings: EtcdSettings
) -> AsyncIterator[tuple[Controller, Controller]]:
    """Two replicas on one etcd (grace 3 s): ``r1`` leads, ``r2`` starts once it does."""
    base = controller_settings(etcd_settings, grace=3.0)
    first = Controller(store=store, settings=dataclasses.replace(base, replica_id="r1"))
    second_store = await EtcdStore.connect(settings=etcd_settings)
    second = Controller(store=second_store, settings=dataclasses.replace(base, replica_id="r2"))
    await first.start()
    await eventually(
        lambda: store.get(keys.ELECTION_AGGREGATOR), lambda kv: kv is not None, what="a leader"
    )
    await second.start()
    try:
        yield first, second
    finally:
        await second.stop()
        await first.stop()
        await second_store.close()
