"""The reconciler (PoolManager) and its on-disk state, against real local_dir pools.

Attach what is assigned, detach what is not (also when the list becomes
empty), re-attach on a changed definition, report failures as ERROR with the
reason and retry them with per-pool backoff, and come back after a restart
from ``assignments.json`` alone.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from node import pools
from qvdc.kits import timing
from storage_backends import base, fake, local_dir, registry

LOG = logging.getLogger("test")


class Recording:
    """Delegates to a real backend and records attach/detach calls."""

    def __init__(self, inner: base.StorageBackend) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.calls: list[tuple[str, str, str]] = []  # (method, pool id, path config)

    def validate(self, spec: base.PoolSpec) -> None:
        self.inner.validate(spec)

    async def attach(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        self.calls.append(("attach", spec.pool_id, str(spec.config.get("path", ""))))
        return await self.inner.attach(spec, timeout=timeout)

    async def detach(self, spec: base.PoolSpec, *, timeout: float) -> None:
        self.calls.append(("detach", spec.pool_id, str(spec.config.get("path", ""))))
        await self.inner.detach(spec, timeout=timeout)

    async def probe(self, spec: base.PoolSpec, *, timeout: float) -> base.PoolInfo:
        return await self.inner.probe(spec, timeout=timeout)

    async def list_volumes(self, spec: base.PoolSpec, *, timeout: float) -> list[base.VolumeInfo]:
        return await self.inner.list_volumes(spec, timeout=timeout)


def spec(pool_id: str, path: str = "", kind: str = "local_dir") -> base.PoolSpec:
    config: dict[str, Any] = {"path": path, "node_id": "", "capacity_gib": 0}
    return base.PoolSpec(pool_id=pool_id, kind=kind, config=config, name=pool_id)


def make_manager(
    tmp_path: Path,
    backend: Any,
    *,
    clock: timing.Clock | None = None,
    changes: list[str] | None = None,
) -> pools.PoolManager:
    store = pools.StateStore(state_dir=tmp_path / "state", timeout=5.0, logger=LOG)

    def factory(kind: str) -> base.StorageBackend:
        if kind != backend.kind:
            raise base.InvalidConfig(f"unknown storage backend {kind!r}")
        return backend  # type: ignore[no-any-return]

    manager = pools.PoolManager(
        backend_factory=factory,
        store=store,
        attach_timeout=5.0,
        backoff_initial=1.0,
        backoff_max=8.0,
        resync_interval=60.0,
        logger=LOG,
        clock=clock,
    )
    if changes is not None:
        manager.on_change = lambda: changes.append("change")
    return manager


@pytest.fixture
def local(tmp_path: Path) -> Recording:
    return Recording(local_dir.LocalDirBackend(pools_root=tmp_path / "pools"))


async def test_attaches_assigned_and_detaches_unassigned_including_empty_list(tmp_path, local):
    manager = make_manager(tmp_path, local)
    manager.set_desired({"a": spec("a"), "b": spec("b")})
    assert {k: v.health for k, v in manager.reports().items()} == {
        "a": base.PoolHealth.UNMOUNTED,
        "b": base.PoolHealth.UNMOUNTED,
    }
    await manager.reconcile_once()

    assert (tmp_path / "pools" / "a").is_dir() and (tmp_path / "pools" / "b").is_dir()
    reports = manager.reports()
    assert {k: v.health for k, v in reports.items()} == {
        "a": base.PoolHealth.HEALTHY,
        "b": base.PoolHealth.HEALTHY,
    }
    assert reports["a"].mount_path == str(tmp_path / "pools" / "a")
    assert reports["a"].total_bytes > 0
    assert set(manager.probe_targets()) == {"a", "b"}

    manager.set_desired({"a": spec("a")})
    await manager.reconcile_once()
    assert set(manager.attached) == {"a"}
    assert set(manager.reports()) == {"a"}

    # The last assignment removed: an empty list still detaches (upstream skipped it).
    manager.set_desired({})
    await manager.reconcile_once()
    assert manager.attached == {}
    assert manager.reports() == {}
    assert [c[:2] for c in local.calls if c[0] == "detach"] == [("detach", "b"), ("detach", "a")]
    # Detaching never deletes data.
    assert (tmp_path / "pools" / "a").is_dir()


async def test_changed_definition_is_detached_and_reattached(tmp_path, local):
    old_path, new_path = tmp_path / "old", tmp_path / "new"
    manager = make_manager(tmp_path, local)
    manager.set_desired({"p": spec("p", str(old_path))})
    await manager.reconcile_once()
    assert manager.reports()["p"].mount_path == str(old_path)

    manager.set_desired({"p": spec("p", str(new_path))})
    assert manager.probe_targets() == {}  # the old attachment is no longer what is wanted
    await manager.reconcile_once()
    assert local.calls[-2:] == [("detach", "p", str(old_path)), ("attach", "p", str(new_path))]
    assert new_path.is_dir()
    assert manager.attached["p"].config["path"] == str(new_path)
    assert manager.reports()["p"].mount_path == str(new_path)
    assert manager.reports()["p"].health is base.PoolHealth.HEALTHY

    # An unchanged definition is left alone.
    calls = len(local.calls)
    manager.set_desired({"p": spec("p", str(new_path))})
    await manager.reconcile_once()
    assert len(local.calls) == calls


async def test_invalid_config_is_reported_not_silently_missing(tmp_path, local):
    manager = make_manager(tmp_path, local)
    manager.set_desired({"bad": spec("bad", "relative/path"), "good": spec("good")})
    await manager.reconcile_once()
    reports = manager.reports()
    assert reports["good"].health is base.PoolHealth.HEALTHY
    assert reports["bad"].health is base.PoolHealth.ERROR
    assert reports["bad"].error_message.startswith("attach failed: ")
    assert "absolute" in reports["bad"].error_message
    assert "bad" not in manager.attached


async def test_unknown_kind_and_unusable_definitions_are_reported(tmp_path, local):
    manager = make_manager(tmp_path, local)
    manager.set_desired(
        {"lvm": spec("lvm", kind="local_lvm")}, rejected={"weird": "pool weird has no backend"}
    )
    await manager.reconcile_once()
    reports = manager.reports()
    assert reports["lvm"].health is base.PoolHealth.ERROR
    assert "unknown storage backend 'local_lvm'" in reports["lvm"].error_message
    assert reports["weird"].health is base.PoolHealth.ERROR
    assert reports["weird"].error_message == "invalid pool definition: pool weird has no backend"


async def test_failed_attach_retries_with_per_pool_backoff(tmp_path):
    clock = timing.FakeClock()
    backend = fake.FakeBackend(kind="local_dir")
    backend.script("flaky", attach_error=base.MountError("export not found"))
    manager = make_manager(tmp_path, backend, clock=clock)
    manager.set_desired({"flaky": spec("flaky"), "fine": spec("fine")})

    await manager.reconcile_once()
    report = manager.reports()["flaky"]
    assert report.health is base.PoolHealth.ERROR
    assert report.error_message == "attach failed: export not found"
    assert manager.reports()["fine"].health is base.PoolHealth.HEALTHY
    assert backend.calls_to("attach") == ["fine", "flaky"] or backend.calls_to("attach") == [
        "flaky",
        "fine",
    ]

    # Within the backoff delay (at most 1 s) nothing is retried ...
    await manager.reconcile_once()
    assert backend.calls_to("attach").count("flaky") == 1
    # ... after it, the pool is tried again; delays double per failure.
    clock.advance(1.0)
    await manager.reconcile_once()
    assert backend.calls_to("attach").count("flaky") == 2
    clock.advance(1.0)
    await manager.reconcile_once()
    assert backend.calls_to("attach").count("flaky") == 2  # second delay is 1-2 s
    clock.advance(1.0)
    await manager.reconcile_once()
    assert backend.calls_to("attach").count("flaky") == 3

    backend.script("flaky", attach_error=None)
    clock.advance(4.0)
    await manager.reconcile_once()
    assert manager.reports()["flaky"].health is base.PoolHealth.HEALTHY
    assert backend.calls_to("attach").count("fine") == 1


async def test_new_definition_resets_the_backoff(tmp_path):
    clock = timing.FakeClock()
    backend = fake.FakeBackend(kind="local_dir")
    backend.script("p", attach_error=base.MountError("no such export"))
    manager = make_manager(tmp_path, backend, clock=clock)
    manager.set_desired({"p": spec("p", "/srv/one")})
    await manager.reconcile_once()
    backend.script("p", attach_error=None)
    manager.set_desired({"p": spec("p", "/srv/two")})
    await manager.reconcile_once()  # no clock advance needed
    assert manager.reports()["p"].health is base.PoolHealth.HEALTHY
    assert manager.reports()["p"].mount_path == "/srv/two"


async def test_failed_detach_is_reported_and_retried(tmp_path):
    clock = timing.FakeClock()
    backend = fake.FakeBackend(kind="local_dir")
    manager = make_manager(tmp_path, backend, clock=clock)
    manager.set_desired({"p": spec("p")})
    await manager.reconcile_once()
    backend.script("p", detach_error=base.MountError("target is busy"))
    manager.set_desired({})
    await manager.reconcile_once()
    assert manager.reports()["p"].health is base.PoolHealth.ERROR
    assert manager.reports()["p"].error_message == "detach failed: target is busy"
    backend.script("p", detach_error=None)
    clock.advance(1.0)
    await manager.reconcile_once()
    assert manager.reports() == {}
    assert backend.attached == set()


async def test_health_changes_notify_and_stale_probes_are_ignored(tmp_path):
    changes: list[str] = []
    backend = fake.FakeBackend(kind="local_dir")
    manager = make_manager(tmp_path, backend, changes=changes)
    s = spec("p")
    manager.set_desired({"p": s})
    await manager.reconcile_once()
    changes.clear()

    healthy = manager.reports()["p"]
    manager.record_probe(spec=s, info=healthy)
    assert changes == []  # same health: no extra heartbeat
    degraded = base.PoolInfo(pool_id="p", kind="local_dir", health=base.PoolHealth.DEGRADED)
    manager.record_probe(spec=s, info=degraded)
    assert changes == ["change"]
    assert manager.reports()["p"].health is base.PoolHealth.DEGRADED

    # A probe of a definition that is no longer wanted does not overwrite the report.
    manager.set_desired({"p": spec("p", "/elsewhere")})
    manager.record_probe(spec=s, info=healthy)
    assert manager.reports()["p"].health is base.PoolHealth.DEGRADED


async def test_restart_reattaches_from_the_persisted_assignments(tmp_path):
    first_backend = Recording(local_dir.LocalDirBackend(pools_root=tmp_path / "pools"))
    first = make_manager(tmp_path, first_backend)
    first.set_desired({"a": spec("a"), "b": spec("b", str(tmp_path / "elsewhere" / "b"))})
    await first.reconcile_once()
    saved = json.loads((tmp_path / "state" / "assignments.json").read_text())
    assert saved["version"] == 1
    assert [p["pool_id"] for p in saved["pools"]] == ["a", "b"]
    assert saved["pools"][1]["config"]["path"] == str(tmp_path / "elsewhere" / "b")
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["assignments.json"]

    # A new process: fresh backend, no controller; the cache alone brings the pools back.
    second_backend = Recording(local_dir.LocalDirBackend(pools_root=tmp_path / "pools"))
    second = make_manager(tmp_path, second_backend)
    assert await second.load() == 2
    await second.reconcile_once()
    assert set(second.attached) == {"a", "b"}
    assert {k: v.health for k, v in second.reports().items()} == {
        "a": base.PoolHealth.HEALTHY,
        "b": base.PoolHealth.HEALTHY,
    }
    assert [c[:2] for c in second_backend.calls] == [("attach", "a"), ("attach", "b")]


async def test_unreadable_cache_is_ignored(tmp_path, local, caplog):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "assignments.json").write_text("{not json")
    manager = make_manager(tmp_path, local)
    with caplog.at_level(logging.WARNING):
        assert await manager.load() == 0
    assert "ignoring unreadable" in caplog.text
    assert manager.desired == {}


async def test_node_id_round_trip(tmp_path):
    store = pools.StateStore(state_dir=tmp_path / "deep" / "state", timeout=5.0, logger=LOG)
    assert await store.load_node_id() is None
    await store.save_node_id("node-1")
    await store.save_node_id("node-2")
    assert await store.load_node_id() == "node-2"
    assert sorted(p.name for p in (tmp_path / "deep" / "state").iterdir()) == ["node-id"]


async def test_state_files_are_owner_only_whatever_the_umask(tmp_path):
    """assignments.json holds opened secrets (CHAP password, cephx key): mode 0600, also
    when the umask would allow more and when an older, readable file is replaced."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "assignments.json").write_text("{}")
    (state / "assignments.json").chmod(0o644)
    store = pools.StateStore(state_dir=state, timeout=5.0, logger=LOG)
    secret = base.PoolSpec(pool_id="p1", kind="iscsi", config={"chap_password": "s3cret"})
    previous = os.umask(0o022)
    try:
        await store.save_assignments({"p1": secret})
        await store.save_node_id("node-1")
    finally:
        os.umask(previous)
    for name in ("assignments.json", "node-id"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert "s3cret" in (state / "assignments.json").read_text()  # the node needs it back


async def test_a_save_cancelled_while_its_file_opens_leaves_no_file_open(tmp_path, monkeypatch):
    """The daemon stopping mid-save cancels the save; the worker thread still finishes
    opening the temporary file, and must close it (the suite caught an unclosed one)."""
    store = pools.StateStore(state_dir=tmp_path, timeout=5.0, logger=LOG)
    opened, release, done = threading.Event(), threading.Event(), threading.Event()
    fchmod = os.fchmod

    def slow_fchmod(fd: int, mode: int) -> None:  # right after the open, in the thread
        opened.set()
        release.wait(10)
        try:
            fchmod(fd, mode)
        finally:
            done.set()

    monkeypatch.setattr(os, "fchmod", slow_fchmod)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        saving = asyncio.create_task(store.save_node_id("node-1"))
        assert await asyncio.to_thread(opened.wait, 10)
        saving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saving
        release.set()
        assert await asyncio.to_thread(done.wait, 10)
        await asyncio.sleep(0.2)  # the thread closes the file after fchmod returns
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    monkeypatch.undo()
    await store.save_node_id("node-2")  # and the next save works
    assert await store.load_node_id() == "node-2"


async def test_registry_builds_local_dir_with_node_options(tmp_path):
    # The app hands the registry pools_root for local_dir; check the option names still fit.
    from node import app, settings

    s = settings.NodeSettings(controllers=("127.0.0.1:1",), pools_root=tmp_path / "p")
    backend = registry.get_backend("local_dir", **app.backend_options("local_dir", settings=s))
    assert isinstance(backend, local_dir.LocalDirBackend)
    assert backend.pool_path(spec("x")) == str(tmp_path / "p" / "x")
