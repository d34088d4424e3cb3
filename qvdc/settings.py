"""Controller settings: frozen dataclasses grouped by concern, validated at construction.

Every field says its unit, default and why. Settings are passed explicitly as
keyword arguments; there are no module globals.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qvdc.domain.limits import Limits


class SettingsError(ValueError):
    """A setting is out of range or inconsistent with another one."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise SettingsError(message)


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = ()
    """``host:port`` of etcd members. Empty: start an embedded etcd child process."""

    prefix: str = "/quantix/"
    """Key prefix of everything QvDC stores; lets several clusters share one etcd."""

    timeout: float = 5.0
    """Seconds allowed for one etcd request before it counts as failed."""

    embedded_data_dir: Path | None = None
    """Data directory of the embedded etcd (default ``<state_dir>/etcd``)."""

    embedded_quota_bytes: int = 2 * 1024**3
    """Backend quota of the embedded etcd (``--quota-backend-bytes``), 2 GiB."""

    embedded_compaction_retention: str = "1000"
    """Revisions kept by the embedded etcd's revision auto-compaction."""

    tls_ca: Path | None = None
    """CA certificate (PEM) the etcd servers' certificates are checked against. Set: the
    connection is TLS; unset: plain text (the embedded etcd listens on loopback only)."""

    tls_cert: Path | None = None
    """Client certificate (PEM) presented to etcd (its ``--client-cert-auth``); needs
    ``tls_key`` and ``tls_ca``. Read again whenever a connection is opened."""

    tls_key: Path | None = None
    """Private key (PEM) of ``tls_cert``."""

    user: str = ""
    """etcd user to authenticate as (etcd's ``auth enable``); needs ``password_file``."""

    password_file: Path | None = None
    """File holding that user's password (one line), read whenever a connection is
    opened. A file rather than a flag: command lines are visible to every local user."""

    def __post_init__(self) -> None:
        _require(
            self.prefix.startswith("/") and self.prefix.endswith("/"),
            f"etcd prefix must start and end with '/': {self.prefix!r}",
        )
        _require(0 < self.timeout <= 60, f"etcd timeout must be in (0, 60] s: {self.timeout}")
        for ep in self.endpoints:
            host, _, port = ep.rpartition(":")
            _require(bool(host) and port.isdigit(), f"etcd endpoint must be host:port: {ep!r}")
        _require(
            (self.tls_cert is None) == (self.tls_key is None),
            "etcd.tls_cert and etcd.tls_key go together",
        )
        _require(
            self.tls_cert is None or self.tls_ca is not None,
            "etcd.tls_cert needs etcd.tls_ca (the CA of etcd's server certificate)",
        )
        _require(
            bool(self.user) == (self.password_file is not None),
            "etcd.user and etcd.password_file go together",
        )
        _require(
            bool(self.endpoints) or (self.tls_ca is None and not self.user),
            "etcd.tls_* and etcd.user are for an external etcd (etcd.endpoints); the embedded "
            "one listens in plain text on loopback",
        )


