"""The StorageBackend contract, run over every backend kind against real storage.

Each test states one promise of :class:`storage_backends.base.StorageBackend`
that the node daemon relies on, whatever the backend: validation names the
field, attach is idempotent and measures, probes count volumes live, detach
never deletes data, and a hung probe turns into ERROR within its timeout.

The ``harness`` fixture (``conftest.py``) runs each test over fake, local_dir,
nfs (nfs-ganesha), iscsi (tgtd) and ceph_rbd (a one-OSD Ceph cluster). Where a
backend legitimately differs, the harness states the difference and the test
uses it, never a per-kind branch here:

* ``field_prefix``: ceph_rbd's config fields are ``ceph.<field>`` (the proto's
  ``CephConfig``), the others' ``<kind>.<field>``;
* ``initial_volumes``: an iSCSI pool is one LUN of a target and counts its
  target's data LUNs, so a fresh pool already lists its own LUN (``lun-1``);
  the other backends start empty;
* ``add_volume`` returns what must be listed: iSCSI volumes are LUNs
  (``lun-<n>``, path ``iscsi://portal/target/<n>``), RBD images are listed as
  ``rbd:<pool>/<namespace>/<image>``, files under their mount path.

Capacity is checked as ranges every backend meets (an iSCSI LUN has no
filesystem: used 0, available = total; Ceph reports the pool's ``max_avail``).
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
    with pytest.raises(base.InvalidConfig, match=rf"^{harness.field_prefix}\.\w+"):
        harness.backend.validate(harness.invalid_spec("p1"))


async def test_attach_rejects_a_bad_spec(harness: Harness) -> None:
    with pytest.raises(base.InvalidConfig):
        await harness.backend.attach(harness.invalid_spec("p1"), timeout=TIMEOUT)


async def test_attach_measures_a_healthy_pool(harness: Harness) -> None:
    spec = harness.spec("p1")
    before = time.time()
    info = await harness.backend.attach(spec, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.pool_id == "p1"
    assert info.kind == harness.kind
    assert info.total_bytes > 0
    assert 0 <= info.available_bytes <= info.total_bytes
    assert 0 <= info.used_bytes <= info.total_bytes
    assert info.mount_path
    assert info.volume_count == len(harness.initial_volumes(spec))
    assert info.error_message == ""
    assert info.probed_at >= before


async def test_attach_is_idempotent(harness: Harness) -> None:
    spec = harness.spec("p1")
    first = await harness.backend.attach(spec, timeout=TIMEOUT)
    harness.add_volume(spec=spec, name="a.qcow2", size=1024)
    second = await harness.backend.attach(spec, timeout=TIMEOUT)
    assert second.health is base.PoolHealth.HEALTHY
    assert second.mount_path == first.mount_path
    assert second.volume_count == len(harness.initial_volumes(spec)) + 1


async def test_probe_counts_volumes_live(harness: Harness) -> None:
    spec = harness.spec("p1")
    initial = len(harness.initial_volumes(spec))
    await harness.backend.attach(spec, timeout=TIMEOUT)
    harness.add_volume(spec=spec, name="a.qcow2", size=1024)
    assert (await harness.backend.probe(spec, timeout=TIMEOUT)).volume_count == initial + 1
    harness.add_volume(spec=spec, name="b.raw", size=2048)
    info = await harness.backend.probe(spec, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY
    assert info.volume_count == initial + 2


async def test_list_volumes_returns_names_and_sizes_sorted(harness: Harness) -> None:
    spec = harness.spec("p1")
    await harness.backend.attach(spec, timeout=TIMEOUT)
    added = [
        harness.add_volume(spec=spec, name="b.raw", size=2048),
        harness.add_volume(spec=spec, name="a.qcow2", size=1024),
    ]
    volumes = await harness.backend.list_volumes(spec, timeout=TIMEOUT)
    # iSCSI lists by LUN number; with LUNs 1-3 that is also name order.
    expected = sorted(harness.initial_volumes(spec) + added, key=lambda v: v.name)
    assert volumes == expected
    assert len({v.path for v in volumes}) == len(volumes)


async def test_pools_are_independent(harness: Harness) -> None:
    one, two = harness.spec("p1"), harness.spec("p2")
    first = await harness.backend.attach(one, timeout=TIMEOUT)
    second = await harness.backend.attach(two, timeout=TIMEOUT)
    assert first.mount_path != second.mount_path
    harness.add_volume(spec=one, name="a.img", size=512)
    one_info = await harness.backend.probe(one, timeout=TIMEOUT)
    two_info = await harness.backend.probe(two, timeout=TIMEOUT)
    assert one_info.volume_count == len(harness.initial_volumes(one)) + 1
    assert two_info.volume_count == len(harness.initial_volumes(two))


async def test_detach_is_idempotent_and_keeps_data(harness: Harness) -> None:
    spec = harness.spec("p1")
    first = await harness.backend.attach(spec, timeout=TIMEOUT)
    kept = harness.add_volume(spec=spec, name="keep.qcow2", size=4096)
    await harness.backend.detach(spec, timeout=TIMEOUT)
    await harness.backend.detach(spec, timeout=TIMEOUT)
    info = await harness.backend.attach(spec, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY
    assert info.mount_path == first.mount_path
    assert info.volume_count == len(harness.initial_volumes(spec)) + 1
    volumes = await harness.backend.list_volumes(spec, timeout=TIMEOUT)
    assert volumes == sorted([*harness.initial_volumes(spec), kept], key=lambda v: v.name)


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
