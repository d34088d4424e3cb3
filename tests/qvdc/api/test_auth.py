"""Authorization through a real controller serving real TLS on loopback (issue 13 items 2, 3, 7).

Certificates come from the dev CA (qvdc.security.certs); clients dial with
qvdc.transport.tls.client_context, so every identity here passed a real handshake.
Every refusal is checked against a full etcd read before and after: nothing written.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpclib.client
import grpclib.const
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.app import Controller
from qvdc.security import certs
from qvdc.settings import AuthSettings, EtcdSettings, TlsSettings
from qvdc.store.etcd import EtcdStore
from qvdc.transport import streams, tls
from tests.qvdc.api.helpers import controller_settings, create_request, register_request

STREAM = "/limiquantix.compute.v1.NodeService/StreamHeartbeat"
BOOT = "bootstrap-secret-0123456789"
BOOT_ANY = "bootstrap-any-host-0123456789"
EXPIRED = "bootstrap-expired-0123456789"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
VIEWER_TOKEN = "viewer-token-0123456789abcdef"


@dataclass(frozen=True)
class Pki:
    directory: Path

    def path(self, name: str, suffix: str) -> Path:
        return self.directory / f"{name}.{suffix}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = certs.issue_ca("test CA", days=1)
    certs.write_pair(ca, directory=directory, name="ca")
    certs.write_pair(certs.issue_server(ca, days=1), directory=directory, name="controller")
    for host in ("host-a", "host-b", "host-c", "host-d"):
        certs.write_pair(certs.issue_node(ca, host, days=1), directory=directory, name=host)
    certs.write_pair(
        certs.issue_operator(ca, "ada", "admin", days=1), directory=directory, name="ada"
    )
    certs.write_pair(
        certs.issue_operator(ca, "vic", "viewer", days=1), directory=directory, name="vic"
    )
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
    (directory / "tokens.toml").write_text(
        f"""
[[bootstrap]]
id = "rack-7"
token = "{BOOT}"
expires = {(past + datetime.timedelta(days=2)).isoformat()}
hostnames = ["host-c"]

[[bootstrap]]
id = "any-host"
token = "{BOOT_ANY}"
expires = {(past + datetime.timedelta(days=2)).isoformat()}

[[bootstrap]]
id = "old"
token = "{EXPIRED}"
expires = {past.isoformat()}

[[operator]]
name = "ada-token"
role = "admin"
token = "{ADMIN_TOKEN}"

[[operator]]
name = "vic-token"
role = "viewer"
token = "{VIEWER_TOKEN}"
"""
    )
    return Pki(directory)


@pytest.fixture
async def controller(
    store: EtcdStore, etcd_settings: EtcdSettings, pki: Pki
) -> AsyncIterator[Controller]:
    settings = controller_settings(etcd_settings, grace=60.0).replace(
        tls=TlsSettings(
            mode="tls",  # client certificates optional: bootstrap-token callers have none
            cert=pki.path("controller", "crt"),
            key=pki.path("controller", "key"),
            client_ca=pki.path("ca", "crt"),
        ),
        auth=AuthSettings(tokens_file=pki.directory / "tokens.toml"),
    )
    assert settings.auth_enabled
    c = Controller(store=store, settings=settings)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


Connect = Callable[..., grpclib.client.Channel]


@pytest.fixture
def connect(controller: Controller, pki: Pki) -> Iterator[Connect]:
    """``connect("host-a")``: a channel presenting that certificate; ``connect()``: none."""
    opened: list[grpclib.client.Channel] = []

    def make(name: str | None = None) -> grpclib.client.Channel:
        ctx = tls.client_context(
            ca=pki.path("ca", "crt"),
            cert=pki.path(name, "crt") if name else None,
            key=pki.path(name, "key") if name else None,
        )
        channel = grpclib.client.Channel("127.0.0.1", controller.port, ssl=ctx)
        opened.append(channel)
        return channel

    yield make
    for channel in opened:
        channel.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def snapshot(store: EtcdStore) -> dict[str, tuple[int, bytes]]:
    kvs, _ = await store.get_prefix("", timeout=5.0)
    return {kv.key: (kv.mod_revision, kv.value) for kv in kvs}


async def refused(call: Awaitable[object], status: Status, *names: str) -> str:
    with pytest.raises(GRPCError) as info:
        await call
    assert info.value.status == status, info.value
    message = info.value.message or ""
    for name in names:
        assert name in message, message
    return message


@dataclass
class Seeded:
    a: str
    b: str
    pool: str


async def settled(store: EtcdStore, *, still: float = 0.5) -> None:
    """Wait for the replica's own writes (its replica key, the election, the pool
    aggregates of the seeds) to be done: etcd unchanged for ``still`` seconds."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(15):
        last = await snapshot(store)
        since = loop.time()
        while "election/aggregator" not in last or loop.time() - since < still:
            await asyncio.sleep(0.05)
            now = await snapshot(store)
            if now != last:
                last, since = now, loop.time()