@dataclass(frozen=True, slots=True)
class HeartbeatSettings:
    interval: float = 30.0
    """Seconds between a node's heartbeats, told to every node in each response."""

    material_capacity_fraction: float = 0.01
    """A capacity change counts as material above this fraction of the total (1 %)."""

    material_capacity_bytes: int = 1024**3
    """... or above this many bytes (1 GiB), whichever is smaller."""

    commit_delay: float = 0.005
    """Seconds a material host-status write waits to be group-committed with others."""

    commit_max_ops: int = 128
    """Puts per etcd transaction (etcd's default ``--max-txn-ops`` is 128)."""

    shutdown_flush_timeout: float = 10.0
    """Seconds a stopping replica may spend writing the host-status changes still
    queued (all of them, ``commit_max_ops`` per transaction, retried). What is left
    after that is logged with its count; nodes re-send full reports when they
    reconnect. 10 s leaves room within a 30 s termination grace period."""

    def __post_init__(self) -> None:
        _require(
            0.05 <= self.interval <= 3600,
            f"heartbeat interval must be in [0.05, 3600] s: {self.interval}",
        )
        _require(
            0 <= self.material_capacity_fraction < 1, "material_capacity_fraction must be in [0, 1)"
        )
        _require(self.material_capacity_bytes >= 0, "material_capacity_bytes must be >= 0")
        _require(0 <= self.commit_delay <= 1, "commit_delay must be in [0, 1] s")
        _require(1 <= self.commit_max_ops <= 128, "commit_max_ops must be in [1, 128]")
        _require(
            0 < self.shutdown_flush_timeout <= 600,
            f"shutdown_flush_timeout must be in (0, 600] s: {self.shutdown_flush_timeout}",
        )


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    grace: float | None = None
    """Seconds without a heartbeat before a node is OFFLINE and its reports stale.
    Default: 3 x heartbeat interval + 10 s (the Kubernetes node-monitor rule)."""

    startup_grace: float | None = None
    """Grace given to every node when a replica starts or takes a node over
    (it has not yet seen their heartbeats). Default: the grace."""

    check_period: float | None = None
    """Seconds between liveness passes. Default: grace / 4, at most 5 s."""

    mass_outage_fraction: float = 1.0
    """If at least this fraction of live nodes (and more than one) go silent in
    one pass, assume the controller is cut off and mark nobody (1.0 = all)."""

    def __post_init__(self) -> None:
        for name in ("grace", "startup_grace", "check_period"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"{name} must be > 0: {value}")
        _require(0 < self.mass_outage_fraction <= 1, "mass_outage_fraction must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class GrpcSettings:
    host: str = "127.0.0.1"
    """Address the gRPC server binds."""

    port: int = 7443
    """Port of the gRPC server (0 = any free port)."""

    keepalive_time: float = 30.0
    """Seconds between the server's HTTP/2 pings on each connection (idle ones too).
    With ``keepalive_timeout`` it bounds how long a half-open connection (a host
    that vanished without closing it) holds its stream and memory: about 50 s by
    default, instead of the kernel's two hours."""

    keepalive_timeout: float = 20.0
    """Seconds a ping may wait for its acknowledgement before the server closes the
    connection. Generous enough for a loaded host; grpclib clients answer pings
    without any code of theirs."""

    send_timeout: float = 30.0
    """Seconds one response may take to send. A client that stops reading fills its
    HTTP/2 window and the send waits; past this the call (or heartbeat stream) ends
    with UNAVAILABLE instead of holding the server's stream for ever."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request message, in bytes (4 MiB, gRPC's usual default), for every RPC and
    each message of the heartbeat stream. Checked against the length a message's gRPC
    prefix declares, before its body is read: a larger one ends the call with
    RESOURCE_EXHAUSTED naming the limit, and none of its body is buffered or
    acknowledged (the client may have sent at most the HTTP/2 window, 4 MiB)."""

    idle_timeout: float = 120.0
    """Seconds a connection may stay open with no call in progress before the server
    sends GOAWAY and closes it. A connection that never sends or finishes its HTTP/2
    preface has no call either, so this bounds the handshake too; one that sends
    garbage is closed at once. Node heartbeat streams keep their connections busy; an
    idle operator connection reconnects on demand."""

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, f"port out of range: {self.port}")
        _require(
            1024 <= self.max_message_bytes <= 2**31 - 1,
            f"max_message_bytes must be in [1024, 2^31-1]: {self.max_message_bytes}",
        )
        _require(
            0 < self.idle_timeout <= 86400,
            f"idle_timeout must be in (0, 86400] s: {self.idle_timeout}",
        )
        _require(
            0 < self.keepalive_time <= 7200,
            f"keepalive_time must be in (0, 7200] s: {self.keepalive_time}",
        )
        _require(
            0 < self.keepalive_timeout <= 600,
            f"keepalive_timeout must be in (0, 600] s: {self.keepalive_timeout}",
        )
        _require(
            0 < self.send_timeout <= 600,
            f"send_timeout must be in (0, 600] s: {self.send_timeout}",
        )


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The HTTP server: Connect RPCs (upstream's agent and UI), /healthz and /readyz."""

    enabled: bool = False
    """Serve HTTP (Connect, health) besides gRPC. Off unless asked for, so replicas and
    tests started without it do not contend for one fixed port (docs/decisions.md)."""

    host: str = "127.0.0.1"
    """Address the HTTP server binds."""

    port: int = 8080
    """Port of the HTTP server, upstream's control-plane port (0 = any free port)."""

    keep_alive_timeout: float = 75.0
    """Seconds an idle HTTP/1.1 connection is kept open for the next request. Longer than
    upstream's 30 s heartbeat, so an agent reuses its connection."""

    max_connections: int = 10_000
    """Connections and requests in progress past which the server answers 503."""

    close_timeout: float = 5.0
    """Seconds requests in progress get to finish when the replica stops."""

    read_timeout: float = 30.0
    """Seconds a request may take to arrive, headers and body, from its first byte; past it
    the connection is closed, so a client trickling bytes cannot hold one for ever."""

    tls: bool | None = None
    """Serve HTTPS with the gRPC port's certificate (``tls.cert``, ``tls.key``). Default: on
    exactly when the gRPC port uses TLS."""

    unauthenticated_node_networks: tuple[str, ...] = ()
    """Networks (CIDR) from which upstream's agent, which has no certificate or token, may
    register and report over Connect, each only as the node at its own address
    (docs/decisions.md); a WARNING at start when set. Empty: none."""

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, f"http port out of range: {self.port}")
        for text in self.unauthenticated_node_networks:
            try:
                ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise SettingsError(
                    f"http.unauthenticated_node_networks: not a network: {text[:64]!r}"
                ) from None
        _require(
            1 <= self.keep_alive_timeout <= 3600,
            f"keep_alive_timeout must be in [1, 3600] s: {self.keep_alive_timeout}",
        )
        _require(self.max_connections >= 1, f"max_connections must be >= 1: {self.max_connections}")
        _require(
            0 < self.close_timeout <= 600,
            f"close_timeout must be in (0, 600] s: {self.close_timeout}",
        )
        _require(
            0 < self.read_timeout <= 3600,
            f"read_timeout must be in (0, 3600] s: {self.read_timeout}",
        )


