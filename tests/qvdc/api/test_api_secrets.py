"""Write-only pool secrets through a real controller (grpclib on loopback, real etcd).

A CHAP password is set, then every way out is searched for it: each RPC response (bytes and
JSON), the whole log at DEBUG, qvdcctl's outputs, and ``etcdctl get --prefix /``. Only the
heartbeat responses of the node the pool is assigned to may carry it. Keep / set / clear on
update, the refusal without a key, and a key rotation across controller restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import betterproto2
import click
import grpclib.client
import grpclib.const
import pytest
from click.testing import CliRunner
from grpclib.const import Status

from protos.google import protobuf
from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc import cli
from qvdc.app import Controller
from qvdc.security import sealing
from qvdc.settings import EtcdSettings, SecretsSettings
from qvdc.store import keys
from qvdc.store.etcd import EtcdStore
from tests.fixtures.etcd import EtcdServer
from tests.qvdc.api.helpers import (
    TIMEOUT,
    controller_settings,
    expect_error,
    register_request,
)

SECRET = "Xq7-chap-Secret-2b9f"
NEW_SECRET = "Zr4-second-Secret-71c"
Type = storage.StorageBackendBackendType


def iscsi(password: str = SECRET, *, enabled: bool = True) -> storage.StorageBackend:
    return storage.StorageBackend(
        type=Type.ISCSI,
        iscsi=storage.IscsiConfig(
            portal="10.0.0.5:3260",
            target="iqn.2024-01.com.example:san",
            lun=1,
            chap_enabled=enabled,
            chap_user="qvdc" if enabled else "",
            chap_password=password,
        ),
    )


def text_of(message: betterproto2.Message) -> str:
    """Everything a client could read from ``message``: its wire bytes and its JSON."""
    return bytes(message).decode("latin-1") + message.to_json()


class Replica:
    """One controller replica with the given keys, and clients for it."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.channel = grpclib.client.Channel("127.0.0.1", controller.port)
        self.pools = storage.StoragePoolServiceStub(self.channel)
        self.nodes = compute.NodeServiceStub(self.channel)

    async def close(self) -> None:
        self.channel.close()
        await self.controller.stop()

    def stream(
        self,
    ) -> grpclib.client.Stream[compute.UpdateHeartbeatRequest, compute.UpdateHeartbeatResponse]:
        return self.channel.request(
            "/limiquantix.compute.v1.NodeService/StreamHeartbeat",
            grpclib.const.Cardinality.STREAM_STREAM,
            compute.UpdateHeartbeatRequest,
            compute.UpdateHeartbeatResponse,
            timeout=30,
        )

    async def node_sees(self, node_id: str) -> compute.UpdateHeartbeatResponse:
        return await self.nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node_id), timeout=TIMEOUT
        )


Start = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def start(etcd_settings: EtcdSettings, store: EtcdStore) -> AsyncIterator[Start]:
    """Starts replicas on the test's etcd prefix (``store`` empties it afterwards)."""
    started: list[Replica] = []

    async def go(key_file: Path | None = None, old: tuple[Path, ...] = ()) -> Replica:
        settings = controller_settings(etcd_settings).replace(
            secrets=SecretsSettings(key_file=key_file, old_key_files=tuple(map(str, old)))
        )
        controller = Controller(
            store=await EtcdStore.connect(settings=etcd_settings), settings=settings
        )
        await controller.start()
        replica = Replica(controller)
        started.append(replica)
        return replica

    try:
        yield go
    finally:
        for replica in started:
            await replica.close()
            await replica.controller.store.close()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.key"
    sealing.write_new_key(path)
    return path


