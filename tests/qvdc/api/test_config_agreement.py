"""The controller and the node judge pool configs alike.

For every good and bad config of the shared table that the wire can carry, the verdict of
``CreatePool`` over a real grpclib server equals the verdict of the node's path: the pool
converted as the node converts what it is sent (``node.convert.storage_pool_to_spec``)
and validated by the real backend. Accepted means accepted on both sides; rejected means
INVALID_ARGUMENT at the controller naming ``spec.backend.<field>`` and InvalidConfig at the
node naming ``<field>``, with the same reason.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import betterproto2
import pytest
from click.testing import CliRunner
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from node import convert
from protos.limiquantix.storage import v1 as storage
from qvdc import cli
from qvdc.api import pool_service
from qvdc.app import Controller
from storage_backends import base, ceph_rbd, configs, iscsi, local_dir, nfs
from tests.qvdc.api.helpers import TIMEOUT
from tests.storage_backends import config_cases
from tests.storage_backends.config_cases import Case

Type = storage.StorageBackendBackendType

_WIRE: dict[str, tuple[Type, str, type[betterproto2.Message]]] = {
    "local_dir": (Type.LOCAL_DIR, "local_dir", storage.LocalDirConfig),
    "nfs": (Type.NFS, "nfs", storage.NfsConfig),
    "ceph_rbd": (Type.CEPH_RBD, "ceph", storage.CephConfig),
    "iscsi": (Type.ISCSI, "iscsi", storage.IscsiConfig),
}


def _on_the_wire(case: Case) -> storage.StorageBackend | None:
    """The case as a StorageBackend message, or None when the wire cannot carry it
    (a string where the proto has an integer, a negative uint32...)."""
    backend_type, member, message_type = _WIRE[case.kind]
    try:
        message = message_type(**case.config)
        decoded = message_type.parse(bytes(message))
    except (TypeError, ValueError, OverflowError, AttributeError, KeyError):
        return None
    as_sent = pool_service.backend_config(decoded)
    for key, value in case.config.items():
        sent, wanted = as_sent.get(key), _normal(value)
        if type(sent) is not type(wanted) or sent != wanted:  # True == 1, but not on the wire
            return None
    return storage.StorageBackend(type=backend_type, **{member: decoded})  # type: ignore[arg-type]


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _node_verdict(pool: storage.StoragePool, tmp_path: Path) -> str | None:
    """None if the node's backend accepts the pool, else its InvalidConfig message."""
    spec = convert.storage_pool_to_spec(pool)
    backends: dict[str, base.StorageBackend] = {
        "local_dir": local_dir.LocalDirBackend(pools_root=tmp_path),
        "nfs": nfs.NfsBackend(mount_root=tmp_path),
        "ceph_rbd": ceph_rbd.CephRbdBackend(),
        "iscsi": iscsi.IscsiBackend(),
    }
    try:
        backends[spec.kind].validate(spec)
    except base.InvalidConfig as exc:
        return str(exc)
    return None


def _name(index: int) -> str:
    return f"agree-{index}"


async def test_create_pool_and_the_node_backend_give_the_same_verdict(
    pools: storage.StoragePoolServiceStub, tmp_path: Path
) -> None:
    cases = [p.values[0] for p in config_cases.GOOD + config_cases.BAD]
    carried = [(case, _on_the_wire(case)) for case in cases]
    on_wire = [(case, backend) for case, backend in carried if backend is not None]
    # The table must exercise the wire, not just the parser: most cases travel.
    assert len(on_wire) >= 0.8 * len(cases), [c for c, b in carried if b is None]
    disagreements: list[str] = []
    for index, (case, backend) in enumerate(on_wire):
        request = storage.CreatePoolRequest(
            name=_name(index), spec=storage.StoragePoolSpec(backend=backend)
        )
        controller: str | None = None
        try:
            created = await pools.create_pool(request, timeout=TIMEOUT)
        except GRPCError as exc:
            assert exc.status == Status.INVALID_ARGUMENT, (case, exc)
            controller = exc.message or ""
            pool = storage.StoragePool(id=f"id-{index}", name=request.name, spec=request.spec)
        else:
            # What its nodes receive: the definition with its secrets (CreatePool's own
            # response shows only their markers).
            pool = storage.StoragePool(id=created.id, name=created.name, spec=request.spec)
        node = _node_verdict(pool, tmp_path)
        if case.field is None:
            if controller is not None or node is not None:
                disagreements.append(f"{case}: controller {controller!r}, node {node!r}")
            continue
        expected_controller = f"spec.backend.{case.field}: {case.reason}"
        expected_node = f"{case.field} {case.reason}"
        if (
            controller is None
            or node is None
            or not controller.startswith(expected_controller)
            or not node.startswith(expected_node)
            # The same reason, word for word, on both sides.
            or re.sub(r"^spec\.backend\.\S+: ", "", controller) != node[len(case.field) + 1 :]
        ):
            disagreements.append(f"{case}: controller {controller!r}, node {node!r}")
    assert not disagreements, "\n".join(disagreements)