TlsMode = Literal["mtls", "tls", "off"]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """TLS of the gRPC server (docs/security.md, "Transport")."""

    mode: TlsMode | None = None
    """``mtls``: every client must present a certificate from ``client_ca``; ``tls``:
    clients may come without one (a certificate they do present must verify), for
    bootstrap tokens; ``off``: plain text, anyone who reaches the port can act as any
    node or operator (logged as a WARNING at start). Default: ``mtls`` when ``cert`` is
    set; the ``qvdc`` command refuses to start with neither ``cert`` nor ``mode``."""

    cert: Path | None = None
    """The controller's certificate chain (PEM); reloaded on SIGHUP and when it changes."""

    key: Path | None = None
    """The private key (PEM) of ``cert``."""

    client_ca: Path | None = None
    """CA certificate(s) (PEM) client certificates must be signed by."""

    reload_interval: float = 60.0
    """Seconds between checks of the files for a change, then reloaded for new
    connections (0: only on SIGHUP)."""

    @property
    def effective_mode(self) -> TlsMode:
        if self.mode is not None:
            return self.mode
        return "off" if self.cert is None else "mtls"

    @property
    def chosen(self) -> bool:
        """Whether TLS was configured at all (the command line needs it explicit)."""
        return self.mode is not None or self.cert is not None

    @property
    def require_client_cert(self) -> bool:
        return self.effective_mode == "mtls"

    def __post_init__(self) -> None:
        mode = self.effective_mode
        paths = {"tls.cert": self.cert, "tls.key": self.key, "tls.client_ca": self.client_ca}
        if mode == "off":
            given = [name for name, path in paths.items() if path is not None]
            _require(not given, f"tls.mode is off but {', '.join(given)} is set")
        else:
            _require(
                self.cert is not None and self.key is not None,
                f"tls.mode {mode} needs tls.cert and tls.key",
            )
        if mode == "mtls":
            _require(
                self.client_ca is not None,
                "tls.mode mtls needs tls.client_ca (tls.mode tls: client certificates optional)",
            )
        _require(
            self.reload_interval == 0 or 0.01 <= self.reload_interval <= 86400,
            f"tls.reload_interval must be 0 or in [0.01, 86400] s: {self.reload_interval}",
        )


