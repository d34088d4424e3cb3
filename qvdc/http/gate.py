"""Who may call what on the Connect face: the gRPC face's policy, and upstream's agents.

Every Connect call asks the same policy as a gRPC call (:mod:`qvdc.api.auth`): the caller
is identified by the client certificate its TLS connection presented (over HTTPS the port
asks for one from ``tls.client_ca`` without requiring it: :mod:`qvdc.http.tls`), else by
its bearer token (``Authorization: Bearer ...``), bound for the handler, and the RPC
authorized before the handler runs; the node handlers then check the node the request
names, as on gRPC. So a node or operator certificate means on the HTTP port what it
means on the gRPC port. Over plain
HTTP (``http.tls`` off) with authorization on, a bearer token is refused UNAUTHENTICATED
rather than used: it crossed the network readable.

Upstream's agent has neither a certificate nor a token (a caller with either is never
taken for one). It is admitted only from the
networks of ``http.unauthenticated_node_networks`` (empty by default; the replica logs a
WARNING at start when set), and only as the node at its own address: a caller from
address A without credentials

* may ``RegisterNode`` only with ``management_ip`` A, and not a hostname already
  registered at another address;
* may call a node RPC naming a node (``UpdateHeartbeat``, and those upstream's agent
  posts once served) only for a node registered with management IP A;
* may ``GetPool`` only a pool assigned to a node registered with management IP A (the
  agent fetches the definitions of its assigned pools);

and nothing else: any other RPC is UNAUTHENTICATED as for any anonymous caller. The
source address is the TCP peer's (uvicorn's proxy headers are off), so a caller outside
the listed networks cannot claim to be inside them.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpclib.const import Status

from qvdc.api import auth
from qvdc.domain import errors, limits, validation
from qvdc.engines.view import ClusterView
from qvdc.security import identity

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What an unauthenticated agent may call besides the node RPCs (module docstring).
AGENT_READS = frozenset({"GetPool"})


def parse_networks(texts: Sequence[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``192.168.1.7`` (one address), ``fd00::/64``; ValueError naming a bad one."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not a network or address: {limits.quote(text)}") from None
    return tuple(networks)


class Gate:
    """Identify and authorize one Connect call (module docstring); raises ``auth.Denied``."""

    def __init__(
        self,
        policy: auth.Policy,
        *,
        view: ClusterView,
        secure: bool,
        agent_networks: Sequence[Network] = (),
        certificate_of: Callable[[str, str], Mapping[str, Any] | None] | None = None,
    ) -> None:
        self._policy = policy
        self._view = view
        self._secure = secure
        self._networks = tuple(agent_networks)
        #: ``(host, port)`` -> the verified certificate of that open TLS connection
        #: (:meth:`qvdc.http.tls.PeerCertificates.of`); None: none are read.
        self._certificate_of = certificate_of

    def announce(self) -> None:
        """The start-up line for unauthenticated agents (a WARNING: no credential at all)."""
        if self._networks and self._policy.enabled:
            log.warning(
                "UPSTREAM AGENTS WITHOUT CREDENTIALS are admitted on the Connect port from %s: "
                "each may register and report only as the node whose management IP is its "
                "own address, and read only its assigned pools",
                ", ".join(str(n) for n in self._networks),
            )

    def __call__(
        self, rpc: str, request: Any, *, authorization: str | None, client: str | None
    ) -> None:
        host, port = _split(client)
        peer = f"{host}:{port}" if host else ""
        cert = None
        if self._certificate_of is not None and self._policy.enabled and host:
            cert = self._certificate_of(host, port)
        if authorization is not None and not self._secure and self._policy.enabled:
            raise auth.Denied(
                "bearer tokens are not accepted over plain HTTP (http.tls off): they would "
                "cross the network readable; use HTTPS or the gRPC port",
                status=Status.UNAUTHENTICATED,
            )
        if (
            self._networks
            and self._policy.enabled
            and authorization is None
            and cert is None
            and host
            and _within(host, self._networks)
        ):
            method = auth.method_of(rpc)
            if auth.access(rpc) is auth.Access.NODE or method in AGENT_READS:
                self._admit_agent(method, request, address=host, peer=peer)
                return
        auth.enter(self._policy, rpc=rpc, cert=cert, authorization=authorization, peer=peer)

    def _admit_agent(self, method: str, request: Any, *, address: str, peer: str) -> None:
        view = self._view
        via = f"upstream agent at {address}"
        if method == "RegisterNode":
            try:
                ip = validation.normalize_management_ip(request.management_ip)
            except errors.InvalidArgument:
                ip = ""  # the handler names the field; this caller is refused either way
            if ip != address:
                _refuse(
                    f"management_ip: an agent without credentials registers its own address "
                    f"({address}), not {limits.quote(request.management_ip)}"
                )
            existing = view.node_id_by_hostname(request.hostname)
            record = view.node(existing) if existing is not None else None
            if record is not None and record.management_ip != address:
                _refuse(
                    f"hostname: {limits.quote(request.hostname)} is registered at "
                    f"{record.management_ip}; an agent at {address} may not take it over"
                )
            name = request.hostname
        elif method in AGENT_READS:
            pool_id = str(request.id)
            hosts = {
                record.management_ip
                for node_id in view.nodes_assigned_to(pool_id)
                if (record := view.node(node_id)) is not None
            }
            if address not in hosts:
                _refuse(f"id: pool {limits.quote(pool_id)} is not assigned to a node at {address}")
            name = ""
        else:
            node_id = str(request.node_id)
            record = view.node(node_id) if view.has_node(node_id) else None
            if record is not None and record.management_ip != address:
                _refuse(
                    f"node_id: {limits.quote(node_id)} is the node at {record.management_ip}; "
                    f"an agent at {address} reports only for itself"
                )
            name = record.hostname if record is not None else ""  # unknown: NOT_FOUND
        auth.bind(auth.Caller(identity.node(name, via=via), peer))


def _refuse(message: str) -> None:
    raise auth.Denied(message, status=Status.PERMISSION_DENIED)


def _split(client: str | None) -> tuple[str, str]:
    if not client:
        return "", ""
    host, _, port = client.rpartition(":")
    return host.strip("[]"), port


def _within(host: str, networks: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)