def etcdctl_dump(server: EtcdServer, prefix: str = "/") -> str:
    """What an operator with etcd access sees: ``etcdctl get --prefix /``."""
    done = subprocess.run(
        ["etcdctl", f"--endpoints={server.endpoint}", "get", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout


async def qvdcctl(replica: Replica, *argv: str) -> str:
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli.cli,
        ["--insecure", "--controller", f"127.0.0.1:{replica.controller.port}", *argv],
    )
    assert result.exit_code == 0, result.output
    return result.output


def assigned(response: compute.UpdateHeartbeatResponse, pool_id: str) -> storage.IscsiConfig:
    (pool,) = [p for p in response.assigned_pools if p.id == pool_id]
    assert pool.spec is not None and pool.spec.backend is not None
    assert pool.spec.backend.iscsi is not None
    return pool.spec.backend.iscsi


async def test_a_set_secret_leaves_only_through_the_assigned_nodes_heartbeats(
    start: Start,
    key_file: Path,
    etcd_server: EtcdServer,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await start(key_file)
    node_a = await r.nodes.register_node(register_request("host-a"), timeout=TIMEOUT)
    node_b = await r.nodes.register_node(register_request("host-b"), timeout=TIMEOUT)
    await r.node_sees(node_a.id)  # a first heartbeat before the pool exists
    outputs: dict[str, betterproto2.Message] = {}

    created = await r.pools.create_pool(
        storage.CreatePoolRequest(
            name="san", spec=storage.StoragePoolSpec(backend=iscsi(), assigned_node_ids=[node_a.id])
        ),
        timeout=TIMEOUT,
    )
    outputs["CreatePool"] = created
    assert created.spec.backend.iscsi.chap_password == ""
    assert created.spec.backend.iscsi.chap_password_set is True
    assert created.spec.backend.iscsi.chap_user == "qvdc"  # the rest is returned in full
    outputs["GetPool"] = await r.pools.get_pool(
        storage.GetPoolRequest(id=created.id), timeout=TIMEOUT
    )
    outputs["ListPools"] = await r.pools.list_pools(storage.ListPoolsRequest(), timeout=TIMEOUT)
    outputs["UpdatePool"] = await r.pools.update_pool(
        storage.UpdatePoolRequest(
            id=created.id,
            description="SAN LUN 1",
            update_mask=protobuf.FieldMask(paths=["description"]),
        ),
        timeout=TIMEOUT,
    )
    outputs["AssignPoolToNode"] = await r.pools.assign_pool_to_node(
        storage.AssignPoolToNodeRequest(pool_id=created.id, node_id=node_a.id), timeout=TIMEOUT
    )
    outputs["GetNode"] = await r.nodes.get_node(
        compute.GetNodeRequest(id=node_a.id), timeout=TIMEOUT
    )
    outputs["ListNodes"] = await r.nodes.list_nodes(compute.ListNodesRequest(), timeout=TIMEOUT)
    outputs["GetPoolMetrics"] = await r.pools.get_pool_metrics(
        storage.GetPoolMetricsRequest(id=created.id), timeout=TIMEOUT
    )

    # Node B is not assigned: its heartbeat responses, unary and streamed, lack the pool.
    outputs["UpdateHeartbeat(B)"] = seen_b = await r.node_sees(node_b.id)
    assert seen_b.assigned_pools == [] and seen_b.assigned_pool_ids == []
    async with r.stream() as stream:
        await stream.send_message(compute.UpdateHeartbeatRequest(node_id=node_b.id, sequence=1))
        streamed_b = await stream.recv_message()
        await stream.cancel()
    assert streamed_b is not None and streamed_b.assigned_pools == []
    outputs["StreamHeartbeat(B)"] = streamed_b

    for name, message in outputs.items():
        assert SECRET not in text_of(message), name

    # Node A is: it receives the password in plain text, unary and streamed.
    assert assigned(await r.node_sees(node_a.id), created.id).chap_password == SECRET
    async with r.stream() as stream:
        await stream.send_message(compute.UpdateHeartbeatRequest(node_id=node_a.id, sequence=1))
        streamed_a = await stream.recv_message()
        await stream.cancel()
    assert streamed_a is not None and assigned(streamed_a, created.id).chap_password == SECRET

    # qvdcctl: table, wide, JSON and YAML; the JSON shows the marker.
    shown = {
        fmt: await qvdcctl(r, "pools", "get", "san", "-o", fmt) for fmt in ("json", "yaml", "wide")
    }
    shown["list"] = await qvdcctl(r, "pools", "list", "-o", "json")
    shown["status"] = await qvdcctl(r, "status")
    for fmt, text in shown.items():
        assert SECRET not in text, fmt
    assert '"chapPasswordSet": true' in shown["json"]

    dump = etcdctl_dump(etcd_server)
    assert SECRET not in dump
    assert "qvdc-sealed:v1:" in dump and created.id in dump
    assert SECRET not in caplog.text

    # qvdcctl takes the password from a file, so it is in no process list or shell history.
    password_file = tmp_path / "chap.secret"
    password_file.write_text(f"{NEW_SECRET}\n")
    iscsi_flags = ("--iscsi", "10.0.0.5:3260/iqn.2024-01.com.example:san2", "--chap-user", "qvdc")
    said = await qvdcctl(
        r, "pools", "create", "san2", *iscsi_flags,
        "--chap-password-file", str(password_file), "--assign", "host-a",
    )  # fmt: skip
    assert NEW_SECRET not in said
    (second,) = [p for p in (await r.node_sees(node_a.id)).assigned_pools if p.name == "san2"]
    assert assigned(await r.node_sees(node_a.id), second.id).chap_password == NEW_SECRET
    assert NEW_SECRET not in etcdctl_dump(etcd_server)
    # Both ways at once, or a file that is not one secret line, are refused before any call.
    password_file.write_text(f"{NEW_SECRET}\nsecond line\n")
    for extra, words in (
        (("--chap-password", "x", "--chap-password-file", str(tmp_path / "none")), "not both"),
        (("--chap-password-file", str(tmp_path / "none")), "cannot read"),
        (("--chap-password-file", str(password_file)), "alone, on one line"),
    ):
        refused = await asyncio.to_thread(
            CliRunner().invoke,
            cli.cli,
            ["--insecure", "--controller", f"127.0.0.1:{r.controller.port}", "pools", "create",
             "san3", *iscsi_flags, *extra],
        )  # fmt: skip
        assert refused.exit_code == 2 and words in refused.output, refused.output
        assert NEW_SECRET not in refused.output
    assert "san3" not in await qvdcctl(r, "pools", "list")


async def test_update_keeps_sets_and_clears_the_secret(
    start: Start, key_file: Path, etcd_server: EtcdServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await start(key_file)
    node = await r.nodes.register_node(register_request("host-a"), timeout=TIMEOUT)
    created = await r.pools.create_pool(
        storage.CreatePoolRequest(
            name="san", spec=storage.StoragePoolSpec(backend=iscsi(), assigned_node_ids=[node.id])
        ),
        timeout=TIMEOUT,
    )
    store = r.controller.store
    sealed = await store.get(keys.pool(created.id))
    assert sealed is not None

    # Keep: qvdcctl's way - read the redacted pool, change a field, send the backend back.
    backend = created.spec.backend
    backend.iscsi.lun = 2
    updated = await r.pools.update_pool(
        storage.UpdatePoolRequest(
            id=created.id,
            spec=storage.StoragePoolSpec(backend=backend),
            update_mask=protobuf.FieldMask(paths=["spec.backend"]),
        ),
        timeout=TIMEOUT,
    )
    assert updated.spec.backend.iscsi.lun == 2 and updated.spec.backend.iscsi.chap_password_set
    assert assigned(await r.node_sees(node.id), created.id).chap_password == SECRET
    # The kept value is the stored one, not sealed again (same nonce, same text).
    kept = await store.get(keys.pool(created.id))
    assert kept is not None
    assert _envelope(kept.value) == _envelope(sealed.value)

    # Set: a new value replaces the stored one; the old one is nowhere in etcd.
    await r.pools.update_pool(
        storage.UpdatePoolRequest(
            id=created.id,
            spec=storage.StoragePoolSpec(backend=iscsi(NEW_SECRET)),
            update_mask=protobuf.FieldMask(paths=["spec.backend.iscsi.chap_password"]),
        ),
        timeout=TIMEOUT,
    )
    assert assigned(await r.node_sees(node.id), created.id).chap_password == NEW_SECRET
    dump = etcdctl_dump(etcd_server)
    assert SECRET not in dump and NEW_SECRET not in dump

    # Clear: the secret's own path in the mask, empty. With CHAP still on that is invalid.
    clear = protobuf.FieldMask(paths=["spec.backend.iscsi.chap_password"])
    await expect_error(
        r.pools.update_pool(
            storage.UpdatePoolRequest(id=created.id, update_mask=clear), timeout=TIMEOUT
        ),
        Status.INVALID_ARGUMENT,
        "spec.backend.iscsi.chap_password",
        "required when chap_enabled",
    )
    assert assigned(await r.node_sees(node.id), created.id).chap_password == NEW_SECRET
    cleared = await r.pools.update_pool(
        storage.UpdatePoolRequest(
            id=created.id,
            spec=storage.StoragePoolSpec(backend=iscsi("", enabled=False)),
            update_mask=protobuf.FieldMask(
                paths=["spec.backend", "spec.backend.iscsi.chap_password"]
            ),
        ),
        timeout=TIMEOUT,
    )
    assert cleared.spec.backend.iscsi.chap_password_set is False
    assert assigned(await r.node_sees(node.id), created.id).chap_password == ""
    assert "qvdc-sealed" not in etcdctl_dump(etcd_server, r.controller.settings.etcd.prefix)
    assert SECRET not in caplog.text and NEW_SECRET not in caplog.text


async def test_without_a_key_a_secret_is_refused_and_nothing_stored(
    start: Start, store: EtcdStore
) -> None:
    r = await start(None)
    error = await expect_error(
        r.pools.create_pool(
            storage.CreatePoolRequest(name="san", spec=storage.StoragePoolSpec(backend=iscsi())),
            timeout=TIMEOUT,
        ),
        Status.FAILED_PRECONDITION,
        "spec.backend.iscsi.chap_password",
        "secrets.key_file",
    )
    assert SECRET not in (error.message or "")
    assert (await store.get_prefix(keys.POOLS))[0] == []
    # Pools without a secret are unaffected, and setting one later is refused too.
    plain = await r.pools.create_pool(
        storage.CreatePoolRequest(
            name="san", spec=storage.StoragePoolSpec(backend=iscsi("", enabled=False))
        ),
        timeout=TIMEOUT,
    )
    before = await store.get(keys.pool(plain.id))
    await expect_error(
        r.pools.update_pool(
            storage.UpdatePoolRequest(
                id=plain.id,
                spec=storage.StoragePoolSpec(backend=iscsi()),
                update_mask=protobuf.FieldMask(paths=["spec.backend"]),
            ),
            timeout=TIMEOUT,
        ),
        Status.FAILED_PRECONDITION,
        "spec.backend.iscsi.chap_password",
    )
    after = await store.get(keys.pool(plain.id))
    assert before is not None and after is not None and after.value == before.value


def _envelope(value: bytes) -> str:
    """The sealed CHAP password in a stored pool document."""
    text = json.loads(value)["spec"]["backend"]["iscsi"]["chapPassword"]
    assert isinstance(text, str) and sealing.is_sealed(text)
    return text


def _envelope_key(value: bytes) -> str:
    return sealing.sealed_with(_envelope(value))


async def test_rotation_old_key_still_opens_and_an_update_reseals(
    start: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old_path, new_path = tmp_path / "k1", tmp_path / "k2"
    old_key, new_key = sealing.write_new_key(old_path), sealing.write_new_key(new_path)

    first = await start(old_path)
    node = await first.nodes.register_node(register_request("host-a"), timeout=TIMEOUT)
    created = await first.pools.create_pool(
        storage.CreatePoolRequest(
            name="san", spec=storage.StoragePoolSpec(backend=iscsi(), assigned_node_ids=[node.id])
        ),
        timeout=TIMEOUT,
    )
    store = first.controller.store
    stored = await store.get(keys.pool(created.id))
    assert stored is not None and _envelope_key(stored.value) == old_key.id
    await first.close()

    # The new key is current, the old one kept for opening: the node still gets it.
    rotated = await start(new_path, (old_path,))
    assert assigned(await rotated.node_sees(node.id), created.id).chap_password == SECRET
    # Any update re-seals with the current key.
    await rotated.pools.update_pool(
        storage.UpdatePoolRequest(
            id=created.id,
            description="rotated",
            update_mask=protobuf.FieldMask(paths=["description"]),
        ),
        timeout=TIMEOUT,
    )
    stored = await store.get(keys.pool(created.id))
    assert stored is not None and _envelope_key(stored.value) == new_key.id
    await rotated.close()

    # Done: the old key may go.
    final = await start(new_path)
    assert assigned(await final.node_sees(node.id), created.id).chap_password == SECRET
    await final.close()

    # A controller missing the key leaves the secret out of the node's copy and says why,
    # naming the key id, never the value.
    caplog.set_level(logging.WARNING)
    other = tmp_path / "k3"
    sealing.write_new_key(other)
    wrong = await start(other)
    assert assigned(await wrong.node_sees(node.id), created.id).chap_password == ""
    assert new_key.id in caplog.text and "not sent to its nodes" in caplog.text
    assert SECRET not in caplog.text


# -- the Ceph key ---------------------------------------------------------------------------

#: A cephx key as ceph-authtool makes them (base64 of a 12-byte header and 16 key bytes).
CEPH_KEY = "AQBcm2BnAAAAABAAq7mZt3fT0xG9bQ1vKp5sRw=="
NEW_CEPH_KEY = "AQBcm2BnAAAAABAAZ3fQmD2w8Ykq1Lx0Tn7cHg=="


def ceph(key: str = CEPH_KEY, *, keyring_path: str = "") -> storage.StorageBackend:
    return storage.StorageBackend(
        type=Type.CEPH_RBD,
        ceph=storage.CephConfig(
            pool_name="vms",
            monitors=["10.0.0.1:6789"],
            user="qvdc",
            key=key,
            keyring_path=keyring_path,
        ),
    )


def assigned_ceph(response: compute.UpdateHeartbeatResponse, pool_id: str) -> storage.CephConfig:
    (pool,) = [p for p in response.assigned_pools if p.id == pool_id]
    assert pool.spec is not None and pool.spec.backend is not None
    assert pool.spec.backend.ceph is not None
    return pool.spec.backend.ceph


async def test_a_ceph_key_is_write_only_like_the_chap_password(
    start: Start,
    key_file: Path,
    etcd_server: EtcdServer,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await start(key_file)
    node_a = await r.nodes.register_node(register_request("host-a"), timeout=TIMEOUT)
    node_b = await r.nodes.register_node(register_request("host-b"), timeout=TIMEOUT)
    outputs: dict[str, betterproto2.Message] = {}
    created = await r.pools.create_pool(
        storage.CreatePoolRequest(
            name="rbd", spec=storage.StoragePoolSpec(backend=ceph(), assigned_node_ids=[node_a.id])
        ),
        timeout=TIMEOUT,
    )
    outputs["CreatePool"] = created
    assert created.spec.backend.ceph.key == "" and created.spec.backend.ceph.key_set is True
    assert created.spec.backend.ceph.user == "qvdc"
    outputs["GetPool"] = await r.pools.get_pool(
        storage.GetPoolRequest(id=created.id), timeout=TIMEOUT
    )
    outputs["ListPools"] = await r.pools.list_pools(storage.ListPoolsRequest(), timeout=TIMEOUT)
    outputs["UpdateHeartbeat(B)"] = seen_b = await r.node_sees(node_b.id)
    assert seen_b.assigned_pools == []

    # Keep (the redacted backend sent back), then set a new one by value.
    backend = created.spec.backend
    backend.ceph.namespace = "tenant-a"
    outputs["UpdatePool"] = kept = await r.pools.update_pool(
        storage.UpdatePoolRequest(
            id=created.id,
            spec=storage.StoragePoolSpec(backend=backend),
            update_mask=protobuf.FieldMask(paths=["spec.backend"]),
        ),
        timeout=TIMEOUT,
    )
    assert kept.spec.backend.ceph.key_set and kept.spec.backend.ceph.namespace == "tenant-a"
    assert assigned_ceph(await r.node_sees(node_a.id), created.id).key == CEPH_KEY
    for name, message in outputs.items():
        assert CEPH_KEY not in text_of(message), name

    shown = {fmt: await qvdcctl(r, "pools", "get", "rbd", "-o", fmt) for fmt in ("json", "yaml")}
    shown["list"] = await qvdcctl(r, "pools", "list", "-o", "wide")
    for fmt, text in shown.items():
        assert CEPH_KEY not in text, fmt
    assert '"keySet": true' in shown["json"]
    dump = etcdctl_dump(etcd_server)
    assert CEPH_KEY not in dump and "qvdc-sealed:v1:" in dump

    await r.pools.update_pool(
        storage.UpdatePoolRequest(
            id=created.id,
            spec=storage.StoragePoolSpec(backend=ceph(NEW_CEPH_KEY)),
            update_mask=protobuf.FieldMask(paths=["spec.backend"]),
        ),
        timeout=TIMEOUT,
    )
    assert assigned_ceph(await r.node_sees(node_a.id), created.id).key == NEW_CEPH_KEY

    # qvdcctl takes the key from a keyring file (never from a flag's value).
    keyring = tmp_path / "ceph.client.qvdc.keyring"
    keyring.write_text(f"[client.qvdc]\n\tkey = {NEW_CEPH_KEY}\n")
    said = await qvdcctl(
        r, "pools", "create", "rbd2", "--ceph-rbd", "vms", "--monitor", "10.0.0.1",
        "--ceph-user", "qvdc", "--ceph-key-file", str(keyring), "--assign", "host-a",
    )  # fmt: skip
    assert NEW_CEPH_KEY not in said
    (second,) = [p for p in (await r.node_sees(node_a.id)).assigned_pools if p.name == "rbd2"]
    assert assigned_ceph(await r.node_sees(node_a.id), second.id).key == NEW_CEPH_KEY
    assert NEW_CEPH_KEY not in etcdctl_dump(etcd_server)

    # Not with a keyring file too, and a malformed key is refused without being echoed.
    for bad, words in (
        (ceph(keyring_path="/etc/ceph/ceph.client.qvdc.keyring"), "not both"),
        (ceph("not a key!"), "must be a cephx key"),
    ):
        error = await expect_error(
            r.pools.create_pool(
                storage.CreatePoolRequest(name="bad", spec=storage.StoragePoolSpec(backend=bad)),
                timeout=TIMEOUT,
            ),
            Status.INVALID_ARGUMENT,
            "spec.backend.ceph.key",
            words,
        )
        assert "not a key!" not in (error.message or "") and CEPH_KEY not in (error.message or "")

    # Clear: its own path in the mask; the node's copy then has no key.
    cleared = await r.pools.update_pool(
        storage.UpdatePoolRequest(
            id=created.id,
            update_mask=protobuf.FieldMask(paths=["spec.backend.ceph.key"]),
        ),
        timeout=TIMEOUT,
    )
    assert cleared.spec.backend.ceph.key_set is False
    assert assigned_ceph(await r.node_sees(node_a.id), created.id).key == ""
    stored = await r.controller.store.get(keys.pool(created.id))
    assert stored is not None and "key" not in json.loads(stored.value)["spec"]["backend"]["ceph"]
    assert CEPH_KEY not in caplog.text and NEW_CEPH_KEY not in caplog.text


async def test_without_a_key_file_a_ceph_key_is_refused(start: Start, store: EtcdStore) -> None:
    r = await start(None)
    error = await expect_error(
        r.pools.create_pool(
            storage.CreatePoolRequest(name="rbd", spec=storage.StoragePoolSpec(backend=ceph())),
            timeout=TIMEOUT,
        ),
        Status.FAILED_PRECONDITION,
        "spec.backend.ceph.key",
        "secrets.key_file",
    )
    assert CEPH_KEY not in (error.message or "")
    assert (await store.get_prefix(keys.POOLS))[0] == []


def test_qvdcctl_reads_the_ceph_key_from_a_keyring_or_a_bare_key(tmp_path: Path) -> None:
    keyring = tmp_path / "keyring"
    keyring.write_text(f'[client.qvdc]\n\tkey = {CEPH_KEY}\n\tcaps mon = "allow r"\n')
    bare = tmp_path / "bare"
    bare.write_text(f"{CEPH_KEY}\n")
    assert cli._ceph_key(keyring) == CEPH_KEY
    assert cli._ceph_key(bare) == CEPH_KEY
    assert cli._ceph_key(None) == ""
    empty = tmp_path / "empty"
    empty.write_text("[client.qvdc]\n")
    for path, words in ((empty, "no 'key = ...' line"), (tmp_path / "missing", "cannot read")):
        with pytest.raises(click.BadParameter, match=words):
            cli._ceph_key(path)