AuthMode = Literal["on", "off"]


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may call what (docs/security.md, "Identities and roles")."""

    mode: AuthMode | None = None
    """``on``: a node certificate acts for its own node only, operators by role, a
    bootstrap token registers new nodes only; ``off``: every call is let through (a
    WARNING at start). Default: ``on`` unless ``tls.mode`` is off."""

    tokens_file: Path | None = None
    """TOML file of bootstrap and operator bearer tokens (docs/security.md, "Tokens");
    read at start (an error there stops the start) and again when it changes."""


@dataclass(frozen=True, slots=True)
class SecretsSettings:
    """Sealing of pool secrets (CHAP passwords) in etcd (docs/security.md, "Secrets")."""

    key_file: Path | None = None
    """File holding the current key, the base64 of 32 random bytes (``qvdcctl secrets
    new-key FILE``): it seals every secret written and opens what it sealed. Unset: a
    request carrying a secret is refused (FAILED_PRECONDITION), so none is stored in plain
    text. Read at start; a missing or malformed file stops the start."""

    old_key_files: tuple[str, ...] = ()
    """Key files of earlier rotations: they only open secrets sealed with them, until an
    update re-seals each with ``key_file``."""

    def __post_init__(self) -> None:
        _require(
            not self.old_key_files or self.key_file is not None,
            "secrets.old_key_files needs secrets.key_file (the key new secrets are sealed with)",
        )


@dataclass(frozen=True, slots=True)
class EventSettings:
    """The event history (node and pool transitions kept in etcd: ListNodeEvents,
    StreamEvents; docs/operations.md, "Events")."""

    history: int = 100
    """Events kept per node and per pool, the newest; older ones are deleted."""

    retention: float = 7 * 86400.0
    """Seconds an event is kept at most (an etcd lease), even within ``history``."""

    queue: int = 10_000
    """Events waiting to be written; past it new ones are dropped (counted, logged)."""

    max_subscribers: int = 64
    """StreamEvents calls open at once on a replica; more are refused."""

    subscriber_queue: int = 256
    """Events waiting to be sent to one StreamEvents caller; a caller that falls this far
    behind has its stream ended (RESOURCE_EXHAUSTED), never slowing the others."""

    def __post_init__(self) -> None:
        _require(
            1 <= self.history <= 10_000, f"events.history must be in [1, 10000]: {self.history}"
        )
        _require(
            60 <= self.retention <= 366 * 86400,
            f"events.retention must be in [60, 31622400] s: {self.retention}",
        )
        _require(
            1 <= self.queue <= 1_000_000, f"events.queue must be in [1, 1000000]: {self.queue}"
        )
        _require(
            1 <= self.max_subscribers <= 10_000,
            f"events.max_subscribers must be in [1, 10000]: {self.max_subscribers}",
        )
        _require(
            1 <= self.subscriber_queue <= 100_000,
            f"events.subscriber_queue must be in [1, 100000]: {self.subscriber_queue}",
        )


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Pool life cycle (DeletePool: docs/upstream.md, "RPC notes")."""

    delete_timeout: float = 60.0
    """Seconds a deleted pool waits in DELETING for its live hosts to detach it; a host
    that has not confirmed by then is named in a WARNING and the pool is removed anyway."""

    def __post_init__(self) -> None:
        _require(
            0 < self.delete_timeout <= 86400,
            f"pools.delete_timeout must be in (0, 86400] s: {self.delete_timeout}",
        )


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    """TLS of the gRPC server."""
    auth: AuthSettings = field(default_factory=AuthSettings)
    """Authorization of every call (qvdc/api/auth.py)."""
    http: HttpSettings = field(default_factory=HttpSettings)
    """The Connect/HTTP server; its request bound is ``grpc.max_message_bytes``."""
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    """The key pool secrets are sealed with in etcd."""
    limits: Limits = field(default_factory=Limits)
    """Bounds on every field a client sends (qvdc/domain/limits.py)."""
    events: EventSettings = field(default_factory=EventSettings)
    """The event history in etcd (ListNodeEvents, StreamEvents)."""
    pools: PoolSettings = field(default_factory=PoolSettings)
    """Pool life cycle (DeletePool's wait for the hosts)."""

    state_dir: Path = Path("/var/lib/qvdc")
    """Where the embedded etcd keeps its data."""

    replica_id: str = ""
    """This replica's name in ``replicas/`` and ``nodestatus`` (default: host:pid)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def grace(self) -> float:
        g = self.monitor.grace
        return g if g is not None else 3 * self.heartbeat.interval + 10.0

    @property
    def startup_grace(self) -> float:
        g = self.monitor.startup_grace
        return g if g is not None else self.grace

    @property
    def check_period(self) -> float:
        p = self.monitor.check_period
        return p if p is not None else min(self.grace / 4, 5.0)

    @property
    def http_tls(self) -> bool:
        """``http.tls``, defaulting to on exactly when the gRPC port uses TLS."""
        if self.http.tls is not None:
            return self.http.tls
        return self.tls.effective_mode != "off"

    @property
    def auth_enabled(self) -> bool:
        """``auth.mode``, defaulting to on exactly when TLS is on."""
        mode = self.auth.mode
        return mode == "on" if mode is not None else self.tls.effective_mode != "off"

    def validate(self) -> None:
        """Cross-field rules (docs/configuration.md, "Combinations refused"): a node must be
        able to miss a heartbeat, and a replica must look at least once within a grace."""
        interval = self.heartbeat.interval
        _require(
            self.grace >= 2 * interval,
            f"monitor.grace ({self.grace} s) must be at least 2 x heartbeat.interval "
            f"({interval} s)",
        )
        _require(
            self.startup_grace >= 2 * interval,
            f"monitor.startup_grace ({self.startup_grace} s) must be at least 2 x "
            f"heartbeat.interval ({interval} s): nodes would be OFFLINE before their first "
            "heartbeat reached a starting replica",
        )
        _require(
            self.check_period < self.grace,
            f"monitor.check_period ({self.check_period} s) must be shorter than monitor.grace "
            f"({self.grace} s)",
        )
        _require(
            not (self.auth.mode == "on" and self.tls.effective_mode == "off"),
            "auth.mode on needs TLS (tls.mode tls or mtls): without it there are no "
            "certificates and tokens would cross the network in plain text",
        )
        _require(
            self.heartbeat.commit_delay <= interval,
            f"heartbeat.commit_delay ({self.heartbeat.commit_delay} s) must not exceed "
            f"heartbeat.interval ({interval} s)",
        )
        _require(
            not (self.http.tls and self.tls.effective_mode == "off"),
            "http.tls on needs the gRPC port's certificate (tls.cert, tls.key, tls.mode tls "
            "or mtls)",
        )

    def replace(self, **changes: object) -> ControllerSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
