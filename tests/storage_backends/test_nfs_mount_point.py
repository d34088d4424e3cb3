"""An NFS pool with ``create_path`` false never creates its mount point.

The mount point's parent may be a disk that is not mounted yet; creating the
directory there (and mounting on it) would hide the mistake. The mount command
here is ``false``: reaching it would fail with its exit status instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from storage_backends import base, nfs

TIMEOUT = 10.0


def spec(mount_point: Path, **extra: object) -> base.PoolSpec:
    config = {"server": "127.0.0.1", "export_path": "/x", "mount_point": str(mount_point)}
    return base.PoolSpec(pool_id="p1", kind="nfs", config={**config, **extra})


@pytest.fixture
def backend(tmp_path: Path) -> nfs.NfsBackend:
    return nfs.NfsBackend(mount_root=tmp_path, mount_command=("false",))


async def test_create_path_false_refuses_a_missing_mount_point(
    backend: nfs.NfsBackend, tmp_path: Path
) -> None:
    mount_point = tmp_path / "disk" / "nfs-a"
    with pytest.raises(base.MountError) as caught:
        await backend.attach(spec(mount_point, create_path=False), timeout=TIMEOUT)
    assert str(caught.value) == (
        f"mount point {mount_point} does not exist and nfs.create_path is false: "
        "create it (or mount the filesystem that holds it) first"
    )
    assert not mount_point.exists() and not mount_point.parent.exists()


@pytest.mark.parametrize("extra", [{}, {"create_path": None}, {"create_path": True}])
async def test_by_default_the_mount_point_is_created(
    backend: nfs.NfsBackend, tmp_path: Path, extra: dict[str, object]
) -> None:
    mount_point = tmp_path / "disk" / "nfs-a"
    with pytest.raises(base.MountError, match="failed \\(exit 1\\)"):  # the mount command ran
        await backend.attach(spec(mount_point, **extra), timeout=TIMEOUT)
    assert mount_point.is_dir()


async def test_create_path_false_with_an_existing_mount_point_mounts(
    backend: nfs.NfsBackend, tmp_path: Path
) -> None:
    mount_point = tmp_path / "nfs-a"
    mount_point.mkdir()
    with pytest.raises(base.MountError, match="failed \\(exit 1\\)"):  # reached the mount
        await backend.attach(spec(mount_point, create_path=False), timeout=TIMEOUT)
