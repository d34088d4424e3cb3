"""NFS pool health under real faults of a real nfs-ganesha (docs/lab.md, NFS).

Every fault is real: ``dd`` until ENOSPC on the export, the server killed
(SIGTERM) or frozen (SIGSTOP, so the kernel still completes TCP handshakes and
only the answers stop), the mount removed underneath the pool, another
filesystem mounted over it, a busy unmount, a mount command that hangs. Each
test also checks the pool recovers once the fault is undone (SIGCONT, a
restart, a remount), since a probe that cannot see recovery is as broken as
one that cannot see the fault. Probes use the node's default bound of 2 s and
must answer within it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from storage_backends import base, nfs
from tests.fixtures.nfs import (
    NfsServer,
    nfs_backend_fixture,  # noqa: F401
    nfs_export_fixture,  # noqa: F401
    nfs_server_fixture,  # noqa: F401
)

TIMEOUT = 10.0
#: The node's default probe bound (NodeSettings.probe_timeout).
PROBE_BOUND = 2.0
#: A short call bound, for probes and mounts that hang on purpose.
SHORT_BOUND = 0.5
#: The bound of a listing against a hung server.
LIST_BOUND = 1.0
#: Wall-clock slack on top of a bound. These tests time the wall clock on purpose: the
#: server is a real nfs-ganesha (frozen, killed, full) and the probe's worker a real
#: thread in a real syscall, so real time is the property under test and a virtual
#: clock would not see it. Generous, for a loaded two-core CI host.
SLACK = 1.0


def spec(**config: str) -> base.PoolSpec:
    return base.PoolSpec(
        pool_id="p1", kind="nfs", config={"server": "127.0.0.1", "export_path": "/pool", **config}
    )


async def timed_probe(
    backend: nfs.NfsBackend, *, timeout: float = PROBE_BOUND
) -> tuple[base.PoolInfo, float]:
    started = time.monotonic()
    info = await backend.probe(spec(), timeout=timeout)
    return info, time.monotonic() - started


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=TIMEOUT)


def workers_of(mount_point: str) -> list[threading.Thread]:
    """Live probe worker threads of one pool (ThreadRunner names them by key)."""
    return [t for t in threading.enumerate() if t.name == f"quantix-nfs:{mount_point}"]


def wait_for_workers(mount_point: str, *, timeout: float = 0.5) -> list[threading.Thread]:
    """The pool's workers still alive after ``timeout`` (a worker that has handed
    back its result needs a moment to exit; a stuck one does not exit at all)."""
    deadline = time.monotonic() + timeout
    for thread in workers_of(mount_point):
        thread.join(max(0.0, deadline - time.monotonic()))
    return workers_of(mount_point)


async def test_full_export_is_degraded_then_recovers(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    await nfs_backend.attach(spec(), timeout=TIMEOUT)
    nfs_export.fill()
    info, elapsed = await timed_probe(nfs_backend)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message == "nearly full: 0% free"
    assert info.available_bytes == 0  # the server's own FSSTAT
    assert info.used_bytes > 0.9 * info.total_bytes
    assert elapsed < PROBE_BOUND

    nfs_export.clear_export()
    info, _ = await timed_probe(nfs_backend)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_threshold_is_a_setting(nfs_export: NfsServer, tmp_path: Path) -> None:
    # The empty 64 MiB export has ~97% free: a 99% threshold calls that nearly full.
    backend = nfs.NfsBackend(
        mount_root=tmp_path / "mnt",
        mount_command=nfs_export.mount_command,
        nfs_port=nfs_export.port,
        full_threshold=0.99,
    )
    info = await backend.attach(spec(), timeout=TIMEOUT)
    await backend.detach(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.DEGRADED
    assert info.error_message.startswith("nearly full: 9")


async def test_dead_server_is_refused_then_recovers_after_restart(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    await nfs_backend.attach(spec(), timeout=TIMEOUT)
    nfs_export.terminate()
    info, elapsed = await timed_probe(nfs_backend)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == f"NFS server 127.0.0.1:{nfs_export.port} refused the connection"
    assert elapsed < PROBE_BOUND
    with pytest.raises(base.BackendUnavailable, match="refused the connection"):
        await nfs_backend.list_volumes(spec(), timeout=PROBE_BOUND)

    nfs_export.start()
    info, _ = await timed_probe(nfs_backend)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_hung_server_is_an_error_within_the_bound_then_recovers(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    nfs_export.hang()
    try:
        info, elapsed = await timed_probe(nfs_backend)
        assert info.health is base.PoolHealth.ERROR
        # libnfs gets the bound minus a margin, so the server is named in time.
        assert info.error_message == "NFS server 127.0.0.1 did not answer within 1.8s"
        assert 1.5 < elapsed < PROBE_BOUND + SLACK
        assert info.total_bytes == 0  # nothing measured, nothing guessed
        assert wait_for_workers(info.mount_path) == []  # the worker returned on its own
    finally:
        nfs_export.resume()
    info, _ = await timed_probe(nfs_backend)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_probe_stuck_past_its_bound_never_starts_a_second_worker(
    nfs_export: NfsServer, tmp_path: Path
) -> None:
    # With a libnfs floor above the probe bound, the worker outlives the probe:
    # the caller still gets an answer on time, and later probes wait for the
    # stuck worker instead of starting another one.
    backend = nfs.NfsBackend(
        mount_root=tmp_path / "mnt",
        mount_command=nfs_export.mount_command,
        nfs_port=nfs_export.port,
        probe_timeout_floor=5.0,
    )
    mount_point = (await backend.attach(spec(), timeout=TIMEOUT)).mount_path
    nfs_export.hang()
    try:
        first, elapsed = await timed_probe(backend, timeout=SHORT_BOUND)
        assert first.health is base.PoolHealth.ERROR
        assert first.error_message == f"probe timed out after {SHORT_BOUND:g}s"
        assert elapsed < SHORT_BOUND + SLACK
        assert len(workers_of(mount_point)) == 1

        # Two more probes at once: both answer in time, neither starts a worker.
        results = await asyncio.gather(
            timed_probe(backend, timeout=SHORT_BOUND), timed_probe(backend, timeout=SHORT_BOUND)
        )
        for info, elapsed in results:
            assert info.health is base.PoolHealth.ERROR
            assert info.error_message == (
                f"probe timed out after {SHORT_BOUND:g}s; previous probe still running"
            )
            assert elapsed < SHORT_BOUND + SLACK
        assert len(workers_of(mount_point)) == 1
    finally:
        nfs_export.resume()
    # The server answers the stuck worker's request; it finishes, and probing resumes.
    info, _ = await timed_probe(backend)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert wait_for_workers(mount_point) == []
    await backend.detach(spec(), timeout=TIMEOUT)


async def test_hung_server_blocks_listing_with_a_timeout(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    await nfs_backend.attach(spec(), timeout=TIMEOUT)
    nfs_export.hang()
    try:
        started = time.monotonic()
        with pytest.raises(base.BackendTimeout, match=r"NFS server 127\.0\.0\.1 did not answer"):
            await nfs_backend.list_volumes(spec(), timeout=LIST_BOUND)
        assert time.monotonic() - started < LIST_BOUND + SLACK
    finally:
        nfs_export.resume()


async def test_unmounted_underneath_is_unmounted_then_reattach_recovers(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    (Path(info.mount_path) / "vm.qcow2").write_bytes(b"q" * 1024)
    run("umount", info.mount_path)  # the fault: someone unmounts it underneath

    info, elapsed = await timed_probe(nfs_backend)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert info.error_message == f"expected 127.0.0.1:/pool at {info.mount_path}, not mounted"
    assert elapsed < PROBE_BOUND
    with pytest.raises(base.BackendUnavailable, match="not mounted"):
        await nfs_backend.list_volumes(spec(), timeout=TIMEOUT)

    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.volume_count == 1


async def test_another_filesystem_over_the_mount_is_unmounted(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    run("mount", "-t", "tmpfs", "quantix-cover", info.mount_path)
    try:
        info, _ = await timed_probe(nfs_backend)
        assert info.health is base.PoolHealth.UNMOUNTED
        assert info.error_message == (
            f"expected 127.0.0.1:/pool at {info.mount_path}, "
            "found quantix-cover (tmpfs) mounted there instead"
        )
    finally:
        run("umount", info.mount_path)
    info, _ = await timed_probe(nfs_backend)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_busy_unmount_fails_with_the_reason_and_can_be_retried(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)
    fd = os.open(os.path.join(info.mount_path, "open.img"), os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        with pytest.raises(base.MountError, match=r"failed \(exit 32\): .*target is busy"):
            await nfs_backend.detach(spec(), timeout=TIMEOUT)
    finally:
        os.close(fd)
    # Still attached and measured; a retried detach succeeds.
    assert (await nfs_backend.probe(spec(), timeout=PROBE_BOUND)).volume_count == 1
    await nfs_backend.detach(spec(), timeout=TIMEOUT)
    assert [m for m in nfs.read_mounts() if m.mount_point == info.mount_path] == []


async def test_unknown_export_fails_the_mount_with_the_helpers_message(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer
) -> None:
    pool = spec(export_path="/nope")
    with pytest.raises(base.MountError) as caught:
        await nfs_backend.attach(pool, timeout=TIMEOUT)
    mount_point = nfs_backend.parse(pool).mount_point
    message = str(caught.value)
    assert message.startswith(f"mounting 127.0.0.1:/nope at {mount_point} failed (exit 32): ")
    assert "mount.nfs: mounting 127.0.0.1:/nope failed, reason given by server" in message
    assert [m for m in nfs.read_mounts() if m.mount_point == mount_point] == []
    info = await nfs_backend.probe(pool, timeout=PROBE_BOUND)
    assert info.health is base.PoolHealth.UNMOUNTED


async def test_hanging_mount_command_is_killed_at_the_timeout(
    nfs_export: NfsServer, tmp_path: Path
) -> None:
    # A mount that never returns (mount.nfs against a black hole): killed in time.
    pid_file = tmp_path / "mount.pid"
    backend = nfs.NfsBackend(
        mount_root=tmp_path / "mnt",
        mount_command=("sh", "-c", f"echo $$ > {pid_file}; exec sleep 60", "mount"),
    )
    started = time.monotonic()
    with pytest.raises(base.BackendTimeout, match=r"^mounting 127\.0\.0\.1:/pool at .* timed out"):
        await backend.attach(spec(), timeout=SHORT_BOUND)
    assert time.monotonic() - started < SHORT_BOUND + SLACK
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


async def test_stale_file_handle_is_an_error_with_the_remedy(
    nfs_backend: nfs.NfsBackend, nfs_export: NfsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ESTALE needs a kernel NFS client (the export replaced under a mount):
    # injected at the one syscall that would see it.
    info = await nfs_backend.attach(spec(), timeout=TIMEOUT)

    def stale(path: str) -> os.statvfs_result:
        raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), path)

    monkeypatch.setattr(nfs.backend, "_statvfs", stale)
    info, _ = await timed_probe(nfs_backend)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == (
        f"reading {info.mount_path}: [Errno 116] Stale file handle "
        "(the export 127.0.0.1:/pool was replaced on the server: detach and attach the pool again)"
    )
    assert info.total_bytes > 0  # the server still answered