@pytest.mark.parametrize("case", config_cases.BAD[:1])
async def test_a_rejected_pool_is_not_stored(
    case: Case, pools: storage.StoragePoolServiceStub
) -> None:
    backend = _on_the_wire(case)
    assert backend is not None
    request = storage.CreatePoolRequest(
        name="rejected", spec=storage.StoragePoolSpec(backend=backend)
    )
    with pytest.raises(GRPCError):
        await pools.create_pool(request, timeout=TIMEOUT)
    listed = await pools.list_pools(storage.ListPoolsRequest(), timeout=TIMEOUT)
    assert [p.name for p in listed.pools] == []


async def test_the_mount_rules_of_local_dir_and_nfs_reach_the_node(
    pools: storage.StoragePoolServiceStub,
) -> None:
    # The wire fields 51-53 (LocalDirConfig) and 50 (NfsConfig) are stored and sent on:
    # a false create_path must not come back as "unset", which means true.
    backends = {
        "ld": storage.StorageBackend(
            type=Type.LOCAL_DIR,
            local_dir=storage.LocalDirConfig(
                path="/mnt/disk/images",
                require_mountpoint=True,
                mount_point="/mnt/disk",
                create_path=False,
            ),
        ),
        "nfs": storage.StorageBackend(
            type=Type.NFS,
            nfs=storage.NfsConfig(server="nas", export_path="/x", create_path=False),
        ),
    }
    for name, backend in backends.items():
        request = storage.CreatePoolRequest(
            name=name, spec=storage.StoragePoolSpec(backend=backend)
        )
        created = await pools.create_pool(request, timeout=TIMEOUT)
        fetched = await pools.get_pool(storage.GetPoolRequest(id=created.id), timeout=TIMEOUT)
        spec = convert.storage_pool_to_spec(fetched)
        assert spec.config["create_path"] is False
        if name == "ld":
            assert spec.config["require_mountpoint"] is True
            assert spec.config["mount_point"] == "/mnt/disk"
            parsed = configs.parse_local_dir(spec.config)
            assert (parsed.require_mountpoint, parsed.create_path) == (True, False)


async def test_qvdcctl_sends_the_mount_rules(
    controller: Controller, pools: storage.StoragePoolServiceStub
) -> None:
    async def create(*argv: str) -> str:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            cli.cli,
            ["--insecure", f"--controller=127.0.0.1:{controller.port}", "pools", "create", *argv],
        )
        assert result.exit_code == 0, result.output
        found = re.search(r"\(id ([0-9a-f-]+)\) created", result.output)
        assert found is not None, result.output
        return found.group(1)

    pool_id = await create(
        "on-disk",
        "--local-dir=/mnt/disk/images",
        "--mount-point=/mnt/disk",
        "--require-mountpoint",
        "--no-create-path",
    )
    got = await pools.get_pool(storage.GetPoolRequest(id=pool_id), timeout=TIMEOUT)
    assert got.spec is not None and got.spec.backend is not None
    assert got.spec.backend.local_dir == storage.LocalDirConfig(
        path="/mnt/disk/images", require_mountpoint=True, mount_point="/mnt/disk", create_path=False
    )
    # Without the flags nothing changes: create_path stays unset (true).
    pool_id = await create("plain", "--local-dir", "/srv/plain")
    got = await pools.get_pool(storage.GetPoolRequest(id=pool_id), timeout=TIMEOUT)
    assert got.spec is not None and got.spec.backend is not None
    assert got.spec.backend.local_dir == storage.LocalDirConfig(path="/srv/plain")
