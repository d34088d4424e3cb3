"""local_dir on a plain directory of the host filesystem: validation, health rules, quota.

Faults that need a filesystem of their own (full, read-only, I/O error,
unmounted underneath) are in ``test_local_dir_faults.py`` on a real loop
device; a hung filesystem is injected here by blocking ``_statvfs``.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from storage_backends import base, local_dir

if TYPE_CHECKING:
    from tests.storage_backends.conftest import HungStatvfs

TIMEOUT = 10.0
MIB = 1024**2
GIB = 1024**3


def spec(pool_id: str = "p1", **config: Any) -> base.PoolSpec:
    return base.PoolSpec(pool_id=pool_id, kind="local_dir", config=config)


@pytest.fixture
def backend(pools_root: Path) -> local_dir.LocalDirBackend:
    return local_dir.LocalDirBackend(pools_root=pools_root)


def allocated(*paths: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in paths)


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            {"path": "rel/dir"},
            "local_dir.path must be an absolute path, got 'rel/dir'",
            id="relative",
        ),
        pytest.param({"path": "/a/../b"}, "local_dir.path must be normalised", id="dotdot"),
        pytest.param({"path": "/a/./b"}, "local_dir.path must be normalised", id="dot"),
        pytest.param({"path": "/a//b"}, "local_dir.path must be normalised", id="double-slash"),
        pytest.param(
            {"path": "//a"}, "local_dir.path must be normalised", id="leading-double-slash"
        ),
        pytest.param({"path": "/a/b/"}, "local_dir.path must be normalised", id="trailing-slash"),
        pytest.param({"path": 5}, "local_dir.path must be a string", id="not-a-string"),
        pytest.param(
            {"capacity_gib": -1}, "local_dir.capacity_gib must be >= 0, got -1", id="negative"
        ),
        pytest.param(
            {"capacity_gib": 1.5}, "local_dir.capacity_gib must be an integer", id="float"
        ),
        pytest.param(
            {"capacity_gib": True}, "local_dir.capacity_gib must be an integer", id="bool"
        ),
    ],
)
def test_validate_rejects(
    backend: local_dir.LocalDirBackend, config: dict[str, Any], message: str
) -> None:
    with pytest.raises(base.InvalidConfig) as caught:
        backend.validate(spec(**config))
    assert str(caught.value).startswith(message)


def test_validate_rejects_a_pool_id_that_cannot_name_a_directory(
    backend: local_dir.LocalDirBackend,
) -> None:
    with pytest.raises(base.InvalidConfig, match=r"local_dir\.path is empty"):
        backend.validate(spec("../escape"))


@pytest.mark.parametrize(
    "config", [{}, {"path": ""}, {"path": "/srv/pools/a"}, {"capacity_gib": 0}, {"capacity_gib": 3}]
)
def test_validate_accepts(backend: local_dir.LocalDirBackend, config: dict[str, Any]) -> None:
    backend.validate(spec(**config))


def test_empty_path_means_pools_root_slash_pool_id(
    backend: local_dir.LocalDirBackend, pools_root: Path
) -> None:
    assert backend.pool_path(spec("p7")) == str(pools_root / "p7")
    assert backend.pool_path(spec("p7", path="/srv/x")) == "/srv/x"


def test_constructor_rejects_bad_settings(pools_root: Path) -> None:
    with pytest.raises(base.InvalidConfig, match="pools_root"):
        local_dir.LocalDirBackend(pools_root=Path("relative"))
    with pytest.raises(base.InvalidConfig, match="full_threshold"):
        local_dir.LocalDirBackend(pools_root=pools_root, full_threshold=1.5)


# -- attach / detach ----------------------------------------------------------------


async def test_attach_creates_nested_directory_with_mode_0750(
    backend: local_dir.LocalDirBackend, tmp_path: Path
) -> None:
    path = tmp_path / "deep" / "er" / "pool"
    info = await backend.attach(spec(path=str(path)), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.mount_path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750


async def test_attach_on_a_file_raises_mount_error(
    backend: local_dir.LocalDirBackend, tmp_path: Path
) -> None:
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    with pytest.raises(base.MountError, match=str(path)):
        await backend.attach(spec(path=str(path)), timeout=TIMEOUT)


async def test_detach_leaves_directory_and_files(
    backend: local_dir.LocalDirBackend, pools_root: Path
) -> None:
    await backend.attach(spec(), timeout=TIMEOUT)
    (pools_root / "p1" / "disk.qcow2").write_bytes(b"data")
    await backend.detach(spec(), timeout=TIMEOUT)
    assert (pools_root / "p1" / "disk.qcow2").read_bytes() == b"data"


async def test_probe_without_attach_measures(
    backend: local_dir.LocalDirBackend, pools_root: Path
) -> None:
    (pools_root / "p1").mkdir()
    info = await backend.probe(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


# -- health rules ---------------------------------------------------------------------


async def test_missing_path_is_unmounted(
    backend: local_dir.LocalDirBackend, pools_root: Path
) -> None:
    await backend.attach(spec(), timeout=TIMEOUT)
    (pools_root / "p1").rmdir()
    info = await backend.probe(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert info.error_message == f"pool path {pools_root / 'p1'} does not exist"


async def test_path_that_is_not_a_directory_is_error(
    backend: local_dir.LocalDirBackend, pools_root: Path
) -> None:
    await backend.attach(spec(), timeout=TIMEOUT)
    (pools_root / "p1").rmdir()
    (pools_root / "p1").write_text("oops")
    info = await backend.probe(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert "is not a directory" in info.error_message


async def test_free_space_below_threshold_is_degraded(pools_root: Path) -> None:
    # The host filesystem is surely less than 99.99 % free.
    backend = local_dir.LocalDirBackend(pools_root=pools_root, full_threshold=0.9999)
    info = await backend.attach(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.DEGRADED
    percent = int(info.available_bytes * 100 / info.total_bytes)
    assert info.error_message == f"nearly full: {percent}% free"


async def test_whole_filesystem_numbers_come_from_statvfs(
    backend: local_dir.LocalDirBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Capture the statvfs the backend itself saw: the host filesystem is shared
    # and its free space moves between two calls.
    seen: list[os.statvfs_result] = []
    real = local_dir._statvfs

    def recording(path: str) -> os.statvfs_result:
        seen.append(real(path))
        return seen[-1]

    monkeypatch.setattr(local_dir, "_statvfs", recording)
    info = await backend.attach(spec(), timeout=TIMEOUT)
    (vfs,) = seen
    assert info.total_bytes == vfs.f_blocks * vfs.f_frsize
    assert info.used_bytes == (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
    assert info.available_bytes == vfs.f_bavail * vfs.f_frsize


async def test_write_probe_writes_in_the_pool_and_leaves_no_file(
    backend: local_dir.LocalDirBackend, pools_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    real = local_dir._write_probe_file

    def recording(probe_path: str) -> None:
        written.append(probe_path)
        real(probe_path)

    monkeypatch.setattr(local_dir, "_write_probe_file", recording)
    await backend.attach(spec(), timeout=TIMEOUT)
    assert written == [str(pools_root / "p1" / local_dir.PROBE_FILE)]
    assert os.listdir(pools_root / "p1") == []


async def test_write_probe_can_be_disabled(
    pools_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(probe_path: str) -> None:
        raise AssertionError(f"write probe ran: {probe_path}")

    monkeypatch.setattr(local_dir, "_write_probe_file", fail)
    backend = local_dir.LocalDirBackend(pools_root=pools_root, write_probe=False)
    info = await backend.attach(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY


# -- volumes ----------------------------------------------------------------------------


async def test_volume_count_and_listing_take_only_regular_volume_files(
    backend: local_dir.LocalDirBackend, pools_root: Path
) -> None:
    await backend.attach(spec(), timeout=TIMEOUT)
    pool = pools_root / "p1"
    for name, size in [("a.qcow2", 10), ("b.RAW", 20), ("c.img", 30), ("d.iso", 40)]:
        (pool / name).write_bytes(b"x" * size)
    (pool / "notes.txt").write_text("not a volume")
    (pool / "dir.qcow2").mkdir()
    (pool / "link.qcow2").symlink_to(pool / "a.qcow2")
    (pool / "dir.qcow2" / "nested.qcow2").write_bytes(b"x")

    info = await backend.probe(spec(), timeout=TIMEOUT)
    assert info.volume_count == 4
    volumes = await backend.list_volumes(spec(), timeout=TIMEOUT)
    assert [(v.name, v.size_bytes, v.path) for v in volumes] == [
        (name, size, str(pool / name))
        for name, size in [("a.qcow2", 10), ("b.RAW", 20), ("c.img", 30), ("d.iso", 40)]
    ]


async def test_list_volumes_of_missing_pool_raises_unavailable(
    backend: local_dir.LocalDirBackend, pools_root: Path
) -> None:
    await backend.attach(spec(), timeout=TIMEOUT)
    (pools_root / "p1").rmdir()
    with pytest.raises(base.BackendUnavailable):
        await backend.list_volumes(spec(), timeout=TIMEOUT)


# -- quota ---------------------------------------------------------------------------------


async def test_quota_caps_total_and_counts_allocated_bytes_under_the_pool(
    backend: local_dir.LocalDirBackend, tmp_path: Path
) -> None:
    pool = tmp_path / "quota-pool"
    info = await backend.attach(spec(path=str(pool), capacity_gib=1), timeout=TIMEOUT)
    assert (info.total_bytes, info.used_bytes, info.available_bytes) == (GIB, 0, GIB)

    (pool / "sub").mkdir()
    files = [pool / "a.raw", pool / "sub" / "b.bin"]
    files[0].write_bytes(os.urandom(3 * MIB))
    files[1].write_bytes(os.urandom(MIB))
    sparse = pool / "sparse.raw"
    with sparse.open("wb") as f:
        f.truncate(512 * MIB)  # apparent size 512 MiB, nothing allocated
    (tmp_path / "outside.bin").write_bytes(os.urandom(2 * MIB))  # not in the pool

    info = await backend.probe(spec(path=str(pool), capacity_gib=1), timeout=TIMEOUT)
    used = allocated(*files, sparse)
    assert used >= 4 * MIB
    assert (info.total_bytes, info.used_bytes, info.available_bytes) == (GIB, used, GIB - used)
    assert info.health is base.PoolHealth.HEALTHY
    assert (
        info.volume_count == 2
    )  # a.raw and sparse.raw; sub/b.bin is neither top-level nor a volume


async def test_quota_nearly_full_is_degraded(pools_root: Path, tmp_path: Path) -> None:
    backend = local_dir.LocalDirBackend(pools_root=pools_root, full_threshold=0.999)
    pool = tmp_path / "quota-pool"
    pool.mkdir()
    (pool / "big.raw").write_bytes(os.urandom(2 * MIB))  # 2 MiB of 1 GiB: 99.8 % free
    info = await backend.attach(spec(path=str(pool), capacity_gib=1), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message == "nearly full: 99% free"


async def test_quota_larger_than_filesystem_is_capped_by_filesystem(
    backend: local_dir.LocalDirBackend, pools_root: Path
) -> None:
    info = await backend.attach(spec(capacity_gib=10**9), timeout=TIMEOUT)  # an exabyte
    vfs = os.statvfs(pools_root / "p1")
    assert info.total_bytes == vfs.f_blocks * vfs.f_frsize
    assert 0 < info.available_bytes <= info.total_bytes


async def test_quota_walk_is_bounded(pools_root: Path) -> None:
    backend = local_dir.LocalDirBackend(pools_root=pools_root, max_walk_entries=3)
    await backend.attach(spec(capacity_gib=1), timeout=TIMEOUT)
    for i in range(5):
        (pools_root / "p1" / f"f{i}.bin").write_bytes(b"x")
    info = await backend.probe(spec(capacity_gib=1), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.DEGRADED
    assert "quota usage is a lower bound: more than 3 entries" in info.error_message


# -- hung filesystem -------------------------------------------------------------------------


async def test_hung_probe_times_out_and_never_starts_a_second_worker(
    backend: local_dir.LocalDirBackend, pools_root: Path, hung_statvfs: HungStatvfs
) -> None:
    await backend.attach(spec(), timeout=TIMEOUT)
    path = str(pools_root / "p1")
    hung_statvfs.block(path)
    calls_before = len(hung_statvfs.calls)

    first = await backend.probe(spec(), timeout=0.2)
    assert first.health is base.PoolHealth.ERROR
    assert first.error_message == "probe timed out after 0.2s"

    second = await backend.probe(spec(), timeout=0.2)
    assert second.health is base.PoolHealth.ERROR
    assert second.error_message == f"probe timed out; previous probe of {path} still running"
    assert len(hung_statvfs.calls) == calls_before + 1  # the stuck worker only

    # Other operations on the same pool do not start workers either.
    with pytest.raises(base.BackendTimeout, match="still running"):
        await backend.list_volumes(spec(), timeout=0.2)
    assert len(hung_statvfs.calls) == calls_before + 1

    hung_statvfs.release()
    recovered = await backend.probe(spec(), timeout=TIMEOUT)
    assert recovered.health is base.PoolHealth.HEALTHY, recovered.error_message
    assert hung_statvfs.max_in_flight == 1


async def test_hung_pool_does_not_block_other_pools(
    backend: local_dir.LocalDirBackend, pools_root: Path, hung_statvfs: HungStatvfs
) -> None:
    await backend.attach(spec("stuck"), timeout=TIMEOUT)
    await backend.attach(spec("fine"), timeout=TIMEOUT)
    hung_statvfs.block(str(pools_root / "stuck"))
    stuck, fine = await asyncio.gather(
        backend.probe(spec("stuck"), timeout=0.5), backend.probe(spec("fine"), timeout=TIMEOUT)
    )
    assert stuck.health is base.PoolHealth.ERROR
    assert fine.health is base.PoolHealth.HEALTHY, fine.error_message


async def test_concurrent_probes_of_one_pool_run_one_worker_at_a_time(
    backend: local_dir.LocalDirBackend, hung_statvfs: HungStatvfs
) -> None:
    await backend.attach(spec(), timeout=TIMEOUT)
    hung_statvfs.delay = 0.02
    infos = await asyncio.gather(*(backend.probe(spec(), timeout=TIMEOUT) for _ in range(5)))
    assert [i.health for i in infos] == [base.PoolHealth.HEALTHY] * 5
    assert hung_statvfs.max_in_flight == 1


async def test_attach_while_a_worker_is_stuck_raises_timeout(
    backend: local_dir.LocalDirBackend, pools_root: Path, hung_statvfs: HungStatvfs
) -> None:
    await backend.attach(spec(), timeout=TIMEOUT)
    hung_statvfs.block(str(pools_root / "p1"))
    await backend.probe(spec(), timeout=0.2)
    await backend.detach(spec(), timeout=TIMEOUT)
    with pytest.raises(base.BackendTimeout, match="still running"):
        await backend.attach(spec(), timeout=0.2)


# -- mountinfo parsing -------------------------------------------------------------------------

MOUNTINFO = """\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 7:0 / /srv/pools rw,relatime shared:1 - ext4 /dev/loop0 rw
31 30 7:1 / /srv/pools/with\\040space rw - xfs /dev/loop1 rw
32 30 7:2 / /srv/pools rw - ext4 /dev/loop2 rw
garbage line
"""


def test_parse_mountinfo_unescapes_and_reads_fields() -> None:
    mounts = local_dir.parse_mountinfo(MOUNTINFO)
    assert [(m.mount_point, m.major_minor, m.fstype, m.source) for m in mounts] == [
        ("/", "254:0", "ext4", "/dev/vda"),
        ("/srv/pools", "7:0", "ext4", "/dev/loop0"),
        ("/srv/pools/with space", "7:1", "xfs", "/dev/loop1"),
        ("/srv/pools", "7:2", "ext4", "/dev/loop2"),
    ]


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("/srv/pools/a", "/dev/loop2"),  # longest prefix; the later (top) mount of two
        ("/srv/pools", "/dev/loop2"),
        ("/srv/pools/with space/x", "/dev/loop1"),
        ("/srv/poolsx", "/dev/vda"),  # a prefix of the name is not a parent directory
        ("/etc", "/dev/vda"),
    ],
)
def test_find_mount_picks_longest_then_topmost(path: str, source: str) -> None:
    mount = local_dir.find_mount(path, mounts=local_dir.parse_mountinfo(MOUNTINFO))
    assert mount is not None
    assert mount.source == source