@pytest.fixture
async def seeded(connect: Connect, store: EtcdStore) -> Seeded:
    a = await compute.NodeServiceStub(connect("host-a")).register_node(register_request("host-a"))
    b = await compute.NodeServiceStub(connect("host-b")).register_node(register_request("host-b"))
    pool = await storage.StoragePoolServiceStub(connect("ada")).create_pool(
        create_request("p1", nodes=[a.id])
    )
    await settled(store)
    return Seeded(a=a.id, b=b.id, pool=pool.id)


async def first_stream_reply(
    channel: grpclib.client.Channel, request: compute.UpdateHeartbeatRequest
) -> compute.UpdateHeartbeatResponse | None:
    """Open a heartbeat stream, send ``request``, return the reply (raises the status)."""
    async with streams.open_stream(
        channel,
        STREAM,
        cardinality=grpclib.const.Cardinality.STREAM_STREAM,
        request_type=compute.UpdateHeartbeatRequest,
        reply_type=compute.UpdateHeartbeatResponse,
        timeout=10,
    ) as call:
        await call.send_message(request)
        try:
            return await call.recv_message()
        except StreamTerminatedError:
            streams.raise_status(call)
            raise


def operator_calls(seeded: Seeded) -> dict[str, Callable[[grpclib.client.Channel], Awaitable[Any]]]:
    """Every operator RPC, mutating ones marked by their name."""

    def n(ch: grpclib.client.Channel) -> compute.NodeServiceStub:
        return compute.NodeServiceStub(ch)

    def p(ch: grpclib.client.Channel) -> storage.StoragePoolServiceStub:
        return storage.StoragePoolServiceStub(ch)

    return {
        "GetNode": lambda ch: n(ch).get_node(compute.GetNodeRequest(id=seeded.a)),
        "ListNodes": lambda ch: n(ch).list_nodes(compute.ListNodesRequest()),
        "GetPool": lambda ch: p(ch).get_pool(storage.GetPoolRequest(id=seeded.pool)),
        "ListPools": lambda ch: p(ch).list_pools(storage.ListPoolsRequest()),
        "GetPoolMetrics": lambda ch: p(ch).get_pool_metrics(
            storage.GetPoolMetricsRequest(id=seeded.pool)
        ),
        "EnableNode": lambda ch: n(ch).enable_node(compute.EnableNodeRequest(id=seeded.a)),
        "DisableNode": lambda ch: n(ch).disable_node(
            compute.DisableNodeRequest(id=seeded.a, reason="x")
        ),
        "CreatePool": lambda ch: p(ch).create_pool(create_request("p2")),
        "UpdatePool": lambda ch: p(ch).update_pool(
            storage.UpdatePoolRequest(id=seeded.pool, description="changed")
        ),
        "DeletePool": lambda ch: p(ch).delete_pool(
            storage.DeletePoolRequest(id=seeded.pool, force=True)
        ),
        "AssignPoolToNode": lambda ch: p(ch).assign_pool_to_node(
            storage.AssignPoolToNodeRequest(pool_id=seeded.pool, node_id=seeded.b)
        ),
        "UnassignPoolFromNode": lambda ch: p(ch).unassign_pool_from_node(
            storage.UnassignPoolFromNodeRequest(pool_id=seeded.pool, node_id=seeded.a)
        ),
    }


READS = {"GetNode", "ListNodes", "GetPool", "ListPools", "GetPoolMetrics"}


# --- nodes ----------------------------------------------------------------------------


async def test_a_node_certificate_cannot_act_as_another_node(
    connect: Connect, seeded: Seeded, store: EtcdStore, controller: Controller
) -> None:
    as_a = connect("host-a")
    nodes = compute.NodeServiceStub(as_a)
    before = await snapshot(store)
    message = await refused(
        nodes.register_node(register_request("host-b", ip="10.9.9.9:1")),
        Status.PERMISSION_DENIED,
        "hostname",
        "host-a",
        "host-b",
    )
    assert "may only register itself" in message
    spoof = compute.UpdateHeartbeatRequest(
        node_id=seeded.b,
        storage_pools=[
            compute.StoragePoolStatusReport(
                pool_id=seeded.pool, health=compute.StoragePoolStatusReportHealthStatus.HEALTH_ERROR
            )
        ],
    )
    await refused(nodes.update_heartbeat(spoof), Status.PERMISSION_DENIED, "node_id", "host-b")
    await refused(first_stream_reply(as_a, spoof), Status.PERMISSION_DENIED, "node_id", "host-b")
    await asyncio.sleep(0.3)  # past the committer's delay: a write would have landed
    assert await snapshot(store) == before
    assert controller.node_service.open_streams == 0
    # Its own node it may act for.
    own = compute.UpdateHeartbeatRequest(node_id=seeded.a, sequence=1)
    assert (await nodes.update_heartbeat(own)).acknowledged
    reply = await first_stream_reply(as_a, own)
    assert reply is not None and reply.acknowledged


