"""Authorization: which identity may call which RPC, for which node (docs/security.md).

The policy is a function of (identity, RPC path, request), so every face of the
controller asks it the same question. Three kinds of RPC:

* **node RPCs** (``RegisterNode``, ``UpdateHeartbeat``, ``StreamHeartbeat``,
  ``SyncFullState``, ``NotifyStorageChange``, and the VM ones refused as out of scope) need a node
  certificate, and a node may only act for itself: ``hostname`` (registration) or
  ``node_id`` (heartbeats) must be its own, as Kubernetes' NodeRestriction lets a kubelet
  write only its own Node. A node id this replica does not know passes the check and is
  answered NOT_FOUND by the handler, as before (nothing is written for it). A bootstrap
  token may call ``RegisterNode`` only, for a hostname that is not registered yet (and,
  if the token lists hostnames, one of those): it can add a node, never take one over.
* **read RPCs** (``Get*``, ``List*``, ``Watch*``, ``Stream*``) need an operator, either role.
* the gRPC health service is open to every caller, reflection to every operator;
* **every other RPC** changes state and needs an operator with role ``admin``: a
  ``viewer`` is refused, and so is a node certificate.

A caller with no identity (no certificate, an unknown or expired token) is answered
UNAUTHENTICATED; a known identity asking beyond its rights PERMISSION_DENIED. The
message names the field compared and both sides, and nothing is written.

Where the checks run. The RPC-level check runs before the request is read: a grpclib
``RecvRequest`` listener (:func:`install`) reads the caller once per call (the peer
certificate, the ``authorization`` metadata), keeps it in a context variable for the
handler and audit lines (:func:`caller`), and refuses the call. The request-level check
(whose node) needs the body, so the node handlers call :meth:`Policy.check_request`; a
heartbeat stream calls it once, on its first message (later messages may not change the
node id), so a heartbeat costs nothing here.

``auth.mode = "off"`` (plain-text mode) identifies nobody and lets every call through;
the controller logs that as a WARNING at start. Audit lines (:func:`audit`) are written
in both modes: one INFO line per operator change, on the ``qvdc.audit`` logger, naming
who (identity and peer address), what and the target.
"""

from __future__ import annotations

import contextvars
import enum
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpclib.events
import grpclib.server
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from qvdc.domain import limits
from qvdc.engines.view import ClusterView
from qvdc.security import identity
from qvdc.security.identity import Identity, Kind
from qvdc.transport import errors as transport_errors

log = logging.getLogger(__name__)
audit_log = logging.getLogger("qvdc.audit")

_refusals = transport_errors.RefusalLog(log)


class Access(enum.Enum):
    PUBLIC = "public"
    NODE = "node"
    READ = "read"
    WRITE = "write"


#: Node RPCs and the request field naming the node each acts for.
NODE_RPCS: Mapping[str, str] = {
    "RegisterNode": "hostname",
    "UpdateHeartbeat": "node_id",
    "StreamHeartbeat": "node_id",
    "SyncFullState": "node_id",
    "NotifyStorageChange": "node_id",
    "SyncNodeVMs": "node_id",
    "NotifyVMChange": "node_id",
}
#: Reads; ``Stream*`` are the read streams (StreamEvents, StreamNodeMetrics): the
#: heartbeat stream is a node RPC above, matched first.
READ_PREFIXES = ("Get", "List", "Watch", "Stream")
#: Services open to every caller (liveness probes) and to every operator (reflection).
PUBLIC_SERVICES = ("/grpc.health.v1.Health/",)
READ_SERVICES = ("/grpc.reflection.",)


def method_of(rpc: str) -> str:
    """``RegisterNode`` of ``/limiquantix.compute.v1.NodeService/RegisterNode``."""
    return rpc.rpartition("/")[2]


def access(rpc: str) -> Access:
    """What ``rpc`` (a full path or a bare method name) needs; an RPC this table does
    not know is treated as a change (needs ``admin``)."""
    if rpc.startswith(PUBLIC_SERVICES):
        return Access.PUBLIC
    if rpc.startswith(READ_SERVICES):
        return Access.READ
    method = method_of(rpc)
    if method in NODE_RPCS:
        return Access.NODE
    if method.startswith(READ_PREFIXES):
        return Access.READ
    return Access.WRITE


class Denied(GRPCError):
    """A refused call: PERMISSION_DENIED (a known identity beyond its rights) or
    UNAUTHENTICATED (no identity). A ``GRPCError``, so grpclib answers it as is."""

    def __init__(self, message: str, *, status: Status = Status.PERMISSION_DENIED) -> None:
        super().__init__(status, message)


