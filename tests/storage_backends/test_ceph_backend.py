"""ceph_rbd: configuration, interpretation of the cluster's answers, and a real cluster.

The first half needs no cluster: config validation (every field named in its
error), the mapping of ``ceph health`` to PoolHealth and of ``ceph df`` to
capacity (including the cases upstream papered over with a guessed 1 TiB),
and the lazy import of the bindings.

The second half runs against the session's real one-mon/one-mgr/one-OSD
memstore cluster (``tests/fixtures/ceph.py``): attach and probe compared with
the ``ceph df`` CLI, volume counts and listings with images created through
librbd (in the default namespace and in per-test namespaces), detach,
idempotent re-attach over the same connection, and the attach errors an
operator meets (no such pool or namespace, wrong cluster, nobody listening).
Faults on the running cluster live in ``test_ceph_faults.py``.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage_backends import base, ceph_rbd, configs
from tests.fixtures.ceph import (  # noqa: F401  (fixtures used by name)
    NAMESPACE,
    POOL,
    CephCluster,
    RbdClient,
    fixture_ceph_cluster,
    fixture_rbd_client,
    fixture_rbd_namespace,
    pick_free_ports,
)

TIMEOUT = 10.0
PROBE_TIMEOUT = 2.0
#: Wall-clock bounds. The tests that use them time a real Ceph cluster, or librados' own
#: timer (threads and sockets outside the event loop), so real time is the property under
#: test; a virtual clock would not see it. Generous, for a loaded two-core CI host.
#: A probe on a healthy cluster over its cached connection: three quick round trips.
FAST_PROBE_BOUND = 1.0
#: What librados may take past its own client_timeout before the call returns.
WALL_SLACK = 1.0
MIB = 1024**2


def spec(config: dict[str, Any], *, pool_id: str = "p1") -> base.PoolSpec:
    return base.PoolSpec(pool_id=pool_id, kind="ceph_rbd", config=config)


# -- configuration ------------------------------------------------------------------

GOOD = {"pool_name": "rbd", "monitors": ["10.0.0.1:6789"]}
#: A cephx key as ceph-authtool makes them (base64 of a 12-byte header and 16 key bytes).
CEPH_KEY = "AQBcm2BnAAAAABAAq7mZt3fT0xG9bQ1vKp5sRw=="


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(GOOD, id="minimal"),
        pytest.param(
            {
                "cluster_id": "prod",
                "pool_name": "vms",
                "monitors": ["10.0.0.1", "mon-b.example:3300", "[fd00::1]:6789", "[fd00::2]"],
                "user": "libvirt",
                "keyring_path": "/etc/ceph/ceph.client.libvirt.keyring",
                "namespace": "tenant-a",
                "secret_uuid": "3d9d8b0e-5b2c-4f43-9d55-4ac1b0f5b6a1",
            },
            id="every-field",
        ),
        pytest.param({**GOOD, "user": "qvdc", "key": CEPH_KEY}, id="key"),
        pytest.param(
            # What the node's proto conversion hands over for unset fields.
            {
                "cluster_id": "",
                "pool_name": "rbd",
                "monitors": ["127.0.0.1:6789"],
                "user": "",
                "keyring_path": "",
                "namespace": "",
                "secret_uuid": "",
            },
            id="proto-defaults",
        ),
    ],
)
def test_validate_accepts(config: dict[str, Any]) -> None:
    ceph_rbd.CephRbdBackend().validate(spec(config))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"monitors": ["10.0.0.1"]}, r"^ceph\.pool_name is required$"),
        ({"pool_name": "  ", "monitors": ["10.0.0.1"]}, r"^ceph\.pool_name must not contain"),
        ({"pool_name": 7, "monitors": ["10.0.0.1"]}, r"^ceph\.pool_name must be a string"),
        ({"pool_name": "a/b", "monitors": ["10.0.0.1"]}, r"^ceph\.pool_name must not contain"),
        ({"pool_name": "rbd"}, r"^ceph\.monitors needs at least one monitor"),
        ({"pool_name": "rbd", "monitors": []}, r"^ceph\.monitors needs at least one monitor"),
        ({"pool_name": "rbd", "monitors": "10.0.0.1"}, r"^ceph\.monitors must be a list"),
        ({"pool_name": "rbd", "monitors": ["10.0.0.1:0"]}, r"^ceph\.monitors\[0\] must be"),
        ({"pool_name": "rbd", "monitors": ["a", "b:65536"]}, r"^ceph\.monitors\[1\] must be"),
        ({"pool_name": "rbd", "monitors": ["10.0.0.1:x"]}, r"^ceph\.monitors\[0\] .*port 1-65535"),
        ({"pool_name": "rbd", "monitors": ["10.0.0.1:"]}, r"^ceph\.monitors\[0\] must be"),
        ({"pool_name": "rbd", "monitors": ["fd00::1"]}, r"^ceph\.monitors\[0\] .*\[addr\]:port"),
        ({"pool_name": "rbd", "monitors": ["[nope]:1"]}, r"^ceph\.monitors\[0\] must be"),
        ({"pool_name": "rbd", "monitors": ["bad host"]}, r"^ceph\.monitors\[0\] must be"),
        ({"pool_name": "rbd", "monitors": [" 10.0.0.2"]}, r"^ceph\.monitors\[0\] must be"),
        ({"pool_name": "rbd", "monitors": [6789]}, r"^ceph\.monitors\[0\] must be"),
        ({**GOOD, "keyring_path": "ceph.keyring"}, r"^ceph\.keyring_path must be an absolute"),
        ({**GOOD, "secret_uuid": "not-a-uuid"}, r"^ceph\.secret_uuid must be a UUID"),
        ({**GOOD, "user": "client.admin"}, r"^ceph\.user is the client id without"),
        ({**GOOD, "user": "ad min"}, r"^ceph\.user must be a plain client id"),
        ({**GOOD, "namespace": "a@b"}, r"^ceph\.namespace must not contain"),
        ({**GOOD, "key": "secret!"}, r"^ceph\.key must be a cephx key.*of 7 characters is not\)$"),
        ({**GOOD, "key": "AAAA"}, r"^ceph\.key must be a cephx key"),
        ({**GOOD, "key": 7}, r"^ceph\.key must be a string, got a non-string value$"),
        (
            {**GOOD, "key": CEPH_KEY, "keyring_path": "/etc/ceph/k"},
            r"^ceph\.key give either key or keyring_path, not both",
        ),
    ],
)
def test_validate_rejects_naming_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(base.InvalidConfig, match=message):
        ceph_rbd.CephRbdBackend().validate(spec(config))


def test_monitors_may_come_from_the_conf_file() -> None:
    backend = ceph_rbd.CephRbdBackend(conf_path=Path("/etc/ceph/ceph.conf"))
    backend.validate(spec({"pool_name": "rbd"}))


def test_monitor_port_defaults_to_6789() -> None:
    config = ceph_rbd.parse_config(
        {"pool_name": "rbd", "monitors": ["10.0.0.1", "10.0.0.2:3300", "[fd00::1]"]},
        have_conf_file=False,
    )
    assert [str(m) for m in config.monitors] == ["10.0.0.1:6789", "10.0.0.2:3300", "[fd00::1]:6789"]
    assert config.user == "admin"
    assert config.client_name == "client.admin"


def test_location_names_pool_and_namespace() -> None:
    parse = ceph_rbd.parse_config
    assert parse(GOOD, have_conf_file=False).location == "rbd:rbd"
    assert parse({**GOOD, "namespace": "ns"}, have_conf_file=False).location == "rbd:rbd/ns"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conf_path": Path("ceph.conf")}, "conf_path must be absolute"),
        ({"probe_timeout": 0}, "probe_timeout must be in"),
        ({"probe_timeout": -1.0}, "probe_timeout must be in"),
    ],
)
def test_constructor_rejects_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(base.InvalidConfig, match=message):
        ceph_rbd.CephRbdBackend(**options)


@pytest.mark.parametrize(("probe_timeout", "expected"), [(2.0, 3), (0.3, 1), (2.5, 3), (10, 11)])
def test_librados_timeouts_outlast_the_probe_in_whole_seconds(
    probe_timeout: float, expected: int
) -> None:
    # librados rejects fractions and reads 0 as "no timeout at all"; a margin
    # of at least 0.5 s lets the probe's own bound fire first.
    assert ceph_rbd.CephRbdBackend(probe_timeout=probe_timeout).client_timeout == expected


def test_backend_satisfies_the_protocol() -> None:
    backend = ceph_rbd.CephRbdBackend()
    assert isinstance(backend, base.StorageBackend)
    assert backend.kind == "ceph_rbd"


# -- interpreting health and capacity -------------------------------------------------


def check(message: str, *, severity: str = "HEALTH_WARN", muted: bool = False) -> dict[str, Any]:
    return {"severity": severity, "summary": {"message": message, "count": 1}, "muted": muted}


@pytest.mark.parametrize(
    ("doc", "health", "message"),
    [
        pytest.param(
            {"status": "HEALTH_OK", "checks": {}, "mutes": []},
            base.PoolHealth.HEALTHY,
            "",
            id="ok",
        ),
        pytest.param(
            {"status": "HEALTH_WARN", "checks": {"OSDMAP_FLAGS": check("noout flag(s) set")}},
            base.PoolHealth.DEGRADED,
            "cluster health HEALTH_WARN: noout flag(s) set (OSDMAP_FLAGS)",
            id="warn",
        ),
        pytest.param(
            {
                "status": "HEALTH_WARN",
                "checks": {
                    "OSD_DOWN": check("1 osds down"),
                    "MGR_DOWN": check("no active mgr"),
                    "POOL_NO_REDUNDANCY": check("1 pool(s) have no replicas", muted=True),
                },
            },
            base.PoolHealth.DEGRADED,
            "cluster health HEALTH_WARN: 1 osds down (OSD_DOWN); no active mgr (MGR_DOWN)",
            id="warn-several-checks-muted-left-out",
        ),
        pytest.param(
            {"status": "HEALTH_ERR", "checks": {"OSD_FULL": check("1 full osd(s)")}},
            base.PoolHealth.ERROR,
            "cluster health HEALTH_ERR: 1 full osd(s) (OSD_FULL)",
            id="err",
        ),
        pytest.param(
            {"status": "HEALTH_WARN"},
            base.PoolHealth.DEGRADED,
            "cluster health HEALTH_WARN: no checks reported",
            id="warn-without-checks",
        ),
        pytest.param(
            {"status": "HEALTH_SOMETHING"},
            base.PoolHealth.DEGRADED,
            "cluster health unknown: status 'HEALTH_SOMETHING'",
            id="unknown-status",
        ),
        pytest.param(
            [], base.PoolHealth.DEGRADED, "cluster health unknown: status None", id="not-a-dict"
        ),
    ],
)
def test_classify_health(doc: Any, health: base.PoolHealth, message: str) -> None:
    assert ceph_rbd.classify_health(doc) == (health, message)


def df(**stats: Any) -> dict[str, Any]:
    return {"pools": [{"name": "other", "stats": {"stored": 5, "max_avail": 5}},
                      {"name": "rbd", "id": 2, "stats": stats}]}  # fmt: skip


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(
            df(stored=300, bytes_used=900, max_avail=700),
            ceph_rbd.Capacity(total=1000, used=300, available=700),
            id="logical-bytes-not-raw-replicas",
        ),
        pytest.param(
            df(bytes_used=300, max_avail=700),
            ceph_rbd.Capacity(total=1000, used=300, available=700),
            id="old-cluster-without-stored",
        ),
        pytest.param(
            df(stored=300, max_avail=700, quota_bytes=500),
            ceph_rbd.Capacity(total=500, used=300, available=200),
            id="quota-caps-available",
        ),
        pytest.param(
            df(stored=600, max_avail=700, quota_bytes=500),
            ceph_rbd.Capacity(total=600, used=600, available=0),
            id="over-quota",
        ),
        pytest.param(
            df(stored=300, max_avail=700, quota_bytes=0),
            ceph_rbd.Capacity(total=1000, used=300, available=700),
            id="quota-zero-means-none",
        ),
        pytest.param(
            df(stored=300, max_avail=0),
            ceph_rbd.Capacity(total=300, used=300, available=0),
            id="no-room-left",
        ),
        pytest.param(
            {"pools": [{"name": "other", "stats": {"stored": 1, "max_avail": 2}}]},
            "pool 'rbd' is not listed in ceph df",
            id="pool-missing",
        ),
        pytest.param({}, "pool 'rbd' is not listed in ceph df", id="no-pools"),
        pytest.param(
            {"pools": [{"name": "rbd"}]}, "ceph df has no stats for pool 'rbd'", id="no-stats"
        ),
        pytest.param(
            df(stored=300), "ceph df has no usage figures for pool 'rbd'", id="no-max-avail"
        ),
        pytest.param(
            df(stored=True, max_avail=5),
            "ceph df has no usage figures for pool 'rbd'",
            id="not-a-number",
        ),
        pytest.param(
            df(stored=-1, max_avail=5),
            "ceph df has no usage figures for pool 'rbd'",
            id="negative",
        ),
    ],
)
def test_pool_capacity(doc: Any, expected: ceph_rbd.Capacity | str) -> None:
    assert ceph_rbd.pool_capacity(doc, pool="rbd") == expected


# -- without a cluster ------------------------------------------------------------------


async def test_missing_bindings_make_the_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rados", None)  # "import rados" now fails
    backend = ceph_rbd.CephRbdBackend()
    backend.validate(spec(GOOD))  # validation needs no bindings
    with pytest.raises(base.BackendUnavailable) as caught:
        await backend.attach(spec(GOOD), timeout=TIMEOUT)
    assert str(caught.value) == (
        "python3-rados not importable (install Debian python3-rados and run "
        "scripts/link-debian-ceph.sh)"
    )


async def test_probe_of_a_pool_never_attached_is_unmounted() -> None:
    info = await ceph_rbd.CephRbdBackend().probe(spec(GOOD), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert info.error_message == "rbd:rbd is not attached on this host"
    assert info.mount_path == "rbd:rbd"


async def test_list_volumes_of_a_pool_never_attached_raises() -> None:
    with pytest.raises(base.BackendUnavailable, match="not attached"):
        await ceph_rbd.CephRbdBackend().list_volumes(spec(GOOD), timeout=TIMEOUT)


# -- bounded work, with a worker we control ---------------------------------------------------


class Stuck:
    """A stand-in for the probe's worker body that blocks until released."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, abandoned: threading.Event, *, state: Any, **_: Any) -> base.PoolInfo:
        self.calls += 1
        state.step = self.step
        self.release.wait(timeout=10)  # bounded: a broken test leaves no thread for ever
        raise base.ProbeError("released")


