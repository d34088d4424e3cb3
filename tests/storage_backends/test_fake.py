"""FakeBackend: the scripting other tests and benchmarks rely on.

The contract suite already runs the fake through the StorageBackend promises;
these tests pin what is specific to it: scripted states, stalls that honour
the timeout, scripted exceptions and the call record.
"""

from __future__ import annotations

import asyncio

import pytest

from storage_backends import base, fake

TIMEOUT = 10.0


def spec(pool_id: str = "p1") -> base.PoolSpec:
    return base.PoolSpec(pool_id=pool_id, kind="fake")


async def test_probe_reports_the_scripted_state() -> None:
    backend = fake.FakeBackend()
    backend.script(
        "p1",
        health=base.PoolHealth.DEGRADED,
        total_bytes=1000,
        used_bytes=900,
        volumes={"a.qcow2": 10},
        error_message="nearly full: 10% free",
    )
    info = await backend.probe(spec(), timeout=TIMEOUT)
    assert (info.health, info.total_bytes, info.used_bytes, info.available_bytes) == (
        base.PoolHealth.DEGRADED,
        1000,
        900,
        100,
    )
    assert (info.volume_count, info.error_message) == (1, "nearly full: 10% free")
    assert info.mount_path == "fake://p1"

    backend.script("p1", health=base.PoolHealth.HEALTHY, available_bytes=5, volume_count=7)
    info = await backend.probe(spec(), timeout=TIMEOUT)
    assert (info.health, info.available_bytes, info.volume_count) == (
        base.PoolHealth.HEALTHY,
        5,
        7,
    )


def test_script_rejects_unknown_fields() -> None:
    with pytest.raises(TypeError, match="healthh"):
        fake.FakeBackend().script("p1", healthh=base.PoolHealth.ERROR)


async def test_kind_is_configurable() -> None:
    backend = fake.FakeBackend(kind="nfs")
    assert (await backend.probe(spec(), timeout=TIMEOUT)).kind == "nfs"


async def test_probe_delay_longer_than_timeout_times_out() -> None:
    backend = fake.FakeBackend()
    backend.script("p1", probe_delay=30.0)
    info = await backend.probe(spec(), timeout=0.1)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == "probe timed out after 0.1s"
    assert backend.probes_in_flight == 0


async def test_released_probe_gate_answers() -> None:
    backend = fake.FakeBackend()
    gate = backend.hang_probe("p1")
    task = asyncio.create_task(backend.probe(spec(), timeout=TIMEOUT))
    await asyncio.sleep(0)
    assert backend.probes_in_flight == 1
    gate.set()
    info = await task
    assert info.health is base.PoolHealth.HEALTHY
    assert backend.max_probes_in_flight == 1


async def test_hung_attach_raises_timeout_and_does_not_attach() -> None:
    backend = fake.FakeBackend()
    gate = backend.hang_attach("p1")
    with pytest.raises(base.BackendTimeout, match=r"attach fake pool p1: timed out after 0\.1s"):
        await backend.attach(spec(), timeout=0.1)
    assert backend.attached == set()
    gate.set()
    info = await backend.attach(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY
    assert backend.attached == {"p1"}


async def test_scripted_exceptions_are_raised() -> None:
    backend = fake.FakeBackend()
    backend.script(
        "p1",
        attach_error=base.MountError("mount: permission denied"),
        detach_error=base.MountError("umount: target is busy"),
        probe_error=base.ProbeError("boom"),
        list_error=base.BackendUnavailable("gone"),
    )
    with pytest.raises(base.MountError, match="permission denied"):
        await backend.attach(spec(), timeout=TIMEOUT)
    with pytest.raises(base.MountError, match="busy"):
        await backend.detach(spec(), timeout=TIMEOUT)
    with pytest.raises(base.ProbeError, match="boom"):
        await backend.probe(spec(), timeout=TIMEOUT)
    with pytest.raises(base.BackendUnavailable, match="gone"):
        await backend.list_volumes(spec(), timeout=TIMEOUT)


async def test_calls_and_attachment_are_recorded() -> None:
    backend = fake.FakeBackend()
    await backend.attach(spec("a"), timeout=TIMEOUT)
    await backend.attach(spec("b"), timeout=TIMEOUT)
    await backend.detach(spec("a"), timeout=TIMEOUT)
    await backend.list_volumes(spec("b"), timeout=TIMEOUT)
    assert backend.calls_to("attach") == ["a", "b"]
    assert backend.calls_to("detach") == ["a"]
    assert backend.calls_to("probe") == ["a", "b"]  # attach measures
    assert backend.calls[-1] == fake.FakeCall("list_volumes", "b")
    assert backend.attached == {"b"}
