"""The NFS backend against a real nfs-ganesha: configuration, attach, probe, list, detach.

The server is real (``tests/fixtures/nfs.py``); only the kernel mount is a
stand-in (``scripts/nfs-bind-mount``), because this kernel has no NFS client.
So the tests check the exact mount command a real host would run, and that
everything the server knows (capacity, which exports exist) comes from the
server itself.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from storage_backends import _libnfs, base, nfs
from tests.fixtures.nfs import (
    BIND_HELPER,
    NfsServer,
    mounts_under,
    nfs_backend_fixture,  # noqa: F401
    nfs_export_fixture,  # noqa: F401
    nfs_server_fixture,  # noqa: F401
)

TIMEOUT = 10.0
SERVER = "127.0.0.1"


def spec(pool_id: str = "p1", **config: str) -> base.PoolSpec:
    return base.PoolSpec(
        pool_id=pool_id,
        kind="nfs",
        config={"server": SERVER, "export_path": "/pool", **config},
    )


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=TIMEOUT)


def mounts_at(path: str) -> list[nfs.Mount]:
    return [m for m in nfs.read_mounts() if m.mount_point == path]


# -- configuration ---------------------------------------------------------------


def test_backend_satisfies_protocol() -> None:
    backend = nfs.NfsBackend()
    assert isinstance(backend, base.StorageBackend)
    assert backend.kind == "nfs"


def test_defaults_are_filled_in() -> None:
    cfg = nfs.NfsBackend(mount_root=Path("/srv/mnt")).parse(spec("pool-a"))
    assert cfg == nfs.NfsConfig(
        server=SERVER,
        export_path="/pool",
        version="4.1",
        options=(),
        mount_point="/srv/mnt/nfs-pool-a",
    )
    assert cfg.source == "127.0.0.1:/pool"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param({"server": ""}, r"^nfs\.server is required$", id="no-server"),
        pytest.param({"server": "nas:2049"}, r"^nfs\.server must be a hostname", id="port"),
        pytest.param({"server": "nas/x"}, r"^nfs\.server must be a hostname", id="path"),
        pytest.param({"server": 7}, r"^nfs\.server must be a string", id="not-a-string"),
        pytest.param({"export_path": ""}, r"^nfs\.export_path is required$", id="no-export"),
        pytest.param({"export_path": "pool"}, r"^nfs\.export_path must be an absolute", id="rel"),
        pytest.param({"version": "5"}, r"^nfs\.version must be one of 3, 4, 4\.0", id="v5"),
        pytest.param({"options": "ro, hard"}, r"^nfs\.options must be a comma", id="space"),
        pytest.param({"options": "hard,nfsvers=3"}, r"^nfs\.options must not set", id="vers"),
        pytest.param({"mount_point": "mnt/x"}, r"^nfs\.mount_point must be an absolute", id="rel"),
        pytest.param({"mount_point": "/mnt/../x"}, r"^nfs\.mount_point must be", id="dotdot"),
        pytest.param(
            {"mount_point": "/"}, r"^nfs\.mount_point must not be the filesystem root", id="root"
        ),
    ],
)
def test_validate_rejects_naming_the_field(config: dict[str, object], message: str) -> None:
    bad = base.PoolSpec(
        pool_id="p1", kind="nfs", config={"server": SERVER, "export_path": "/pool", **config}
    )
    with pytest.raises(base.InvalidConfig, match=message):
        nfs.NfsBackend().validate(bad)


@pytest.mark.parametrize("version", ["", "3", "4", "4.0", "4.1", "4.2"])
def test_validate_accepts_every_supported_version(version: str) -> None:
    nfs.NfsBackend().validate(spec(version=version, options="hard,noatime", mount_point="/m/a"))


def test_default_mount_point_needs_a_usable_pool_id() -> None:
    with pytest.raises(base.InvalidConfig, match=r"^nfs\.mount_point is empty and pool id '\.\.'"):
        nfs.NfsBackend().validate(spec(".."))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"mount_root": Path("rel")}, "mount_root must be absolute", id="root"),
        pytest.param({"mount_command": ()}, "mount_command must be a non-empty", id="empty"),
        pytest.param({"umount_command": "umount"}, "umount_command must be a non-empty", id="s"),
        pytest.param({"nfs_port": 0}, "nfs_port must be in 1..65535", id="port0"),
        pytest.param({"mount_port": 70000}, "mount_port must be in 1..65535", id="port-big"),
        pytest.param({"full_threshold": 1.0}, "full_threshold must be in", id="threshold"),
        pytest.param({"probe_timeout_floor": 0.0}, "probe_timeout_floor must be", id="floor"),
    ],
)
def test_constructor_rejects_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(base.InvalidConfig, match=message):
        nfs.NfsBackend(**options)  # type: ignore[arg-type]


def test_mount_and_umount_commands_are_what_a_real_host_runs() -> None:
    backend = nfs.NfsBackend(
        mount_root=Path("/srv/mnt"),
        mount_command=("sudo", "mount"),
        nfs_port=12049,
        mount_port=12048,
    )
    assert backend.mount_argv(spec(options="hard,noatime")) == [
        "sudo",
        "mount",
        "-t",
        "nfs",
        "-o",
        "vers=4.1,port=12049,hard,noatime",
        "127.0.0.1:/pool",
        "/srv/mnt/nfs-p1",
    ]
    # The MOUNT protocol port only exists for NFSv3.
    assert backend.mount_argv(spec(version="3", mount_point="/m/x"))[5:] == [
        "vers=3,port=12049,mountport=12048",
        "127.0.0.1:/pool",
        "/m/x",
    ]
    assert nfs.NfsBackend().umount_argv(spec(mount_point="/m/x")) == ["umount", "/m/x"]


@pytest.mark.parametrize(
    ("version", "ports", "url"),
    [
        (4, {}, "nfs://nas/?version=4"),
        (4, {"nfs_port": 12049, "mount_port": 12048}, "nfs://nas/?version=4&nfsport=12049"),
        (3, {"nfs_port": 1, "mount_port": 2}, "nfs://nas/?version=3&nfsport=1&mountport=2"),
    ],
)
def test_libnfs_url_carries_version_and_ports(
    version: int, ports: dict[str, int], url: str
) -> None:
    assert _libnfs.server_url(server="nas", version=version, **ports) == url


def test_nfs_versions_map_to_libnfs_protocol_families() -> None:
    backend = nfs.NfsBackend()
    assert nfs.libnfs_version(backend.parse(spec(version="3"))) == 3
    assert {nfs.libnfs_version(backend.parse(spec(version=v))) for v in ("4", "4.1", "4.2")} == {4}


def test_parse_mountinfo_unescapes_and_keeps_root() -> None:
    text = (
        "36 35 0:52 / /mnt/with\\040space rw,relatime shared:1 - nfs4 nas:/export\\040a rw\n"
        "37 35 7:0 /data /mnt/bind rw - ext4 /dev/loop0 rw\n"
        "garbage line\n"
    )
    assert nfs.parse_mountinfo(text) == [
        nfs.Mount(mount_point="/mnt/with space", root="/", fstype="nfs4", source="nas:/export a"),
        nfs.Mount(mount_point="/mnt/bind", root="/data", fstype="ext4", source="/dev/loop0"),
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        pytest.param(
            "40 1 0:60 / /m/p rw - nfs4 127.0.0.1:/pool/ rw,vers=4.1", None, id="kernel-nfs4"
        ),
        pytest.param("40 1 0:60 / /m/p rw - nfs 127.0.0.1:/pool rw,vers=3", None, id="kernel-nfs"),
        pytest.param(
            "40 1 0:60 / /m/p rw - nfs4 127.0.0.1:/other rw",
            "expected 127.0.0.1:/pool at /m/p, found 127.0.0.1:/other (nfs4) mounted there instead",
            id="other-export",
        ),
        pytest.param(
            "40 1 7:0 /pool /m/p rw - ext4 /dev/loop0 rw",
            "expected 127.0.0.1:/pool at /m/p, found /dev/loop0 (ext4) mounted there instead",
            id="not-nfs",
        ),
        pytest.param(
            "40 1 0:60 / /m/other rw - nfs4 127.0.0.1:/pool rw",
            "expected 127.0.0.1:/pool at /m/p, not mounted",
            id="elsewhere",
        ),
    ],
)
def test_without_a_record_only_an_nfs_mount_of_the_export_counts(
    line: str, problem: str | None
) -> None:
    # After a node restart nothing is recorded: a kernel NFS mount of the
    # export is adopted, anything else at the mount point is not ours.
    cfg = nfs.NfsBackend().parse(spec(mount_point="/m/p"))
    mounts = nfs.parse_mountinfo(line)
    assert nfs.mount_problem(cfg=cfg, record=None, mounts=mounts) == problem


# -- the bind-mount helper ---------------------------------------------------------


def test_helper_fails_like_mount_nfs_for_an_unknown_export(
    nfs_export: NfsServer, tmp_path: Path
) -> None:
    target = tmp_path / "m"
    target.mkdir()
    result = subprocess.run(
        [*nfs_export.mount_command, "-t", "nfs", "-o", "vers=4.1", "127.0.0.1:/nope", str(target)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    assert result.returncode == 32
    assert "mounting 127.0.0.1:/nope failed" in result.stderr
    assert "not in the export map" in result.stderr
    assert mounts_at(str(target)) == []


def test_helper_needs_its_map(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIND_HELPER), "-t", "nfs", "-o", "vers=4", "h:/e", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "QUANTIX_NFS_BIND_MAP"},
    )
    assert result.returncode == 1
    assert "QUANTIX_NFS_BIND_MAP is not set" in result.stderr


# -- against the real server ---------------------------------------------------------


async def test_attach_mounts_and_reports_the_servers_capacity(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.error_message == ""
    assert info.kind == "nfs" and info.pool_id == "p1"
    assert info.volume_count == 0
    # Mounted where the default says, from the export's backing directory.
    mount_point = nfs_backend.parse(spec()).mount_point
    assert info.mount_path == mount_point
    assert len(mounts_at(mount_point)) == 1
    assert os.stat(mount_point).st_ino == os.stat(nfs_export.export_dir).st_ino
    # Capacity is the server's FSSTAT: the same numbers nfs-ls gets (its own client)...
    free, total = nfs_export.server_fsstat()
    assert info.total_bytes == total
    assert info.used_bytes == total - free
    # ...and what the exported filesystem says, within libnfs's 4 KiB rounding.
    vfs = os.statvfs(nfs_export.export_dir)
    assert abs(info.available_bytes - vfs.f_bavail * vfs.f_frsize) < 4096
    assert abs(info.total_bytes - vfs.f_blocks * vfs.f_frsize) < 4096
    assert 40 * 1024**2 < info.total_bytes <= 64 * 1024**2


async def test_attach_runs_exactly_the_mount_command(nfs_export: NfsServer, tmp_path: Path) -> None:
    # A wrapper records the argv it got, then runs the bind helper with it.
    log = tmp_path / "argv"
    wrapper = tmp_path / "mount-wrapper"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {log}\nexec "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    backend = nfs.NfsBackend(
        mount_root=tmp_path / "mnt",
        mount_command=(str(wrapper), *nfs_export.mount_command),
        nfs_port=nfs_export.port,
    )
    pool = spec(options="hard,noatime")
    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert log.read_text().splitlines() == [
        *nfs_export.mount_command,
        "-t",
        "nfs",
        "-o",
        f"vers=4.1,port={nfs_export.port},hard,noatime",
        "127.0.0.1:/pool",
        str(tmp_path / "mnt" / "nfs-p1"),
    ]
    await backend.detach(pool, timeout=TIMEOUT)


async def test_attach_is_idempotent_and_never_stacks_mounts(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    first = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    (Path(first.mount_path) / "a.qcow2").write_bytes(b"q" * 1024)
    second = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    assert second.health is base.PoolHealth.HEALTHY, second.error_message
    assert second.mount_path == first.mount_path
    assert second.volume_count == 1
    assert len(mounts_at(first.mount_path)) == 1


async def test_probe_counts_volumes_live_and_lists_them(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    mount = Path(info.mount_path)
    (mount / "b.raw").write_bytes(b"r" * 2048)
    (mount / "a.qcow2").write_bytes(b"q" * 1024)
    (mount / "notes.txt").write_text("not a volume")
    (mount / "dir.img").mkdir()  # not a regular file
    # Written by another client, straight into the export: seen as well.
    (nfs_export.export_dir / "c.ISO").write_bytes(b"i" * 512)
    info = await nfs_backend.probe(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.volume_count == 3
    volumes = await nfs_backend.list_volumes(spec(), timeout=TIMEOUT)
    assert [(v.name, v.size_bytes, v.path) for v in volumes] == [
        ("a.qcow2", 1024, str(mount / "a.qcow2")),
        ("b.raw", 2048, str(mount / "b.raw")),
        ("c.ISO", 512, str(mount / "c.ISO")),
    ]
    (mount / "b.raw").unlink()
    assert (await nfs_backend.probe(spec(), timeout=TIMEOUT)).volume_count == 2


async def test_detach_unmounts_keeps_the_directory_and_data_and_is_idempotent(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    mount = Path(info.mount_path)
    (mount / "keep.qcow2").write_bytes(b"k" * 4096)
    await nfs_backend.detach(spec(), timeout=TIMEOUT)
    assert mounts_at(info.mount_path) == []
    assert os.listdir(mount) == []  # the directory stays, the export is no longer there
    assert (nfs_export.export_dir / "keep.qcow2").stat().st_size == 4096
    await nfs_backend.detach(spec(), timeout=TIMEOUT)

    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.volume_count == 1
    volumes = await nfs_backend.list_volumes(spec(), timeout=TIMEOUT)
    assert [(v.name, v.size_bytes) for v in volumes] == [("keep.qcow2", 4096)]


async def test_custom_mount_point_is_honoured(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer, tmp_path: Path
) -> None:
    custom = tmp_path / "custom" / "vmstore"
    pool = spec(mount_point=str(custom))
    info = await nfs_backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.mount_path == str(custom)
    assert len(mounts_at(str(custom))) == 1
    assert not (tmp_path / "mnt" / "nfs-p1").exists()
    await nfs_backend.detach(pool, timeout=TIMEOUT)
    assert mounts_at(str(custom)) == []


async def test_mount_point_under_a_symlinked_directory_is_recognised(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer, tmp_path: Path
) -> None:
    # mountinfo shows the resolved path (as for /var/run -> /run).
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    pool = spec(mount_point=str(tmp_path / "link" / "vmstore"))
    info = await nfs_backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert len(mounts_at(str(tmp_path / "real" / "vmstore"))) == 1
    await nfs_backend.attach(pool, timeout=TIMEOUT)  # recognised: not mounted twice
    assert len(mounts_at(str(tmp_path / "real" / "vmstore"))) == 1
    await nfs_backend.detach(pool, timeout=TIMEOUT)
    assert mounts_at(str(tmp_path / "real" / "vmstore")) == []


async def test_pools_on_the_same_export_are_independent(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    one, two = spec("p1"), spec("p2")
    await nfs_backend.attach(one, timeout=TIMEOUT)
    await nfs_backend.attach(two, timeout=TIMEOUT)
    await nfs_backend.detach(one, timeout=TIMEOUT)
    assert (await nfs_backend.probe(one, timeout=TIMEOUT)).health is base.PoolHealth.UNMOUNTED
    info = await nfs_backend.probe(two, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_read_only_mount_is_degraded(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    info = await nfs_backend.attach(spec(options="ro"), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message == "read-only"
    assert info.total_bytes > 0  # still measured by the server


async def test_attach_refuses_to_mount_over_another_filesystem(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer, tmp_path: Path
) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    run("mount", "-t", "tmpfs", "quantix-test", str(target))
    with pytest.raises(base.MountError) as caught:
        await nfs_backend.attach(spec(mount_point=str(target)), timeout=TIMEOUT)
    assert str(caught.value) == (
        f"mount point {target} already has quantix-test (tmpfs) mounted, not 127.0.0.1:/pool; "
        "unmount it or choose another nfs.mount_point"
    )
    assert [m.fstype for m in mounts_at(str(target))] == ["tmpfs"]
    # detach leaves a mount that is not ours alone.
    await nfs_backend.detach(spec(mount_point=str(target)), timeout=TIMEOUT)
    assert [m.fstype for m in mounts_at(str(target))] == ["tmpfs"]


async def test_an_export_the_server_does_not_have_is_an_error(
    nfs_export: NfsServer, tmp_path: Path
) -> None:
    # The helper can mount it (its map says so), but the server knows better.
    bind_map = tmp_path / "map"
    bind_map.write_text(f"127.0.0.1:/other {nfs_export.export_dir}\n")
    backend = nfs.NfsBackend(
        mount_root=tmp_path / "mnt",
        mount_command=("env", f"QUANTIX_NFS_BIND_MAP={bind_map}", str(BIND_HELPER)),
        nfs_port=nfs_export.port,
    )
    pool = spec(export_path="/other")
    try:
        info = await backend.attach(pool, timeout=TIMEOUT)
        assert info.health is base.PoolHealth.ERROR
        assert info.error_message.startswith("NFS server 127.0.0.1 has no export /other ("), (
            info.error_message
        )
        with pytest.raises(base.ProbeError, match="has no export /other"):
            await backend.list_volumes(pool, timeout=TIMEOUT)
    finally:
        await backend.detach(pool, timeout=TIMEOUT)


async def test_missing_libnfs_is_reported_with_the_package_name(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await nfs_backend.attach(spec(), timeout=TIMEOUT)
    monkeypatch.setattr(_libnfs, "LIBRARY_NAMES", ("libnfs-not-installed.so.99",))
    _libnfs.unload()
    try:
        info = await nfs_backend.probe(spec(), timeout=TIMEOUT)
    finally:
        monkeypatch.undo()
        _libnfs.unload()
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == "libnfs not installed (Debian package libnfs13)"
    assert (await nfs_backend.probe(spec(), timeout=TIMEOUT)).health is base.PoolHealth.HEALTHY


def test_fixture_leaves_nothing_mounted_under_a_test(tmp_path: Path) -> None:
    # Sanity of the helper the fixtures rely on for cleanup.
    assert mounts_under(tmp_path) == []
