"""The policy as a function of (identity, RPC, request), without a server."""

from __future__ import annotations

import contextvars
import logging
from pathlib import Path

import pytest
from grpclib.const import Status

from protos.limiquantix.compute import v1 as compute
from qvdc.api import auth
from qvdc.security import identity
from qvdc.security.identity import Identity, Kind

NODES = {"id-a": "host-a", "id-b": "host-b"}
NODE = "/limiquantix.compute.v1.NodeService/"
POOL = "/limiquantix.storage.v1.StoragePoolService/"


def policy(*, enabled: bool = True) -> auth.Policy:
    by_host = {h: i for i, h in NODES.items()}
    return auth.Policy(enabled=enabled, hostname_of=NODES.get, node_of=by_host.get)


A = identity.node("host-a")
ADMIN = identity.operator("ada", "admin")
VIEWER = identity.operator("vic", "viewer")
BOOT = Identity(kind=Kind.BOOTSTRAP, name="rack-7", via="token", hostnames=frozenset({"host-c"}))
NOBODY = identity.anonymous("no client certificate")


def denied(who: Identity, rpc: str, request: object = None) -> auth.Denied:
    with pytest.raises(auth.Denied) as info:
        policy().authorize(who, rpc, request)
    return info.value


@pytest.mark.parametrize(
    ("rpc", "need"),
    [
        (NODE + "RegisterNode", auth.Access.NODE),
        (NODE + "StreamHeartbeat", auth.Access.NODE),
        (NODE + "GetNode", auth.Access.READ),
        (POOL + "ListPools", auth.Access.READ),
        (POOL + "WatchPools", auth.Access.READ),
        (POOL + "CreatePool", auth.Access.WRITE),
        (NODE + "DisableNode", auth.Access.WRITE),
        (POOL + "SomethingNew", auth.Access.WRITE),  # unknown: needs admin
        ("/grpc.health.v1.Health/Check", auth.Access.PUBLIC),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", auth.Access.READ),
    ],
)
def test_access_of_each_rpc(rpc: str, need: auth.Access) -> None:
    assert auth.access(rpc) is need


def test_node_acts_for_itself_only() -> None:
    p = policy()
    p.authorize(A, NODE + "RegisterNode", compute.RegisterNodeRequest(hostname="host-a"))
    p.authorize(A, NODE + "UpdateHeartbeat", compute.UpdateHeartbeatRequest(node_id="id-a"))
    err = denied(A, NODE + "RegisterNode", compute.RegisterNodeRequest(hostname="host-b"))
    assert err.status is Status.PERMISSION_DENIED
    assert err.message is not None and err.message.startswith("hostname: node host-a")
    err = denied(A, NODE + "StreamHeartbeat", compute.UpdateHeartbeatRequest(node_id="id-b"))
    assert err.message is not None and err.message.startswith("node_id: 'id-b' is node host-b")
    # An id nobody has passes: the handler answers NOT_FOUND and writes nothing.
    p.authorize(A, NODE + "UpdateHeartbeat", compute.UpdateHeartbeatRequest(node_id="ghost"))


@pytest.mark.parametrize("rpc", ["GetNode", "ListNodes", "EnableNode", "DisableNode"])
def test_node_cannot_call_operator_rpcs(rpc: str) -> None:
    err = denied(A, NODE + rpc)
    assert err.status is Status.PERMISSION_DENIED and "needs an operator" in (err.message or "")


def test_roles() -> None:
    p = policy()
    for rpc in ("GetPool", "ListPools", "GetPoolMetrics"):
        p.authorize(VIEWER, POOL + rpc)
        p.authorize(ADMIN, POOL + rpc)
    for rpc in ("CreatePool", "UpdatePool", "DeletePool", "AssignPoolToNode"):
        p.authorize(ADMIN, POOL + rpc)
        err = denied(VIEWER, POOL + rpc)
        assert "needs role admin" in (err.message or "")
    err = denied(ADMIN, NODE + "UpdateHeartbeat")
    assert "needs a node certificate" in (err.message or "")


def test_anonymous_is_unauthenticated_except_health() -> None:
    assert denied(NOBODY, POOL + "ListPools").status is Status.UNAUTHENTICATED
    assert denied(NOBODY, NODE + "RegisterNode").status is Status.UNAUTHENTICATED
    policy().authorize(NOBODY, "/grpc.health.v1.Health/Check")