@dataclass(frozen=True, slots=True)
class Caller:
    """The identity of the call in progress and the address it came from."""

    identity: Identity
    peer: str = ""

    def describe(self) -> str:
        who = self.identity.describe()
        return f"{who} from {self.peer}" if self.peer else who


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("qvdc_caller", default=None)


def caller() -> Caller | None:
    """The caller of the RPC this task serves (None outside an RPC)."""
    return _caller.get()


def bind(who: Caller) -> None:
    """Make ``who`` the caller of the RPC this task serves (each face calls this, or
    :func:`enter`, before the handler)."""
    _caller.set(who)


class Policy:
    """The rules of the module docstring. ``hostname_of(node_id)`` and
    ``node_of(hostname)`` look the registry up (the replica's view); ``tokens`` are
    the configured bearer tokens, re-read from ``tokens_file`` when it changes."""

    def __init__(
        self,
        *,
        enabled: bool,
        hostname_of: Callable[[str], str | None],
        node_of: Callable[[str], str | None],
        tokens: identity.Tokens | None = None,
        tokens_file: Path | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self._hostname_of = hostname_of
        self._node_of = node_of
        self._wall = wall
        self._monotonic = monotonic
        self._tokens_file = tokens_file
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = float("-inf")
        if tokens is None:
            tokens = identity.Tokens()
            if tokens_file is not None:
                self._stamp = _stamp(tokens_file)
                tokens = identity.load_tokens(tokens_file)  # at start: a bad file is fatal
        self.tokens = tokens

    # --- who --------------------------------------------------------------------------

    def _current_tokens(self) -> identity.Tokens:
        """The tokens, re-read if the file changed (looked at once a second at most)."""
        path = self._tokens_file
        now = self._monotonic()
        if path is None or now - self._checked_at < 1.0:
            return self.tokens
        self._checked_at = now
        stamp = _stamp(path)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self.tokens = identity.load_tokens(path)
            except ValueError as exc:
                log.error("token file not reloaded, the previous tokens stay in use: %s", exc)
            else:
                log.info("token file %s reloaded: %d tokens", path, len(self.tokens))
        return self.tokens

    def identify(self, *, cert: Mapping[str, Any] | None, authorization: str | None) -> Identity:
        """The caller named by its verified certificate, else by its bearer token."""
        if not self.enabled:
            return identity.anonymous("auth off")
        who = identity.from_certificate(cert)
        if who.kind is not Kind.ANONYMOUS:
            return who
        try:
            token = identity.bearer(authorization)
        except ValueError as exc:
            return identity.anonymous(str(exc))
        if token is None:
            return who
        return self._current_tokens().resolve(token, now=self._wall())

    # --- may it -----------------------------------------------------------------------

    def authorize(self, who: Identity, rpc: str, request: Any = None) -> None:
        """Raise :class:`Denied` unless ``who`` may call ``rpc``; with ``request``, also
        check the node the request names (:meth:`check_request`)."""
        if not self.enabled:
            return
        method = method_of(rpc)
        need = access(rpc)
        if need is Access.PUBLIC:
            return
        if need is Access.NODE:
            if not (who.is_node or (who.kind is Kind.BOOTSTRAP and method == "RegisterNode")):
                _deny(who, method, f"{method} needs a node certificate; the caller is {_of(who)}")
        elif not who.is_operator:
            _deny(who, method, f"{method} needs an operator; the caller is {_of(who)}")
        elif need is Access.WRITE and who.role != "admin":
            _deny(
                who,
                method,
                f"{method} changes state and needs role admin; {_of(who)} may only "
                "Get, List and Watch",
            )
        if request is not None and need is Access.NODE:
            self.check_request(who, method, request)

    def check_request(self, who: Identity, rpc: str, request: Any) -> None:
        """A node RPC's request must name the caller's own node (module docstring)."""
        if not self.enabled:
            return
        method = method_of(rpc)
        if NODE_RPCS.get(method) == "hostname":
            self.check_hostname(who, str(request.hostname), method=method)
        else:
            self.check_node_id(who, str(request.node_id), method=method)

    def check_hostname(self, who: Identity, hostname: str, *, method: str) -> None:
        if not self.enabled:
            return
        if who.kind is Kind.BOOTSTRAP:
            if who.hostnames and hostname not in who.hostnames:
                _deny(
                    who,
                    method,
                    f"hostname: bootstrap token {who.name} may not register "
                    f"{limits.quote(hostname)}",
                )
            if self._node_of(hostname) is not None:
                deny_reregistration(who, hostname, method=method)
            return
        if not who.is_node:
            _deny(who, method, f"{method} needs a node certificate; the caller is {_of(who)}")
        if hostname != who.name:
            _deny(
                who,
                method,
                f"hostname: node {who.name} may only register itself, not {limits.quote(hostname)}",
            )

    def check_node_id(self, who: Identity, node_id: str, *, method: str) -> None:
        if not self.enabled:
            return
        if not who.is_node:
            _deny(who, method, f"{method} needs a node certificate; the caller is {_of(who)}")
        hostname = self._hostname_of(node_id)
        if hostname is not None and hostname != who.name:
            _deny(
                who,
                method,
                f"node_id: {limits.quote(node_id)} is node {hostname}; node {who.name} may "
                "only act for itself",
            )


def for_view(view: ClusterView, *, enabled: bool, tokens_file: Path | None = None) -> Policy:
    """The replica's policy: nodes looked up in its view."""

    def hostname_of(node_id: str) -> str | None:
        record = view.node(node_id) if view.has_node(node_id) else None
        return record.hostname if record is not None else None

    return Policy(
        enabled=enabled,
        hostname_of=hostname_of,
        node_of=view.node_id_by_hostname,
        tokens_file=tokens_file,
    )


def deny_reregistration(who: Identity, hostname: str, *, method: str = "RegisterNode") -> None:
    """A bootstrap token may not re-register a hostname that already exists."""
    _deny(
        who,
        method,
        f"hostname: {limits.quote(hostname)} is already registered; bootstrap token "
        f"{who.name} registers new nodes only, re-registration needs the node's certificate",
    )


def _of(who: Identity) -> str:
    return who.describe()


def _deny(who: Identity, method: str, message: str) -> None:
    status = Status.UNAUTHENTICATED if who.kind is Kind.ANONYMOUS else Status.PERMISSION_DENIED
    _refusals.refused(method, status.name, message)
    raise Denied(message, status=status)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


# --- faces --------------------------------------------------------------------------


def enter(
    policy: Policy,
    *,
    rpc: str,
    cert: Mapping[str, Any] | None,
    authorization: str | None,
    peer: str,
) -> Caller:
    """Identify the caller of ``rpc``, bind it (:func:`caller`) and authorize the call:
    what every face does before a handler runs. Raises :class:`Denied`."""
    who = Caller(policy.identify(cert=cert, authorization=authorization), peer)
    bind(who)
    policy.authorize(who.identity, rpc)
    return who


def check_request(policy: Policy | None, rpc: str, request: Any) -> Identity | None:
    """The node handlers' check: the request must name the caller's node. Returns the
    caller's identity (None with no policy or auth off)."""
    if policy is None or not policy.enabled:
        return None
    bound = _caller.get()
    who = bound.identity if bound is not None else identity.anonymous("no caller bound")
    policy.check_request(who, rpc, request)
    return who


def _peer_address(peer: Any) -> str:
    addr = peer.addr() if peer is not None else None
    if not addr:
        return ""
    return f"{addr[0]}:{addr[1]}"


def install(server: grpclib.server.Server, policy: Policy) -> None:
    """Check every call on ``server`` with ``policy`` before its handler runs."""

    async def on_request(event: grpclib.events.RecvRequest) -> None:
        peer = event.peer
        authorization = event.metadata.get("authorization")
        enter(
            policy,
            rpc=event.method_name,
            cert=peer.cert() if policy.enabled else None,
            authorization=authorization if isinstance(authorization, str) else None,
            peer=_peer_address(peer),
        )

    grpclib.events.listen(server, grpclib.events.RecvRequest, on_request)


def announce(policy: Policy) -> None:
    """The start-up line: auth off is a WARNING (anyone can act as any node)."""
    if policy.enabled:
        log.info(
            "authorization on: node certificates act for their own node, operators by role; "
            "%d bearer tokens configured",
            len(policy.tokens),
        )
    else:
        log.warning(
            "AUTHORIZATION OFF (auth.mode off): every caller may act as any node or operator; "
            "use only on a trusted network"
        )


def audit(action: str, *, target: str, detail: str = "") -> None:
    """One INFO line for an operator change: who (the bound caller), what, on what."""
    bound = _caller.get()
    who = bound.describe() if bound is not None else "in-process caller"
    audit_log.info("audit: %s: %s %s%s", who, action, target, f" ({detail})" if detail else "")