async def test_a_node_certificate_cannot_call_operator_rpcs(
    connect: Connect, seeded: Seeded, store: EtcdStore
) -> None:
    as_a = connect("host-a")
    before = await snapshot(store)
    for name, call in operator_calls(seeded).items():
        message = await refused(call(as_a), Status.PERMISSION_DENIED, name, "needs an operator")
        assert "node host-a" in message
    assert await snapshot(store) == before


async def test_an_operator_cannot_call_node_rpcs(connect: Connect, seeded: Seeded) -> None:
    nodes = compute.NodeServiceStub(connect("ada"))
    await refused(
        nodes.register_node(register_request("host-d")), Status.PERMISSION_DENIED, "node cert"
    )
    await refused(
        nodes.update_heartbeat(compute.UpdateHeartbeatRequest(node_id=seeded.a)),
        Status.PERMISSION_DENIED,
        "node certificate",
    )


# --- operators ------------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["certificate", "token"])
async def test_viewer_reads_and_is_refused_every_change(
    connect: Connect, seeded: Seeded, store: EtcdStore, credential: str
) -> None:
    if credential == "certificate":
        channel, metadata = connect("vic"), None
    else:
        channel, metadata = connect(None), bearer(VIEWER_TOKEN)
    before = await snapshot(store)
    for name, call in operator_calls(seeded).items():
        with_metadata = _with_metadata(call, metadata)
        if name in READS:
            await with_metadata(channel)
        else:
            message = await refused(with_metadata(channel), Status.PERMISSION_DENIED, name)
            assert "needs role admin" in message and "vic" in message
    assert await snapshot(store) == before


def _with_metadata(
    call: Callable[[grpclib.client.Channel], Awaitable[Any]], metadata: dict[str, str] | None
) -> Callable[[grpclib.client.Channel], Awaitable[Any]]:
    """``call`` with ``metadata`` added to every request it makes on the channel."""
    if metadata is None:
        return call

    async def wrapped(channel: grpclib.client.Channel) -> Any:
        original = channel.request

        def request(*args: Any, **kwargs: Any) -> Any:
            kwargs["metadata"] = {**(kwargs.get("metadata") or {}), **metadata}
            return original(*args, **kwargs)

        channel.request = request  # type: ignore[method-assign]
        try:
            return await call(channel)
        finally:
            del channel.request

    return wrapped


@pytest.mark.parametrize("credential", ["certificate", "token"])
async def test_admin_changes_are_audited_with_who(
    connect: Connect,
    seeded: Seeded,
    caplog: pytest.LogCaptureFixture,
    credential: str,
) -> None:
    if credential == "certificate":
        channel, metadata, who = connect("ada"), None, "operator ada (admin, certificate)"
    else:
        channel, metadata, who = (
            connect(None),
            bearer(ADMIN_TOKEN),
            "operator ada-token (admin, token)",
        )
    pools = storage.StoragePoolServiceStub(channel)
    nodes = compute.NodeServiceStub(channel)
    with caplog.at_level(logging.INFO, logger="qvdc.audit"):
        created = await pools.create_pool(create_request("audited"), metadata=metadata)
        await pools.assign_pool_to_node(
            storage.AssignPoolToNodeRequest(pool_id=created.id, node_id=seeded.b),
            metadata=metadata,
        )
        await nodes.disable_node(
            compute.DisableNodeRequest(id=seeded.b, reason="disk swap"), metadata=metadata
        )
        await pools.delete_pool(
            storage.DeletePoolRequest(id=created.id, force=True), metadata=metadata
        )
        await pools.list_pools(storage.ListPoolsRequest(), metadata=metadata)  # no audit line
    lines = [r.getMessage() for r in caplog.records if r.name == "qvdc.audit"]
    assert len(lines) == 4, lines
    for line, action, target in zip(
        lines,
        ["CreatePool", "AssignPoolToNode", "DisableNode", "DeletePool"],
        [f"pool {created.id}", f"pool {created.id}", f"node {seeded.b}", f"pool {created.id}"],
        strict=True,
    ):
        assert line.startswith(f"audit: {who} from 127.0.0.1:"), line
        assert f": {action} {target}" in line, line
    assert "node " + seeded.b in lines[1] and "disk swap" in lines[2]