def test_bootstrap_registers_new_listed_hostnames_only() -> None:
    p = policy()
    p.authorize(BOOT, NODE + "RegisterNode", compute.RegisterNodeRequest(hostname="host-c"))
    err = denied(BOOT, NODE + "RegisterNode", compute.RegisterNodeRequest(hostname="host-d"))
    assert "may not register 'host-d'" in (err.message or "")
    anyhost = Identity(kind=Kind.BOOTSTRAP, name="any", via="token")
    err = denied(anyhost, NODE + "RegisterNode", compute.RegisterNodeRequest(hostname="host-a"))
    assert "already registered" in (err.message or "")
    for rpc in ("UpdateHeartbeat", "StreamHeartbeat"):
        assert "needs a node certificate" in (denied(BOOT, NODE + rpc).message or "")
    assert denied(BOOT, POOL + "ListPools").status is Status.PERMISSION_DENIED


def test_off_lets_everything_through_and_identifies_nobody() -> None:
    p = policy(enabled=False)
    p.authorize(NOBODY, POOL + "DeletePool")
    p.authorize(A, NODE + "RegisterNode", compute.RegisterNodeRequest(hostname="host-b"))
    assert p.identify(cert=None, authorization="Bearer x").reason == "auth off"


def test_identify_prefers_the_certificate_then_the_token(tmp_path: Path) -> None:
    tokens = tmp_path / "t.toml"
    tokens.write_text('[[operator]]\nname = "ci"\nrole = "viewer"\ntoken = "' + "t" * 20 + '"\n')
    p = auth.Policy(enabled=True, hostname_of=NODES.get, node_of=lambda h: None, tokens_file=tokens)
    cert = {
        "subject": ((("organizationName", "quantix:nodes"),),),
        "subjectAltName": (("DNS", "h"),),
    }
    assert p.identify(cert=cert, authorization="Bearer " + "t" * 20) == identity.node("h")
    assert p.identify(cert=None, authorization="Bearer " + "t" * 20).name == "ci"
    assert "Bearer" in p.identify(cert=None, authorization="Token x").reason
    assert p.identify(cert=None, authorization=None).reason == "no client certificate"


def test_token_file_is_reread_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.toml"
    old, new = "o" * 20, "n" * 20
    path.write_text(f'[[operator]]\nname = "a"\nrole = "admin"\ntoken = "{old}"\n')
    clock = [1000.0]
    p = auth.Policy(
        enabled=True,
        hostname_of=NODES.get,
        node_of=lambda h: None,
        tokens_file=path,
        monotonic=lambda: clock[0],
    )
    assert p.identify(cert=None, authorization=f"Bearer {old}").is_operator
    path.write_text(f'[[operator]]\nname = "bee"\nrole = "admin"\ntoken = "{new}"\n')
    clock[0] += 2
    assert p.identify(cert=None, authorization=f"Bearer {new}").name == "bee"
    assert not p.identify(cert=None, authorization=f"Bearer {old}").is_operator
    path.write_text("broken [")
    clock[0] += 2
    with caplog.at_level(logging.ERROR, logger="qvdc.api.auth"):
        assert p.identify(cert=None, authorization=f"Bearer {new}").name == "bee"
    assert "previous tokens stay in use" in caplog.text


def test_a_bad_token_file_fails_the_start(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[[bootstrap]]\nid = "x"\ntoken = "' + "x" * 20 + '"\n')
    with pytest.raises(ValueError, match="expires: required"):
        auth.Policy(enabled=True, hostname_of=NODES.get, node_of=lambda h: None, tokens_file=path)


def test_audit_names_the_bound_caller(caplog: pytest.LogCaptureFixture) -> None:
    def run() -> None:
        auth.bind(auth.Caller(ADMIN, "10.0.0.7:5000"))
        auth.audit("DeletePool", target="pool p1", detail="force")

    with caplog.at_level(logging.INFO, logger="qvdc.audit"):
        contextvars.copy_context().run(run)
    assert caplog.records[-1].getMessage() == (
        "audit: operator ada (admin, certificate) from 10.0.0.7:5000: DeletePool pool p1 (force)"
    )
    assert auth.caller() is None  # bound in that context only