@pytest.fixture
def stuck(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ceph_rbd.CephRbdBackend, Stuck]]:
    backend = ceph_rbd.CephRbdBackend()
    body = Stuck("asking the monitors for cluster health")
    monkeypatch.setattr(backend, "_client", lambda: types.SimpleNamespace(measure=body))
    backend._pools["p1"] = ceph_rbd.session.PoolState(attached=True)
    try:
        yield backend, body
    finally:
        body.release.set()


@pytest.mark.looptime  # the call's own bound, on virtual time: exact, however loaded the host
async def test_a_stuck_probe_times_out_naming_the_step_and_is_not_repeated(
    stuck: tuple[ceph_rbd.CephRbdBackend, Stuck],
) -> None:
    backend, body = stuck
    loop = asyncio.get_running_loop()
    # A monitor that accepts connections (a listening socket nobody serves).
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = spec({"pool_name": "rbd", "monitors": [f"127.0.0.1:{port}"]})
    try:
        started = loop.time()
        info = await backend.probe(pool, timeout=0.4)
        # Virtual time, but librados runs in a worker thread in real time: a little slack.
        assert loop.time() - started == pytest.approx(0.4, abs=0.25)
        assert info.health is base.PoolHealth.ERROR
        assert info.error_message == (
            "probe timed out after 0.4s while asking the monitors for cluster health"
        )
        info = await backend.probe(pool, timeout=0.2)
        assert info.error_message == (
            "probe timed out after 0.2s: the previous call on rbd:rbd is still "
            "asking the monitors for cluster health"
        )
        assert body.calls == 1  # never a second worker while the first is stuck
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stuck_probe_with_monitors_refusing_is_unreachable(
    stuck: tuple[ceph_rbd.CephRbdBackend, Stuck],
) -> None:
    backend, _ = stuck
    (port,) = pick_free_ports(1)
    pool = spec({"pool_name": "rbd", "monitors": [f"127.0.0.1:{port}", "127.0.0.1:1"]})
    info = await backend.probe(pool, timeout=0.4)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == (
        f"Ceph cluster unreachable: monitors 127.0.0.1:{port}, 127.0.0.1:1 did not answer "
        "within 0.4s (connection refused)"
    )


