"""Authorization on the Connect face: the gRPC face's policy (bearer tokens over plain
HTTP), and upstream's credential-less agents admitted from listed networks, each only as
the node at its own address."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from qvdc.app import Controller
from qvdc.settings import AuthSettings, EtcdSettings, TlsSettings
from qvdc.store.etcd import EtcdStore
from tests.fixtures.pki import Files, Pki
from tests.qvdc.http.conftest import Answer, Http, http_settings
from tests.qvdc.http.test_connect_upstream import NODES, POOLS, agent_heartbeat, agent_registration

ADMIN = "admin-token-0123456789abcdef"
VIEWER = "viewer-token-0123456789abcdef"
BOOT = "bootstrap-token-0123456789abcdef"


def tokens_file(directory: Path) -> Path:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    path = directory / "tokens.toml"
    path.write_text(
        f"""
[[bootstrap]]
id = "rack-1"
token = "{BOOT}"
expires = {expires.isoformat()}

[[operator]]
name = "ada"
role = "admin"
token = "{ADMIN}"

[[operator]]
name = "vic"
role = "viewer"
token = "{VIEWER}"
"""
    )
    return path


async def start(
    store: EtcdStore,
    etcd_settings: EtcdSettings,
    tmp_path: Path,
    *networks: str,
    http_tls: bool | None = None,
) -> tuple[Controller, Pki]:
    pki = Pki(tmp_path / "pki")
    server = pki.server()
    base = http_settings(etcd_settings)
    settings = dataclasses.replace(
        base,
        tls=TlsSettings(mode="tls", cert=server.cert, key=server.key, client_ca=pki.ca),
        auth=AuthSettings(mode="on", tokens_file=tokens_file(tmp_path)),
        http=dataclasses.replace(base.http, tls=http_tls, unauthenticated_node_networks=networks),
    )
    assert settings.auth_enabled
    controller = Controller(store=store, settings=settings)
    await controller.start()
    return controller, pki


def https(controller: Controller, pki: Pki) -> Http:
    return Http(controller.http_port, context=ssl.create_default_context(cafile=pki.ca))


@pytest.fixture
async def guarded(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path
) -> AsyncIterator[Http]:
    controller, pki = await start(store, etcd_settings, tmp_path)
    try:
        yield https(controller, pki)
    finally:
        await controller.stop()


@pytest.fixture
async def agents(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Http]:
    controller, pki = await start(store, etcd_settings, tmp_path, "127.0.0.0/8")
    assert "UPSTREAM AGENTS WITHOUT CREDENTIALS are admitted" in caplog.text
    assert "127.0.0.0/8" in caplog.text
    try:
        yield https(controller, pki)
    finally:
        await controller.stop()


async def test_plain_http_with_authorization_refuses_tokens_and_admits_agents(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path
) -> None:
    controller, _ = await start(store, etcd_settings, tmp_path, "127.0.0.1/32", http_tls=False)
    try:
        plain = Http(controller.http_port)
        refused = await call(plain, f"{POOLS}/ListPools", {}, token=ADMIN)
        assert refused.status == 401
        assert "not accepted over plain HTTP" in refused.json()["message"]
        body = agent_registration("plain-01") | {"managementIp": "127.0.0.1:9090"}
        registered = await call(plain, f"{NODES}/RegisterNode", body)
        assert registered.status == 200, registered.body
    finally:
        await controller.stop()


async def call(client: Http, procedure: str, body: object, token: str | None = None) -> Answer:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.request("POST", f"/{procedure}", json.dumps(body).encode(), headers=headers)


async def test_tokens_and_roles_as_on_grpc(guarded: Http) -> None:
    anonymous = await call(guarded, f"{NODES}/RegisterNode", agent_registration())
    assert anonymous.status == 401
    error = anonymous.json()
    assert error["code"] == "unauthenticated"
    assert "RegisterNode needs a node certificate" in error["message"]

    listed = await call(guarded, f"{POOLS}/ListPools", {}, token=VIEWER)
    assert listed.status == 200
    refused = await call(
        guarded,
        f"{POOLS}/CreatePool",
        {"name": "p1", "spec": {"backend": {"type": "LOCAL_DIR", "localDir": {"path": "/p"}}}},
        token=VIEWER,
    )
    assert refused.status == 403
    assert refused.json()["code"] == "permission_denied"
    created = await call(
        guarded,
        f"{POOLS}/CreatePool",
        {"name": "p1", "spec": {"backend": {"type": "LOCAL_DIR", "localDir": {"path": "/p"}}}},
        token=ADMIN,
    )
    assert created.status == 200, created.body

    registered = await call(
        guarded, f"{NODES}/RegisterNode", agent_registration("new-01"), token=BOOT
    )
    assert registered.status == 200, registered.body
    again = await call(guarded, f"{NODES}/RegisterNode", agent_registration("new-01"), token=BOOT)
    assert again.status == 403
    assert "already registered" in again.json()["message"]


async def test_agents_without_credentials_act_only_as_the_node_at_their_address(
    agents: Http,
) -> None:
    body = agent_registration("qhci-01") | {"managementIp": "127.0.0.1:9090"}
    mine = await call(agents, f"{NODES}/RegisterNode", body)
    assert mine.status == 200, mine.body
    my_id = mine.json()["id"]

    elsewhere = await call(agents, f"{NODES}/RegisterNode", agent_registration("qhci-02"))
    assert elsewhere.status == 403
    assert elsewhere.json()["message"].startswith(
        "management_ip: an agent without credentials registers its own address (127.0.0.1)"
    )

    # Another node, registered with a bootstrap token at another address.
    other = await call(agents, f"{NODES}/RegisterNode", agent_registration("qhci-03"), token=BOOT)
    assert other.status == 200, other.body
    other_id = other.json()["id"]
    takeover = await call(
        agents,
        f"{NODES}/RegisterNode",
        agent_registration("qhci-03") | {"managementIp": "127.0.0.1"},
    )
    assert takeover.status == 403
    assert "may not take it over" in takeover.json()["message"]

    pool = await call(
        agents,
        f"{POOLS}/CreatePool",
        {
            "name": "mine",
            "spec": {
                "backend": {"type": "LOCAL_DIR", "localDir": {"path": "/p"}},
                "assignedNodeIds": [my_id],
            },
        },
        token=ADMIN,
    )
    assert pool.status == 200, pool.body
    pool_id = pool.json()["id"]
    theirs = await call(
        agents,
        f"{POOLS}/CreatePool",
        {"name": "theirs", "spec": {"backend": {"type": "LOCAL_DIR", "localDir": {"path": "/q"}}}},
        token=ADMIN,
    )
    their_pool = theirs.json()["id"]

    beat = await call(agents, f"{NODES}/UpdateHeartbeat", agent_heartbeat(my_id, pool_id))
    assert beat.status == 200, beat.body
    assert beat.json()["assignedPoolIds"] == [pool_id]
    spoof = await call(agents, f"{NODES}/UpdateHeartbeat", agent_heartbeat(other_id, pool_id))
    assert spoof.status == 403
    assert "reports only for itself" in spoof.json()["message"]

    got = await call(agents, f"{POOLS}/GetPool", {"id": pool_id})
    assert got.status == 200 and got.json()["name"] == "mine"
    other_pool = await call(agents, f"{POOLS}/GetPool", {"id": their_pool})
    assert other_pool.status == 403
    listing = await call(agents, f"{POOLS}/ListPools", {})
    assert listing.status == 401
    change = await call(agents, f"{POOLS}/DeletePool", {"id": pool_id})
    assert change.status == 401


def with_certificate(controller: Controller, pki: Pki, files: Files) -> Http:
    """An HTTPS client presenting ``files``' certificate."""
    context = ssl.create_default_context(cafile=pki.ca)
    context.load_cert_chain(files.cert, files.key)
    return Http(controller.http_port, context=context)


