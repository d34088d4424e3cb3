"""The StorageBackend contract, run unchanged over every backend kind we can run here.

Each test states one promise of :class:`storage_backends.base.StorageBackend`
that the node daemon relies on, whatever the backend: validation names the
field, attach is idempotent and measures, probes count volumes live, detach
never deletes data, and a hung probe turns into ERROR within its timeout.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from storage_backends import base

if TYPE_CHECKING:
    from tests.storage_backends.conftest import Harness

TIMEOUT = 10.0


def test_backend_satisfies_protocol(harness: Harness) -> None:
    assert isinstance(harness.backend, base.StorageBackend)
    assert harness.backend.kind == harness.kind


def test_validate_accepts_a_good_spec(harness: Harness) -> None:
    harness.backend.validate(harness.spec("p1"))


def test_validate_rejects_a_bad_spec_naming_the_field(harness: Harness) -> None:
    with pytest.raises(base.InvalidConfig, match=rf"^{harness.kind}\.\w+"):
        harness.backend.validate(harness.invalid_spec("p1"))


async def test_attach_rejects_a_bad_spec(harness: Harness) -> None:
    with pytest.raises(base.InvalidConfig):
        await harness.backend.attach(harness.invalid_spec("p1"), timeout=TIMEOUT)


async def test_attach_measures_a_healthy_pool(harness: Harness) -> None:
    before = time.time()
    info = await harness.backend.attach(harness.spec("p1"), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.pool_id == "p1"
    assert info.kind == harness.kind
    assert info.total_bytes > 0
    assert 0 <= info.available_bytes <= info.total_bytes
    assert 0 <= info.used_bytes <= info.total_bytes
    assert info.mount_path
    assert info.volume_count == 0
    assert info.error_message == ""
    assert info.probed_at >= before


async def test_attach_is_idempotent(harness: Harness) -> None:
    spec = harness.spec("p1")
    first = await harness.backend.attach(spec, timeout=TIMEOUT)
    harness.add_volume(spec=spec, name="a.qcow2", size=1024)
    second = await harness.backend.attach(spec, timeout=TIMEOUT)
    assert second.health is base.PoolHealth.HEALTHY
    assert second.mount_path == first.mount_path
    assert second.volume_count == 1


async def test_probe_counts_volumes_live(harness: Harness) -> None:
    spec = harness.spec("p1")
    await harness.backend.attach(spec, timeout=TIMEOUT)
    harness.add_volume(spec=spec, name="a.qcow2", size=1024)
    assert (await harness.backend.probe(spec, timeout=TIMEOUT)).volume_count == 1
    harness.add_volume(spec=spec, name="b.raw", size=2048)
    info = await harness.backend.probe(spec, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY
    assert info.volume_count == 2


async def test_list_volumes_returns_names_and_sizes_sorted(harness: Harness) -> None:
    spec = harness.spec("p1")
    await harness.backend.attach(spec, timeout=TIMEOUT)
    harness.add_volume(spec=spec, name="b.raw", size=2048)
    harness.add_volume(spec=spec, name="a.qcow2", size=1024)
    volumes = await harness.backend.list_volumes(spec, timeout=TIMEOUT)
    assert [(v.name, v.size_bytes) for v in volumes] == [("a.qcow2", 1024), ("b.raw", 2048)]
    assert all(v.path.endswith("/" + v.name) for v in volumes)


async def test_pools_are_independent(harness: Harness) -> None:
    one, two = harness.spec("p1"), harness.spec("p2")
    await harness.backend.attach(one, timeout=TIMEOUT)
    await harness.backend.attach(two, timeout=TIMEOUT)
    harness.add_volume(spec=one, name="a.img", size=512)
    assert (await harness.backend.probe(one, timeout=TIMEOUT)).volume_count == 1
    assert (await harness.backend.probe(two, timeout=TIMEOUT)).volume_count == 0


async def test_detach_is_idempotent_and_keeps_data(harness: Harness) -> None:
    spec = harness.spec("p1")
    await harness.backend.attach(spec, timeout=TIMEOUT)
    harness.add_volume(spec=spec, name="keep.qcow2", size=4096)
    await harness.backend.detach(spec, timeout=TIMEOUT)
    await harness.backend.detach(spec, timeout=TIMEOUT)
    info = await harness.backend.attach(spec, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY
    assert info.volume_count == 1
    volumes = await harness.backend.list_volumes(spec, timeout=TIMEOUT)
    assert [(v.name, v.size_bytes) for v in volumes] == [("keep.qcow2", 4096)]


async def test_hung_probe_reports_error_within_timeout_and_recovers(harness: Harness) -> None:
    spec = harness.spec("p1")
    await harness.backend.attach(spec, timeout=TIMEOUT)
    release = harness.hang_probe(spec)
    try:
        info = await harness.backend.probe(spec, timeout=0.2)
        assert info.health is base.PoolHealth.ERROR
        assert info.error_message.startswith("probe timed out"), info.error_message
        assert info.pool_id == "p1"
        assert info.kind == harness.kind
    finally:
        release()
    recovered = await harness.backend.probe(spec, timeout=TIMEOUT)
    assert recovered.health is base.PoolHealth.HEALTHY, recovered.error_message
