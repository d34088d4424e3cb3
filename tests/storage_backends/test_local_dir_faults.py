"""local_dir health under real faults on a loop-mounted 64 MiB ext4 filesystem.

Every fault is real (docs/lab.md, Local directory): ``dd`` until ENOSPC, ``mount -o
remount,ro``, the ext4 shutdown ioctl for EIO, ``umount`` underneath the
pool. Each test also checks the pool recovers once the fault is undone, since
a probe that cannot see recovery is as broken as one that cannot see the fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from storage_backends import base, local_dir

if TYPE_CHECKING:
    from tests.storage_backends.conftest import LoopExt4

TIMEOUT = 10.0


def spec(path: Path) -> base.PoolSpec:
    return base.PoolSpec(pool_id="p1", kind="local_dir", config={"path": str(path)})


@pytest.fixture
def backend(pools_root: Path) -> local_dir.LocalDirBackend:
    return local_dir.LocalDirBackend(pools_root=pools_root)


async def test_attach_records_the_loop_filesystem(
    backend: local_dir.LocalDirBackend, loop_ext4: LoopExt4
) -> None:
    pool = loop_ext4.mount_point / "pool"
    info = await backend.attach(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    # statvfs of the 64 MiB image, not of the host filesystem.
    assert 40 * 1024**2 < info.total_bytes <= 64 * 1024**2


async def test_full_filesystem_is_degraded_then_recovers(
    backend: local_dir.LocalDirBackend, loop_ext4: LoopExt4
) -> None:
    pool = loop_ext4.mount_point / "pool"
    await backend.attach(spec(pool), timeout=TIMEOUT)
    loop_ext4.fill(pool)
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message == "nearly full: 0% free"
    assert info.available_bytes == 0

    for filler in pool.glob("fill-*"):
        filler.unlink()
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_enospc_on_the_write_probe_is_degraded_without_a_threshold(
    pools_root: Path, loop_ext4: LoopExt4
) -> None:
    # With full_threshold=0 only the write probe's ENOSPC can tell the pool is full.
    backend = local_dir.LocalDirBackend(pools_root=pools_root, full_threshold=0.0)
    pool = loop_ext4.mount_point / "pool"
    await backend.attach(spec(pool), timeout=TIMEOUT)
    loop_ext4.fill(pool)
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message.startswith("nearly full:")


@pytest.mark.parametrize("write_probe", [True, False], ids=["write-probe", "statvfs-only"])
async def test_read_only_remount_is_degraded_then_recovers(
    pools_root: Path, loop_ext4: LoopExt4, write_probe: bool
) -> None:
    # Without the write probe only statvfs's ST_RDONLY flag can tell.
    backend = local_dir.LocalDirBackend(pools_root=pools_root, write_probe=write_probe)
    pool = loop_ext4.mount_point / "pool"
    await backend.attach(spec(pool), timeout=TIMEOUT)
    loop_ext4.remount(read_only=True)
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message == "read-only"
    assert info.total_bytes > 0  # still measured

    loop_ext4.remount(read_only=False)
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_io_error_is_error_then_recovers_after_repair(
    backend: local_dir.LocalDirBackend, loop_ext4: LoopExt4
) -> None:
    pool = loop_ext4.mount_point / "pool"
    await backend.attach(spec(pool), timeout=TIMEOUT)
    # After an ext4 shutdown statvfs still answers; only the write probe sees EIO.
    loop_ext4.shut_down()
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == f"write probe in {pool}: [Errno 5] Input/output error"

    loop_ext4.repair()
    pool.mkdir(exist_ok=True)  # the shutdown dropped the unflushed journal
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_unmounted_underneath_mount_point_pool_is_unmounted_then_recovers(
    backend: local_dir.LocalDirBackend, loop_ext4: LoopExt4
) -> None:
    # The pool is the mount point itself: after umount the path still exists,
    # as an empty directory on the host filesystem. Only st_dev/mountinfo tell.
    pool = loop_ext4.mount_point
    (pool / "vm.qcow2").write_bytes(b"q" * 1024)
    info = await backend.attach(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.volume_count == 1

    loop_ext4.umount()
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert f"filesystem expected at {pool} is not mounted" in info.error_message
    assert list(pool.iterdir()) == []  # nothing was written to the host filesystem
    with pytest.raises(base.BackendUnavailable, match="not mounted"):
        await backend.list_volumes(spec(pool), timeout=TIMEOUT)

    # Attaching again without a detach must not adopt the host filesystem.
    info = await backend.attach(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED

    loop_ext4.mount()
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.volume_count == 1


async def test_unmounted_underneath_subdirectory_pool_does_not_exist(
    backend: local_dir.LocalDirBackend, loop_ext4: LoopExt4
) -> None:
    pool = loop_ext4.mount_point / "pools" / "p1"
    await backend.attach(spec(pool), timeout=TIMEOUT)
    loop_ext4.umount()
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert info.error_message == (
        f"pool path {pool} does not exist "
        f"(filesystem expected at {loop_ext4.mount_point} is not mounted)"
    )

    loop_ext4.mount()
    info = await backend.probe(spec(pool), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
