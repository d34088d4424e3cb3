"""Node daemon settings: one frozen dataclass, validated when it is built.

Every field states its unit, default and the reason for the default. The
settings object is passed explicitly (keyword arguments) to whatever needs it;
nothing reads module globals or the environment behind the caller's back.

Cross-field rules (checked in :meth:`NodeSettings.validate`), and why they
are no stricter:

* ``rpc_timeout <= 3 x heartbeat_interval + 10 s`` (the controller's default
  liveness grace): one stuck call must not outlast the grace and make the
  node look dead. ``rpc_timeout < heartbeat_interval`` is *not* required:
  demos and tests run sub-second intervals with the default 5 s timeout.
* ``probe_timeout <= heartbeat_interval + rpc_timeout``: a probe round must
  fit between two heartbeats with some slack. ``probe_timeout <= probe
  interval`` would be too strict for short demo intervals; rounds never
  overlap anyway (the next one starts after the previous one ended).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qvdc.kits import materiality
from storage_backends import configs


class SettingsError(ValueError):
    """A setting is out of range or inconsistent with another one."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise SettingsError(message)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6addr]:port``) into ``(host, port)``.

    Raises :class:`SettingsError` naming the endpoint when it is malformed.
    """
    host, sep, port_text = endpoint.strip().rpartition(":")
    _require(bool(sep) and bool(host), f"controller endpoint must be host:port: {endpoint!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SettingsError(f"bad IPv6 address in controller endpoint: {endpoint!r}") from None
    else:
        _require(":" not in host, f"write IPv6 controller endpoints as [addr]:port: {endpoint!r}")
    _require(
        port_text.isdigit() and 0 < int(port_text) <= 65535,
        f"controller endpoint port must be in 1..65535: {endpoint!r}",
    )
    return host, int(port_text)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6addr]:port`` (port 0: any free one) -> ``(host, port)``.

    Raises :class:`SettingsError` naming the text when it is malformed.
    """
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    _require(
        bool(sep) and bool(host) and port.isdigit() and int(port) <= 65535,
        f"metrics_listen must be host:port with a port in 0..65535: {text[:64]!r}",
    )
    return host, int(port)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Everything the node daemon can be told. Defaults suit a production host."""

    controllers: tuple[str, ...]
    """``host:port`` of every controller replica, tried in order with failover.
    Required: a node without a controller has nothing to report to."""

    hostname: str = field(default_factory=socket.gethostname)
    """The node's identity at the controller (default: this host's name)."""

    management_ip: str = "127.0.0.1"
    """``ip`` or ``ip:port`` the controller and operators reach this host at."""

    labels: Mapping[str, str] = field(default_factory=dict)
    """Free-form ``key=value`` labels sent at registration (rack, zone, ...)."""

    state_dir: Path = Path("/var/lib/quantix-node")
    """Where the node keeps ``node-id`` and ``assignments.json``, so a restarted
    host knows who it is and re-attaches its pools while the controller is away."""

    pools_root: Path = Path("/var/lib/quantix-node/pools")
    """Directory local_dir pools are created in and NFS exports mounted under
    (default: ``<state_dir>/pools`` on the command line)."""

    libvirt_uri: str = "qemu:///system"
    """libvirt connection for host facts: the host's own hypervisor. Demos and tests pass
    ``test:///default`` (libvirt's built-in test driver, no daemon, fixed fake facts)."""

    heartbeat_interval: float = 30.0
    """Seconds between heartbeats until the controller says otherwise
    (``heartbeat_interval_secs`` in any response wins). 30 s as upstream."""

    heartbeat_jitter: float = 0.1
    """Each interval is shortened by a random fraction up to this (10 %), so
    hosts restarted together do not heartbeat in lock-step; never lengthened,
    so the controller's grace arithmetic holds."""

    rpc_timeout: float = 5.0
    """Seconds one RPC (register, one heartbeat's acknowledgement, one send)
    may take before the controller counts as unreachable."""

    probe_timeout: float = 2.0
    """Seconds one pool probe may take; past it the pool is reported
    ``ERROR: probe timed out`` and the heartbeat goes out regardless."""

    probe_interval: float | None = None
    """Seconds between probe rounds (default: min(heartbeat interval, 10 s)).
    Probing more often than heartbeating detects a health change early, which
    then triggers an immediate extra heartbeat."""

    attach_timeout: float = 60.0
    """Seconds one attach or detach may take (mounts can be slow)."""

    attach_backoff_initial: float = 1.0
    """Seconds before the first retry of a failed attach; doubles per failure."""

    attach_backoff_max: float = 60.0
    """Cap of the per-pool attach retry delay."""

    resync_interval: float = 60.0
    """Seconds between reconciliation passes when nothing changed, to repair
    pools that vanished under us (an unmounted export, a removed directory)."""

    reconnect_initial: float = 0.1
    """First delay (s) before reconnecting / re-registering after a failure."""

    reconnect_max: float = 7.0
    """Cap (s) of the reconnect delay (doubling from ``reconnect_initial``)."""

    immediate_retries: int = 5
    """Consecutive failures after which the gRPC channel is thrown away and
    rebuilt (the lease controller's ``on_repeated_failure`` hook)."""

    hostfacts_timeout: float = 5.0
    """Seconds a libvirt host-facts query may take before zeros are reported."""

    hostfacts_interval: float = 60.0
    """Seconds between host-facts refreshes (VM count, free memory)."""

    material_fraction: float = materiality.DEFAULT_FRACTION
    """A capacity move above this fraction of the total is material (1 %);
    must match the controller's rule, which is why it comes from qvdc.kits."""

    material_min_bytes: int = materiality.DEFAULT_MIN_BYTES
    """... or above this many bytes (1 GiB), whichever is smaller."""

    backend_options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Extra constructor options per backend kind, as strings
    (``{"nfs": {"mount_command": "mount", "nfs_port": "2049"}}``): see
    ``node.app.backend_options`` for how each is converted."""

    tls_ca: Path | None = None
    """CA certificate (PEM) the controller's certificate must be signed by. Set: the
    connection is TLS. Required unless ``insecure``."""

    tls_cert: Path | None = None
    """This node's certificate (PEM; its SAN DNS name is its hostname), presented to the
    controller. Read again for every new connection, so a rotated one is used from the
    next reconnection on."""

    tls_key: Path | None = None
    """The private key (PEM) of ``tls_cert``."""

    insecure: bool = False
    """Talk to the controller in plain text (no ``tls_*``): anyone on the path can read
    and forge this node's reports. Logged as a WARNING at start."""

    bootstrap_token_file: Path | None = None
    """A file holding a bootstrap token (docs/security.md, "Bootstrap"), for a host that
    has no certificate yet: while no certificate is at ``tls_cert``/``tls_key`` the node
    registers with ``authorization: Bearer <token>``, then waits for the certificate
    (heartbeats need it) and uses it from the moment both files are there. Needs
    ``tls_ca``, ``tls_cert`` and ``tls_key`` (the paths the certificate will be put at).
    Read only while there is no certificate, so it may be deleted afterwards."""

    metrics_listen: str | None = None
    """``host:port`` of the Prometheus ``GET /metrics`` listener (port 0: any free one).
    Default: none, no listener. Unauthenticated (it holds no secret): bind it to loopback
    or a management network (docs/operations.md, "Metrics")."""

    def __post_init__(self) -> None:
        # Freeze the containers too: a frozen dataclass holding a live dict
        # would still let a caller mutate "frozen" settings.
        object.__setattr__(self, "controllers", tuple(self.controllers))
        object.__setattr__(self, "labels", types.MappingProxyType(dict(self.labels)))
        object.__setattr__(
            self,
            "backend_options",
            types.MappingProxyType(
                {k: types.MappingProxyType(dict(v)) for k, v in self.backend_options.items()}
            ),
        )
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "pools_root", Path(self.pools_root))
        self.validate()

    @property
    def effective_probe_interval(self) -> float:
        """Seconds between probe rounds, with the default resolved."""
        if self.probe_interval is not None:
            return self.probe_interval
        return min(self.heartbeat_interval, 10.0)

    @property
    def tls_chosen(self) -> bool:
        """Whether TLS, or plain text explicitly, was chosen (the daemon needs one)."""
        return self.insecure or self.tls_ca is not None

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """``controllers`` parsed into ``(host, port)`` pairs."""
        return tuple(parse_endpoint(c) for c in self.controllers)

    def validate(self) -> None:
        """Check ranges and cross-field rules; raise :class:`SettingsError` naming the field."""
        _require(
            len(self.controllers) > 0, "at least one controller endpoint (host:port) is required"
        )
        for c in self.controllers:
            parse_endpoint(c)
        _require(
            len(set(self.controllers)) == len(self.controllers),
            f"controller endpoints must be distinct: {list(self.controllers)}",
        )
        _require(bool(self.hostname.strip()), "hostname must not be empty")
        _require(
            configs.is_hostname(self.hostname),
            f"hostname must be an RFC 1123 host name (the controller refuses others): "
            f"{self.hostname!r}",
        )
        _require(bool(self.management_ip.strip()), "management_ip must not be empty")
        for key in self.labels:
            _require(
                bool(key) and "=" not in key, f"label key must be non-empty without '=': {key!r}"
            )
        _require(bool(self.libvirt_uri), "libvirt_uri must not be empty")
        _require(
            0.05 <= self.heartbeat_interval <= 3600,
            f"heartbeat_interval must be in [0.05, 3600] s: {self.heartbeat_interval}",
        )
        _require(
            0 <= self.heartbeat_jitter < 1,
            f"heartbeat_jitter must be in [0, 1): {self.heartbeat_jitter}",
        )
        _require(
            0 < self.rpc_timeout <= 300, f"rpc_timeout must be in (0, 300] s: {self.rpc_timeout}"
        )
        _require(
            0 < self.probe_timeout <= 300,
            f"probe_timeout must be in (0, 300] s: {self.probe_timeout}",
        )
        _require(
            self.probe_interval is None or 0.01 <= self.probe_interval <= 3600,
            f"probe_interval must be in [0.01, 3600] s: {self.probe_interval}",
        )
        _require(
            0 < self.attach_timeout <= 3600,
            f"attach_timeout must be in (0, 3600] s: {self.attach_timeout}",
        )
        _require(
            0 < self.attach_backoff_initial <= self.attach_backoff_max,
            "need 0 < attach_backoff_initial <= attach_backoff_max",
        )
        _require(
            0 < self.resync_interval <= 86400,
            f"resync_interval must be in (0, 86400] s: {self.resync_interval}",
        )
        _require(
            0 < self.reconnect_initial <= self.reconnect_max,
            "need 0 < reconnect_initial <= reconnect_max",
        )
        _require(
            1 <= self.immediate_retries <= 100,
            f"immediate_retries must be in [1, 100]: {self.immediate_retries}",
        )
        _require(
            0 < self.hostfacts_timeout <= 300,
            f"hostfacts_timeout must be in (0, 300] s: {self.hostfacts_timeout}",
        )
        _require(
            0 < self.hostfacts_interval <= 86400,
            f"hostfacts_interval must be in (0, 86400] s: {self.hostfacts_interval}",
        )
        _require(0 <= self.material_fraction < 1, "material_fraction must be in [0, 1)")
        _require(self.material_min_bytes >= 0, "material_min_bytes must be >= 0")
        _require(
            (self.tls_cert is None) == (self.tls_key is None), "tls_cert and tls_key go together"
        )
        _require(
            self.tls_cert is None or self.tls_ca is not None,
            "tls_cert needs tls_ca (the CA of the controller's certificate)",
        )
        _require(not (self.insecure and self.tls_ca is not None), "insecure and tls_ca contradict")
        _require(
            self.bootstrap_token_file is None or (self.tls_ca is not None and not self.insecure),
            "bootstrap_token_file needs tls_ca: a token is never sent in plain text",
        )
        _require(
            self.bootstrap_token_file is None or self.tls_cert is not None,
            "bootstrap_token_file needs tls_cert and tls_key: the paths this node's "
            "certificate will be put at once it is registered (qvdcctl certs issue-node)",
        )
        if self.metrics_listen is not None:
            parse_listen(self.metrics_listen)
        # Cross-field rules (see the module docstring for why these and not stricter ones).
        grace = 3 * self.heartbeat_interval + 10
        _require(
            self.rpc_timeout <= grace,
            f"rpc_timeout ({self.rpc_timeout} s) must not exceed the controller's default grace "
            f"3 x heartbeat_interval + 10 s ({grace} s)",
        )
        _require(
            self.probe_timeout <= self.heartbeat_interval + self.rpc_timeout,
            f"probe_timeout ({self.probe_timeout} s) must not exceed heartbeat_interval + "
            f"rpc_timeout ({self.heartbeat_interval + self.rpc_timeout} s)",
        )

    def replace(self, **changes: Any) -> NodeSettings:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)
