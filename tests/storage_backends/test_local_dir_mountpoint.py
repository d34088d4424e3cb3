"""local_dir pools that must sit on a mounted disk (``require_mountpoint``,
``mount_point``) or on a path that already exists (``create_path`` false).

The disk is a real tmpfs mounted by the test (the suite runs as root): while it
is not mounted the pool is UNMOUNTED, names the path, and nothing is created or
written on the parent filesystem; once mounted, the next probe attaches it.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storage_backends import base, configs, local_dir

TIMEOUT = 10.0


@dataclass
class Disk:
    """A directory on which the test mounts (and unmounts) a small tmpfs."""

    mount_point: Path

    def mount(self) -> None:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "quantix-test", str(self.mount_point)],
            check=True,
        )

    def umount(self) -> None:
        subprocess.run(["umount", str(self.mount_point)], check=True)

    @property
    def mounted(self) -> bool:
        return os.path.ismount(self.mount_point)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = Disk(mount_point=tmp_path / "disk")
    disk.mount_point.mkdir()
    try:
        yield disk
    finally:
        while disk.mounted:
            disk.umount()


@pytest.fixture
def backend(tmp_path: Path) -> local_dir.LocalDirBackend:
    return local_dir.LocalDirBackend(pools_root=tmp_path / "pools")


def spec(**config: Any) -> base.PoolSpec:
    return base.PoolSpec(pool_id="p1", kind="local_dir", config=config)


def parent_entries(disk: Disk) -> list[str]:
    """What is in the mount point's directory on the parent filesystem (unmounted)."""
    assert not disk.mounted
    return sorted(os.listdir(disk.mount_point))


async def test_require_mountpoint_unmounted_is_unmounted_and_creates_nothing(
    backend: local_dir.LocalDirBackend, disk: Disk
) -> None:
    pool = spec(path=str(disk.mount_point), require_mountpoint=True)
    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert info.error_message == (
        f"pool path {disk.mount_point} needs a filesystem mounted at {disk.mount_point}, "
        "and none is mounted there"
    )
    info = await backend.probe(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert parent_entries(disk) == []  # no write-probe file on the parent disk
    with pytest.raises(base.BackendUnavailable, match="none is mounted there"):
        await backend.list_volumes(pool, timeout=TIMEOUT)


async def test_mount_point_parent_unmounted_does_not_create_the_pool_directory(
    backend: local_dir.LocalDirBackend, disk: Disk
) -> None:
    path = disk.mount_point / "images"
    pool = spec(path=str(path), mount_point=str(disk.mount_point))
    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert f"pool path {path} needs a filesystem mounted at {disk.mount_point}" in (
        info.error_message
    )
    assert not path.exists()  # without the option this is exactly what mkdir -p made


async def test_default_pool_without_the_options_still_creates_its_directory(
    backend: local_dir.LocalDirBackend, disk: Disk
) -> None:
    # Unchanged behaviour for existing pools: the directory is created wherever it is.
    path = disk.mount_point / "images"
    info = await backend.attach(spec(path=str(path)), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert path.is_dir()


async def test_mounted_is_healthy_on_the_disk_and_a_later_mount_attaches(
    backend: local_dir.LocalDirBackend, disk: Disk
) -> None:
    path = disk.mount_point / "images"
    pool = spec(path=str(path), mount_point=str(disk.mount_point))
    assert (await backend.attach(pool, timeout=TIMEOUT)).health is base.PoolHealth.UNMOUNTED

    disk.mount()
    info = await backend.probe(pool, timeout=TIMEOUT)  # the deferred attach completes
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert path.is_dir()
    assert 0 < info.total_bytes <= 8 * 1024**2  # the tmpfs, not the parent disk

    disk.umount()
    info = await backend.probe(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert parent_entries(disk) == []


async def test_require_mountpoint_mounted_at_attach_is_healthy(
    backend: local_dir.LocalDirBackend, disk: Disk
) -> None:
    disk.mount()
    pool = spec(path=str(disk.mount_point), require_mountpoint=True)
    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert 0 < info.total_bytes <= 8 * 1024**2


async def test_create_path_false_does_not_create_a_missing_directory(
    backend: local_dir.LocalDirBackend, tmp_path: Path
) -> None:
    path = tmp_path / "absent"
    pool = spec(path=str(path), create_path=False)
    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert info.error_message.startswith(
        f"pool path {path} does not exist and local_dir.create_path is false"
    )
    assert (await backend.probe(pool, timeout=TIMEOUT)).health is base.PoolHealth.UNMOUNTED
    assert not path.exists()

    path.mkdir()  # created by the operator: the next probe attaches
    info = await backend.probe(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_create_path_false_with_an_existing_directory_is_healthy(
    backend: local_dir.LocalDirBackend, tmp_path: Path
) -> None:
    path = tmp_path / "present"
    path.mkdir()
    info = await backend.attach(spec(path=str(path), create_path=False), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


def test_mount_point_outside_the_path_is_rejected(backend: local_dir.LocalDirBackend) -> None:
    with pytest.raises(base.InvalidConfig, match=re.escape("local_dir.mount_point must be")):
        backend.validate(spec(path="/srv/pool", mount_point="/mnt/disk"))
    # The default path is the node's: the controller could not check the rule.
    with pytest.raises(base.InvalidConfig, match=re.escape("local_dir.mount_point needs")):
        backend.validate(spec(mount_point="/mnt/disk"))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, configs.LocalDirConfig()),
        (
            {
                "path": "/mnt/d/x",
                "require_mountpoint": None,
                "mount_point": "",
                "create_path": None,
            },
            configs.LocalDirConfig(path="/mnt/d/x"),
        ),
        (
            {"path": "/mnt/d/x", "mount_point": "/mnt/d", "create_path": False},
            configs.LocalDirConfig(path="/mnt/d/x", mount_point="/mnt/d", create_path=False),
        ),
        (
            {"path": "/mnt/d", "require_mountpoint": True, "mount_point": "/mnt/d"},
            configs.LocalDirConfig(path="/mnt/d", require_mountpoint=True, mount_point="/mnt/d"),
        ),
    ],
)
def test_parse_local_dir_mount_options(
    config: dict[str, Any], expected: configs.LocalDirConfig
) -> None:
    assert configs.parse_local_dir(config) == expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"require_mountpoint": "yes"}, "local_dir.require_mountpoint must be true or false"),
        ({"create_path": 0}, "local_dir.create_path must be true or false"),
        ({"path": "/a/b", "mount_point": "/a/bc"}, "local_dir.mount_point must be local_dir.path"),
        ({"path": "/a/b", "mount_point": "a"}, "local_dir.mount_point must be an absolute path"),
    ],
)
def test_parse_local_dir_rejects(config: dict[str, Any], message: str) -> None:
    with pytest.raises(configs.ConfigError, match=re.escape(message)):
        configs.parse_local_dir(config)