async def test_cancelling_a_probe_propagates_and_abandons_the_worker(
    stuck: tuple[ceph_rbd.CephRbdBackend, Stuck],
) -> None:
    backend, body = stuck
    probe = asyncio.create_task(backend.probe(spec(GOOD), timeout=5))
    await asyncio.sleep(0.1)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert backend.busy("p1")  # still stuck in its call: abandoned, not killed
    body.release.set()
    for _ in range(100):
        if not backend.busy("p1"):
            break
        await asyncio.sleep(0.02)
    assert not backend.busy("p1")


async def test_an_unexpected_error_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ceph_rbd.CephRbdBackend()

    def broken(abandoned: threading.Event, *, state: Any, **_: Any) -> base.PoolInfo:
        state.step = "listing RBD images in rbd:rbd (waiting for OSDs)"
        raise KeyError("surprise")

    monkeypatch.setattr(backend, "_client", lambda: types.SimpleNamespace(measure=broken))
    backend._pools["p1"] = ceph_rbd.session.PoolState(attached=True)
    info = await backend.probe(spec(GOOD), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == (
        "unexpected error while listing RBD images in rbd:rbd (waiting for OSDs): "
        "KeyError('surprise')"
    )


# -- against the real cluster --------------------------------------------------------------


def pool_config(cluster: CephCluster, **extra: Any) -> dict[str, Any]:
    return {"pool_name": POOL, "monitors": cluster.monitors, **extra}


@pytest.fixture
async def backend() -> AsyncIterator[ceph_rbd.CephRbdBackend]:
    backend = ceph_rbd.CephRbdBackend(probe_timeout=PROBE_TIMEOUT)
    try:
        yield backend
    finally:
        for pool_id in list(backend._pools):
            await backend.detach(spec({}, pool_id=pool_id), timeout=TIMEOUT)


async def test_attach_measures_the_pool_as_ceph_df_does(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster
) -> None:
    before = time.time()
    info = await backend.attach(spec(pool_config(ceph_cluster)), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.error_message == ""
    assert info.mount_path == "rbd:rbd"
    assert info.kind == "ceph_rbd"
    assert info.probed_at >= before
    # The pool's own figures from the CLI (its numbers move only with the mgr's
    # periodic report, so compare with the CLI reading taken right after).
    for _ in range(3):
        stats = ceph_cluster.pool_df()
        info = await backend.probe(spec(pool_config(ceph_cluster)), timeout=PROBE_TIMEOUT)
        if ceph_cluster.pool_df() == stats:
            break
    assert info.used_bytes == stats["stored"]
    assert info.available_bytes == stats["max_avail"]
    assert info.total_bytes == stats["stored"] + stats["max_avail"]
    # The memstore OSD holds 1 GiB: a measured figure, not upstream's 1 TiB guess.
    assert 0.5 * 1024**3 < info.total_bytes <= 1024**3


async def test_probe_is_fast_on_a_healthy_cluster(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster
) -> None:
    await backend.attach(spec(pool_config(ceph_cluster)), timeout=TIMEOUT)
    started = time.monotonic()
    info = await backend.probe(spec(pool_config(ceph_cluster)), timeout=PROBE_TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert time.monotonic() - started < FAST_PROBE_BOUND


async def test_volume_count_follows_images_in_the_default_namespace(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster, rbd_client: RbdClient
) -> None:
    config = pool_config(ceph_cluster)
    baseline = (await backend.attach(spec(config), timeout=TIMEOUT)).volume_count
    assert baseline == len(rbd_client.list_images())
    names = ["count-a", "count-b"]
    try:
        for name in names:
            rbd_client.create_image(name, size=4 * MIB)
        info = await backend.probe(spec(config), timeout=PROBE_TIMEOUT)
        assert info.health is base.PoolHealth.HEALTHY, info.error_message
        assert info.volume_count == baseline + 2
    finally:
        for name in names:
            rbd_client.remove_image(name)
    info = await backend.probe(spec(config), timeout=PROBE_TIMEOUT)
    assert info.volume_count == baseline


async def test_volume_count_honours_the_namespace(
    backend: ceph_rbd.CephRbdBackend,
    ceph_cluster: CephCluster,
    rbd_client: RbdClient,
    rbd_namespace: str,
) -> None:
    in_ns = spec(pool_config(ceph_cluster, namespace=rbd_namespace), pool_id="ns")
    default = spec(pool_config(ceph_cluster), pool_id="default")
    info = await backend.attach(in_ns, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.mount_path == f"rbd:rbd/{rbd_namespace}"
    assert info.volume_count == 0
    default_count = (await backend.attach(default, timeout=TIMEOUT)).volume_count

    for name in ("vm-1", "vm-2", "vm-3"):
        rbd_client.create_image(name, size=MIB, namespace=rbd_namespace)
    assert (await backend.probe(in_ns, timeout=PROBE_TIMEOUT)).volume_count == 3
    # Images in the namespace are not in the default namespace's count.
    assert (await backend.probe(default, timeout=PROBE_TIMEOUT)).volume_count == default_count


async def test_list_volumes_returns_images_with_sizes(
    backend: ceph_rbd.CephRbdBackend,
    ceph_cluster: CephCluster,
    rbd_client: RbdClient,
    rbd_namespace: str,
) -> None:
    pool = spec(pool_config(ceph_cluster, namespace=rbd_namespace))
    await backend.attach(pool, timeout=TIMEOUT)
    assert await backend.list_volumes(pool, timeout=TIMEOUT) == []
    rbd_client.create_image("b-disk", size=8 * MIB, namespace=rbd_namespace)
    rbd_client.create_image("a-disk", size=4 * MIB, namespace=rbd_namespace)
    volumes = await backend.list_volumes(pool, timeout=TIMEOUT)
    assert volumes == [
        base.VolumeInfo(name="a-disk", size_bytes=4 * MIB, path=f"rbd:rbd/{rbd_namespace}/a-disk"),
        base.VolumeInfo(name="b-disk", size_bytes=8 * MIB, path=f"rbd:rbd/{rbd_namespace}/b-disk"),
    ]


async def test_detach_closes_the_connection_is_idempotent_and_keeps_images(
    backend: ceph_rbd.CephRbdBackend,
    ceph_cluster: CephCluster,
    rbd_client: RbdClient,
    rbd_namespace: str,
) -> None:
    pool = spec(pool_config(ceph_cluster, namespace=rbd_namespace))
    await backend.attach(pool, timeout=TIMEOUT)
    rbd_client.create_image("keep", size=MIB, namespace=rbd_namespace)
    state = backend._pools["p1"]
    assert state.cluster is not None

    await backend.detach(pool, timeout=TIMEOUT)
    assert state.cluster is None  # shut down, not just forgotten
    await backend.detach(pool, timeout=TIMEOUT)
    info = await backend.probe(pool, timeout=PROBE_TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert rbd_client.list_images(namespace=rbd_namespace) == ["keep"]

    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.volume_count == 1


async def test_the_pools_key_is_handed_to_librados_in_memory(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster
) -> None:
    """A pool's write-only key is librados' ``key`` option of that pool's handle (no file
    written); the test cluster runs without cephx, so this checks the hand-over, and that
    a handle with a key still connects."""
    keyed = spec(pool_config(ceph_cluster, key=CEPH_KEY), pool_id="keyed")
    plain = spec(pool_config(ceph_cluster), pool_id="plain")
    info = await backend.attach(keyed, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    await backend.attach(plain, timeout=TIMEOUT)
    keyed_handle = backend._pools["keyed"].cluster
    plain_handle = backend._pools["plain"].cluster
    assert keyed_handle is not None and plain_handle is not None
    assert keyed_handle.conf_get("key") == CEPH_KEY
    assert plain_handle.conf_get("key") == ""
    assert CEPH_KEY not in repr(configs.parse_ceph_rbd(keyed.config))


async def test_reattach_reuses_the_connection(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster
) -> None:
    pool = spec(pool_config(ceph_cluster))
    first = await backend.attach(pool, timeout=TIMEOUT)
    handle = backend._pools["p1"].cluster
    second = await backend.attach(pool, timeout=TIMEOUT)
    await backend.probe(pool, timeout=PROBE_TIMEOUT)
    assert backend._pools["p1"].cluster is handle
    assert second.health is first.health is base.PoolHealth.HEALTHY
    assert second.mount_path == first.mount_path


async def test_reattach_with_another_namespace_reconnects(
    backend: ceph_rbd.CephRbdBackend,
    ceph_cluster: CephCluster,
    rbd_client: RbdClient,
    rbd_namespace: str,
) -> None:
    rbd_client.create_image("only-here", size=MIB, namespace=rbd_namespace)
    await backend.attach(spec(pool_config(ceph_cluster, namespace=NAMESPACE)), timeout=TIMEOUT)
    handle = backend._pools["p1"].cluster
    moved = spec(pool_config(ceph_cluster, namespace=rbd_namespace))
    info = await backend.attach(moved, timeout=TIMEOUT)
    assert backend._pools["p1"].cluster is not handle
    assert info.mount_path == f"rbd:rbd/{rbd_namespace}"
    assert info.volume_count == 1


async def test_pools_are_independent_connections(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster
) -> None:
    one = spec(pool_config(ceph_cluster), pool_id="one")
    two = spec(pool_config(ceph_cluster, namespace=NAMESPACE), pool_id="two")
    await backend.attach(one, timeout=TIMEOUT)
    await backend.attach(two, timeout=TIMEOUT)
    assert backend._pools["one"].cluster is not backend._pools["two"].cluster
    await backend.detach(one, timeout=TIMEOUT)
    info = await backend.probe(two, timeout=PROBE_TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_attach_reads_monitors_from_the_conf_file(ceph_cluster: CephCluster) -> None:
    backend = ceph_rbd.CephRbdBackend(conf_path=ceph_cluster.conf_path)
    pool = spec({"pool_name": POOL})
    try:
        info = await backend.attach(pool, timeout=TIMEOUT)
        assert info.health is base.PoolHealth.HEALTHY, info.error_message
    finally:
        await backend.detach(pool, timeout=TIMEOUT)


async def test_attach_of_a_missing_pool_is_a_mount_error(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster
) -> None:
    pool = spec(pool_config(ceph_cluster, pool_name="no-such-pool"))
    with pytest.raises(base.MountError) as caught:
        await backend.attach(pool, timeout=TIMEOUT)
    assert str(caught.value) == (
        f"RBD pool 'no-such-pool' does not exist in cluster {ceph_cluster.fsid}"
    )
    # A failed attach leaves no connection behind, and the pool is not attached.
    assert backend._pools["p1"].cluster is None
    info = await backend.probe(pool, timeout=PROBE_TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED


async def test_attach_of_a_missing_namespace_is_a_mount_error(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster
) -> None:
    with pytest.raises(base.MountError) as caught:
        await backend.attach(spec(pool_config(ceph_cluster, namespace="ghost")), timeout=TIMEOUT)
    assert str(caught.value) == (
        f"RBD namespace 'ghost' does not exist in pool 'rbd' of cluster {ceph_cluster.fsid}"
    )


async def test_namespace_removed_after_attach_is_an_error(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster, rbd_client: RbdClient
) -> None:
    # An RBD namespace that is gone lists as empty; only an explicit check tells.
    rbd_client.create_namespace("doomed")
    pool = spec(pool_config(ceph_cluster, namespace="doomed"))
    try:
        await backend.attach(pool, timeout=TIMEOUT)
    finally:
        rbd_client.remove_namespace("doomed")
    info = await backend.probe(pool, timeout=PROBE_TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message.startswith("RBD namespace 'doomed' does not exist in pool 'rbd'")


async def test_cluster_id_must_match_the_fsid_when_it_is_a_uuid(
    backend: ceph_rbd.CephRbdBackend, ceph_cluster: CephCluster
) -> None:
    wrong = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(base.MountError, match=f"not to ceph.cluster_id {wrong}$"):
        await backend.attach(spec(pool_config(ceph_cluster, cluster_id=wrong)), timeout=TIMEOUT)
    right = spec(pool_config(ceph_cluster, cluster_id=ceph_cluster.fsid), pool_id="p2")
    assert (await backend.attach(right, timeout=TIMEOUT)).health is base.PoolHealth.HEALTHY


async def test_attach_with_nobody_listening_is_unreachable_within_the_client_timeout(
    backend: ceph_rbd.CephRbdBackend,
) -> None:
    (port,) = pick_free_ports(1)
    started = time.monotonic()
    with pytest.raises(ceph_rbd.ClusterUnreachable) as caught:
        await backend.attach(
            spec({"pool_name": POOL, "monitors": [f"127.0.0.1:{port}"]}), timeout=30
        )
    elapsed = time.monotonic() - started
    assert str(caught.value) == (
        f"Ceph cluster unreachable: monitors 127.0.0.1:{port} did not answer within "
        f"{backend.client_timeout}s (connection refused)"
    )
    # librados' own timeout ended the wait, not the call's 30 s.
    assert elapsed < backend.client_timeout + WALL_SLACK
    assert backend._pools["p1"].cluster is None