async def test_client_certificates_name_callers_as_on_grpc(
    store: EtcdStore, etcd_settings: EtcdSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The HTTP port reads a presented client certificate: operator roles and node
    identities mean what they mean on gRPC, a certificate holder from an agent network is
    not taken for an agent, and another CA's certificate fails the handshake."""
    caplog.set_level(logging.INFO)
    controller, pki = await start(store, etcd_settings, tmp_path, "127.0.0.0/8")
    try:
        admin = with_certificate(controller, pki, pki.operator("ada-cert", "admin"))
        viewer = with_certificate(controller, pki, pki.operator("vic-cert", "viewer"))
        node = with_certificate(controller, pki, pki.node("cert-01"))
        backend = {"type": "LOCAL_DIR", "localDir": {"path": "/p"}}
        pool = {"name": "p1", "spec": {"backend": backend}}

        assert (await call(viewer, f"{POOLS}/ListPools", {})).status == 200
        refused = await call(viewer, f"{POOLS}/CreatePool", pool)
        assert refused.status == 403, refused.body
        assert "operator vic-cert (viewer, certificate)" in refused.json()["message"]
        kvs, _ = await store.get_prefix("pools/", timeout=5.0)
        assert kvs == []
        created = await call(admin, f"{POOLS}/CreatePool", pool)
        assert created.status == 200, created.body
        assert "audit: operator ada-cert (admin, certificate) from 127.0.0.1:" in caplog.text

        # A node certificate: itself from any management address (no agent rule), nobody else.
        mine = await call(node, f"{NODES}/RegisterNode", agent_registration("cert-01"))
        assert mine.status == 200, mine.body
        other = await call(node, f"{NODES}/RegisterNode", agent_registration("cert-02"))
        assert other.status == 403
        assert "node cert-01 may only register itself" in other.json()["message"]
        operator_rpc = await call(node, f"{POOLS}/ListPools", {})
        assert operator_rpc.status == 403
        assert "needs an operator" in operator_rpc.json()["message"]

        # The status page admits an operator certificate as it admits an operator token.
        assert (await admin.request("GET", "/status")).status == 200
        assert (await https(controller, pki).request("GET", "/status")).status == 401

        stranger = with_certificate(controller, pki, Pki(tmp_path / "other").operator("mallory"))
        with pytest.raises(OSError):  # ssl.SSLError, or the connection reset (TLS 1.3)
            await call(stranger, f"{POOLS}/ListPools", {})
    finally:
        await controller.stop()