async def test_no_identity_is_unauthenticated(
    connect: Connect, seeded: Seeded, store: EtcdStore
) -> None:
    channel = connect(None)
    before = await snapshot(store)
    for name, call in operator_calls(seeded).items():
        await refused(call(channel), Status.UNAUTHENTICATED, name, "no client certificate")
    nodes = compute.NodeServiceStub(channel)
    await refused(
        nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=seeded.a), metadata=bearer("nope" * 5)
        ),
        Status.UNAUTHENTICATED,
        "unknown bearer token",
    )
    await refused(
        nodes.register_node(register_request("host-d"), metadata={"authorization": "Basic x"}),
        Status.UNAUTHENTICATED,
        "Bearer",
    )
    assert await snapshot(store) == before


# --- bootstrap tokens -----------------------------------------------------------------


async def test_bootstrap_token_registers_a_new_node_once(
    connect: Connect, seeded: Seeded, store: EtcdStore
) -> None:
    nodes = compute.NodeServiceStub(connect(None))  # no certificate yet
    node = await nodes.register_node(register_request("host-c"), metadata=bearer(BOOT))
    assert node.hostname == "host-c" and node.id
    # Reused: the host exists now, so the token cannot register it again (take it over).
    before = await snapshot(store)
    await refused(
        nodes.register_node(register_request("host-c", ip="10.6.6.6:1"), metadata=bearer(BOOT)),
        Status.PERMISSION_DENIED,
        "hostname",
        "already registered",
        "rack-7",
    )
    # Nor an existing host it was never meant for, nor one outside its list.
    await refused(
        nodes.register_node(register_request("host-a"), metadata=bearer(BOOT_ANY)),
        Status.PERMISSION_DENIED,
        "already registered",
    )
    await refused(
        nodes.register_node(register_request("host-d"), metadata=bearer(BOOT)),
        Status.PERMISSION_DENIED,
        "hostname",
        "may not register",
    )
    # A token is for registering only: no heartbeats.
    await refused(
        nodes.update_heartbeat(
            compute.UpdateHeartbeatRequest(node_id=node.id), metadata=bearer(BOOT)
        ),
        Status.PERMISSION_DENIED,
        "node certificate",
    )
    assert await snapshot(store) == before
    # Then the node uses its certificate: re-registration and heartbeats work.
    as_c = compute.NodeServiceStub(connect("host-c"))
    again = await as_c.register_node(register_request("host-c"))
    assert again.id == node.id
    assert (
        await as_c.update_heartbeat(compute.UpdateHeartbeatRequest(node_id=node.id))
    ).acknowledged


@pytest.mark.parametrize(
    ("token", "reason"),
    [("bootstrap-wrong-0123456789", "unknown bearer token"), (EXPIRED, "old expired at")],
)
async def test_wrong_or_expired_bootstrap_token_is_unauthenticated(
    connect: Connect, store: EtcdStore, token: str, reason: str
) -> None:
    nodes = compute.NodeServiceStub(connect(None))
    await settled(store)
    before = await snapshot(store)
    await refused(
        nodes.register_node(register_request("host-d"), metadata=bearer(token)),
        Status.UNAUTHENTICATED,
        reason,
    )
    assert await snapshot(store) == before


# --- one stream per node --------------------------------------------------------------


async def test_a_second_stream_replaces_the_first(
    connect: Connect, seeded: Seeded, controller: Controller
) -> None:
    first_channel, second_channel = connect("host-a"), connect("host-a")
    hello = compute.UpdateHeartbeatRequest(node_id=seeded.a, sequence=1)
    async with streams.open_stream(
        first_channel,
        STREAM,
        cardinality=grpclib.const.Cardinality.STREAM_STREAM,
        request_type=compute.UpdateHeartbeatRequest,
        reply_type=compute.UpdateHeartbeatResponse,
        timeout=10,
    ) as first:
        await first.send_message(hello)
        assert (await first.recv_message()) is not None
        assert controller.node_service.open_streams == 1
        async with streams.open_stream(
            second_channel,
            STREAM,
            cardinality=grpclib.const.Cardinality.STREAM_STREAM,
            request_type=compute.UpdateHeartbeatRequest,
            reply_type=compute.UpdateHeartbeatResponse,
            timeout=10,
        ) as second:
            await second.send_message(hello)
            assert (await second.recv_message()) is not None
            with pytest.raises(GRPCError) as info:
                try:
                    await first.recv_message()
                except StreamTerminatedError:
                    streams.raise_status(first)
                    raise
            assert info.value.status == Status.ABORTED
            assert (info.value.message or "").startswith(
                "replaced by a newer stream from 127.0.0.1:"
            )
            assert controller.node_service.open_streams == 1
            assert controller.hub.open_streams == 1
            # The newer stream is served as before.
            await second.send_message(compute.UpdateHeartbeatRequest(node_id=seeded.a, sequence=2))
            reply = await second.recv_message()
            assert reply is not None and reply.sequence == 2
