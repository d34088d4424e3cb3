"""The Connect face's gate, alone: the policy's answers, and what a credential-less agent
from a listed network may do (only as the node at its own address)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from grpclib.const import Status

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.api import auth
from qvdc.domain.model import NodeId, NodeRecord
from qvdc.http import gate
from qvdc.security import identity

NODES = "/limiquantix.compute.v1.NodeService/"
POOLS = "/limiquantix.storage.v1.StoragePoolService/"


@dataclass
class View:
    """The few lookups the gate makes of the replica's view."""

    records: dict[str, NodeRecord] = field(default_factory=dict)
    assigned: dict[str, set[str]] = field(default_factory=dict)

    def add(self, node_id: str, hostname: str, ip: str) -> None:
        self.records[node_id] = NodeRecord(
            id=NodeId(node_id), hostname=hostname, management_ip=ip, labels={}, registered_at=0.0
        )

    def node(self, node_id: str) -> NodeRecord | None:
        return self.records.get(node_id)

    def has_node(self, node_id: str) -> bool:
        return node_id in self.records

    def node_id_by_hostname(self, hostname: str) -> str | None:
        return next((r.id for r in self.records.values() if r.hostname == hostname), None)

    def nodes_assigned_to(self, pool_id: str) -> frozenset[str]:
        return frozenset(self.assigned.get(pool_id, set()))


@pytest.fixture
def view() -> View:
    v = View()
    v.add("n-a", "host-a", "10.0.0.5")
    v.add("n-b", "host-b", "10.0.0.6")
    v.assigned["pool-a"] = {"n-a"}
    return v


def make_gate(view: View, *, networks: tuple[str, ...] = (), secure: bool = True) -> gate.Gate:
    policy = auth.Policy(
        enabled=True,
        hostname_of=lambda n: view.records[n].hostname if n in view.records else None,
        node_of=view.node_id_by_hostname,
    )
    return gate.Gate(
        policy,
        view=view,  # type: ignore[arg-type]
        secure=secure,
        agent_networks=gate.parse_networks(networks),
    )


def denied(check: object, status: Status = Status.PERMISSION_DENIED) -> str:
    with pytest.raises(auth.Denied) as info:
        check()  # type: ignore[operator]
    assert info.value.status is status
    return info.value.message or ""


def bound() -> identity.Identity:
    caller = auth.caller()
    assert caller is not None
    return caller.identity


def test_anonymous_callers_outside_the_networks_are_unauthenticated(view: View) -> None:
    g = make_gate(view, networks=("10.0.0.0/24",))
    register = compute.RegisterNodeRequest(hostname="host-c", management_ip="192.168.1.9")
    message = denied(
        lambda: g(NODES + "RegisterNode", register, authorization=None, client="192.168.1.9:4000"),
        Status.UNAUTHENTICATED,
    )
    assert "RegisterNode needs a node certificate" in message


def test_an_agent_registers_and_reports_only_as_the_node_at_its_address(view: View) -> None:
    g = make_gate(view, networks=("10.0.0.0/24",))
    own = compute.RegisterNodeRequest(hostname="host-a", management_ip="10.0.0.5:9090")
    g(NODES + "RegisterNode", own, authorization=None, client="10.0.0.5:40000")
    assert bound() == identity.node("host-a", via="upstream agent at 10.0.0.5")

    new = compute.RegisterNodeRequest(hostname="host-new", management_ip="10.0.0.9")
    g(NODES + "RegisterNode", new, authorization=None, client="10.0.0.9:1")
    assert bound().name == "host-new"

    other_ip = compute.RegisterNodeRequest(hostname="host-x", management_ip="10.0.0.99")
    assert "registers its own address (10.0.0.5)" in denied(
        lambda: g(NODES + "RegisterNode", other_ip, authorization=None, client="10.0.0.5:1")
    )
    takeover = compute.RegisterNodeRequest(hostname="host-b", management_ip="10.0.0.5")
    assert "may not take it over" in denied(
        lambda: g(NODES + "RegisterNode", takeover, authorization=None, client="10.0.0.5:1")
    )

    g(
        NODES + "UpdateHeartbeat",
        compute.UpdateHeartbeatRequest(node_id="n-a"),
        authorization=None,
        client="10.0.0.5:2",
    )
    assert bound().name == "host-a"
    assert "reports only for itself" in denied(
        lambda: g(
            NODES + "UpdateHeartbeat",
            compute.UpdateHeartbeatRequest(node_id="n-b"),
            authorization=None,
            client="10.0.0.5:2",
        )
    )


def test_an_agent_reads_only_its_assigned_pools_and_changes_nothing(view: View) -> None:
    g = make_gate(view, networks=("10.0.0.0/24",))
    g(
        POOLS + "GetPool",
        storage.GetPoolRequest(id="pool-a"),
        authorization=None,
        client="10.0.0.5:3",
    )
    assert "not assigned to a node at 10.0.0.6" in denied(
        lambda: g(
            POOLS + "GetPool",
            storage.GetPoolRequest(id="pool-a"),
            authorization=None,
            client="10.0.0.6:3",
        )
    )
    for rpc, request in (
        ("ListPools", storage.ListPoolsRequest()),
        ("DeletePool", storage.DeletePoolRequest(id="pool-a")),
        ("EnableNode", compute.EnableNodeRequest(id="n-a")),
    ):
        denied(
            lambda rpc=rpc, request=request: g(
                POOLS + rpc, request, authorization=None, client="10.0.0.5:3"
            ),
            Status.UNAUTHENTICATED,
        )


def test_no_networks_no_agents_and_plain_http_refuses_tokens(view: View) -> None:
    g = make_gate(view)
    own = compute.RegisterNodeRequest(hostname="host-a", management_ip="10.0.0.5")
    denied(
        lambda: g(NODES + "RegisterNode", own, authorization=None, client="10.0.0.5:1"),
        Status.UNAUTHENTICATED,
    )
    plain = make_gate(view, networks=("10.0.0.0/24",), secure=False)
    assert "not accepted over plain HTTP" in denied(
        lambda: plain(
            POOLS + "ListPools",
            storage.ListPoolsRequest(),
            authorization="Bearer abcdefghijklmnopqrstuvwxyz",
            client="10.0.0.5:1",
        ),
        Status.UNAUTHENTICATED,
    )
    plain(NODES + "RegisterNode", own, authorization=None, client="10.0.0.5:1")  # agents still


def test_networks_are_parsed_strictly() -> None:
    assert [str(n) for n in gate.parse_networks(["10.1.2.3", "fd00::/64", "10.0.0.7/8"])] == [
        "10.1.2.3/32",
        "fd00::/64",
        "10.0.0.0/8",
    ]
    with pytest.raises(ValueError, match="not a network or address: 'ten'"):
        gate.parse_networks(["ten"])
