"""What a valid pool backend config is: one pure parser for the controller and the nodes.

The controller checks a pool's backend config when the pool is created or updated and the
node's backend checks it again before attaching it. Both call the functions here, so they
cannot disagree: a config the controller stored is one every node's backend accepts (the one
node-local difference, monitors from a ``ceph.conf``, only ever accepts more).

Input is the config message as a plain mapping with the proto field names and Python
values, exactly what the node's conversion produces (``to_dict(casing=SNAKE,
output_format=PYTHON, include_default_values=True)``): ``{"server": "nas", "export_path":
"/x", "version": "", ...}``. An absent key or ``None`` means the field's default. Output is
a frozen dataclass with defaults filled in where the default does not depend on the host
(NFS version 4.1, Ceph user ``admin``, iSCSI port 3260); host-dependent defaults (a
local_dir path or an NFS mount point under the node's root) stay empty for the backend.

A bad config raises :class:`ConfigError` carrying the field path (``nfs.server``, named
after the proto's oneof member: ``ceph`` for ``ceph_rbd``) and the reason, so the
controller can report ``spec.backend.nfs.server: is required`` and the node
``nfs.server is required``.

Standard library only and no I/O (an import-linter contract): the controller's domain
layer imports this module, and so do the backends.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import posixpath
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

# -- errors --------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A pool config that cannot work. ``field`` is the path (``nfs.export_path``),
    ``reason`` what is wrong with it (``is required``); ``str()`` is ``"<field> <reason>"``."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field} {reason}")


# -- shared rules --------------------------------------------------------------------------

_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DOTTED_NUMBERS: Final = re.compile(r"[0-9.]+")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
HOSTNAME_MAX: Final = 253

#: Characters of a config value an error quotes (as ``qvdc.domain.limits.ECHO_MAX``).
QUOTE_MAX: Final = 64


def quote(value: object) -> str:
    """``repr``-style quotation of a config value cut to :data:`QUOTE_MAX` characters, with
    the length, so an error about a huge value stays small."""
    text = repr(value)
    if len(text) <= QUOTE_MAX:
        return text
    return f"{text[:QUOTE_MAX]}… ({len(text)} characters)"


def is_hostname(text: str) -> bool:
    """True for an RFC 1123 host name: dot-separated labels of letters, digits and '-'
    (1-63 characters, not starting or ending with '-'), at most 253 characters in all,
    and not digits and dots only (RFC 1123 §2.1: ``10.0.0.256`` is a bad address, not a
    name)."""
    return (
        len(text) <= HOSTNAME_MAX
        and _HOSTNAME.fullmatch(text) is not None
        and _DOTTED_NUMBERS.fullmatch(text) is None
    )


def is_host(text: str) -> bool:
    """True for an IPv4 or IPv6 address or an RFC 1123 host name (:func:`is_hostname`)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return is_hostname(text)
    return True


def parse_endpoint(
    text: str, *, field: str, default_port: int | None, example: str
) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> ``(host, port)``.

    The host is an IP address or a host name (a bare IPv6 address is ambiguous with a port
    and must be bracketed); the port is 1-65535 and, when ``default_port`` is None,
    required. Raises ConfigError naming ``field``.
    """
    wanted = f"must be {'host:port' if default_port is None else 'host[:port]'}"
    bad = ConfigError(field, f"{wanted} with port 1-65535 ({example}), got {quote(text)}")
    port_text: str | None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise bad
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise ConfigError(
                field, f"{wanted}: write IPv6 addresses as [addr]:port, got {quote(text)}"
            )
        host, sep, after = text.partition(":")
        port_text = after if sep else None
        if not host or not is_host(host):
            raise bad
    if port_text is None:
        if default_port is None:
            raise bad
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise bad
    return host, int(port_text)


def check_absolute_path(path: str, *, field: str) -> None:
    """Require an absolute, normalised path other than '/': no '.', '..', empty or
    trailing parts, no control characters. Raises ConfigError naming ``field``."""
    if _CONTROL.search(path):
        raise ConfigError(field, f"must not contain control characters, got {quote(path)}")
    if not path.startswith("/"):
        raise ConfigError(field, f"must be an absolute path, got {quote(path)}")
    if path == "/":
        raise ConfigError(field, "must not be the filesystem root '/'")
    if posixpath.normpath(path) != path or path.startswith("//"):
        raise ConfigError(
            field, f"must be normalised (no '..', '.', '//' or trailing '/'), got {quote(path)}"
        )


def _string(config: Mapping[str, Any], key: str, *, prefix: str, secret: bool = False) -> str:
    value = config.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        shown = "a non-string value" if secret else repr(value)
        raise ConfigError(f"{prefix}.{key}", f"must be a string, got {shown}")
    return value


def _integer(config: Mapping[str, Any], key: str, *, prefix: str, high: int | None) -> int:
    value = config.get(key)
    if value is None:
        return 0
    within = f"in [0, {high}]" if high is not None else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{prefix}.{key}", f"must be an integer {within}, got {quote(value)}")
    if value < 0 or (high is not None and value > high):
        raise ConfigError(f"{prefix}.{key}", f"must be {within}, got {value}")
    return value


def _boolean(config: Mapping[str, Any], key: str, *, prefix: str) -> bool:
    value = config.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}.{key}", f"must be true or false, got {quote(value)}")
    return value


def _require_mapping(config: object, *, prefix: str) -> Mapping[str, Any]:
    if not isinstance(config, Mapping):
        raise ConfigError(prefix, f"must be a message (a mapping), got {type(config).__name__}")
    return config


# -- local_dir -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalDirConfig:
    """A valid ``local_dir`` config. ``path`` "" means ``<pools_root>/<pool_id>`` on the
    node; ``capacity_gib`` 0 means the whole filesystem."""

    path: str = ""
    capacity_gib: int = 0
    #: The path itself must be a mount point.
    require_mountpoint: bool = False
    #: A directory (the path or a parent) that must be a mount point; "" for none.
    mount_point: str = ""
    #: Whether attach creates a missing path.
    create_path: bool = True


def parse_local_dir(config: Mapping[str, Any]) -> LocalDirConfig:
    """``path``: empty or an absolute normalised path other than '/';
    ``capacity_gib``: an integer >= 0; ``require_mountpoint``: a boolean;
    ``mount_point``: empty or an absolute normalised path that is ``path`` (then
    required) or one of its parents;
    ``create_path``: a boolean, absent meaning true."""
    prefix = "local_dir"
    config = _require_mapping(config, prefix=prefix)
    path = _string(config, "path", prefix=prefix)
    if path:
        check_absolute_path(path, field=f"{prefix}.path")
    capacity = _integer(config, "capacity_gib", prefix=prefix, high=None)
    require_mountpoint = _boolean(config, "require_mountpoint", prefix=prefix)
    mount_point = _string(config, "mount_point", prefix=prefix)
    if mount_point:
        check_absolute_path(mount_point, field=f"{prefix}.mount_point")
        if not path:
            raise ConfigError(f"{prefix}.mount_point", "needs local_dir.path to be set")
        if not is_within(path, mount_point):
            raise ConfigError(
                f"{prefix}.mount_point",
                f"must be local_dir.path or one of its parents, got {quote(mount_point)} "
                f"for path {quote(path)}",
            )
    create_path = config.get("create_path") is None or _boolean(
        config, "create_path", prefix=prefix
    )
    return LocalDirConfig(
        path=path,
        capacity_gib=capacity,
        require_mountpoint=require_mountpoint,
        mount_point=mount_point,
        create_path=create_path,
    )


def is_within(path: str, directory: str) -> bool:
    """Whether normalised absolute ``path`` is ``directory`` or below it."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# -- nfs -----------------------------------------------------------------------------------

#: Protocol versions a pool may ask for; ``""`` (the proto default) means 4.1.
NFS_VERSIONS: Final = frozenset({"3", "4", "4.0", "4.1", "4.2"})
NFS_DEFAULT_VERSION: Final = "4.1"


@dataclass(frozen=True, slots=True)
class NfsConfig:
    """A valid ``nfs`` config. ``mount_point`` "" means ``<mount_root>/nfs-<pool_id>`` on
    the node (the backend fills it in)."""

    server: str
    export_path: str
    #: One of :data:`NFS_VERSIONS` (the default filled in).
    version: str = NFS_DEFAULT_VERSION
    #: Extra mount options, in order, without empty items.
    options: tuple[str, ...] = ()
    mount_point: str = ""
    #: Whether attach creates a missing mount point.
    create_path: bool = True

    @property
    def source(self) -> str:
        """``server:/export``, as ``mount`` takes it and mountinfo shows it."""
        return f"{self.server}:{self.export_path}"


def parse_nfs(config: Mapping[str, Any]) -> NfsConfig:
    """``server``: a host name or IPv4 address (no port, path or spaces; required);
    ``export_path``: absolute (required); ``version``: one of :data:`NFS_VERSIONS` or "";
    ``options``: comma-separated, no whitespace, not setting the version;
    ``mount_point``: empty or an absolute normalised path other than '/'."""
    prefix = "nfs"
    config = _require_mapping(config, prefix=prefix)
    server = _string(config, "server", prefix=prefix)
    if not server:
        raise ConfigError(f"{prefix}.server", "is required")
    if any(c in ":/" or c.isspace() for c in server) or not is_host(server):
        raise ConfigError(
            f"{prefix}.server",
            "must be a hostname or IPv4 address (no port, path or spaces; the export goes "
            f"in export_path), got {quote(server)}",
        )
    export_path = _string(config, "export_path", prefix=prefix)
    if not export_path:
        raise ConfigError(f"{prefix}.export_path", "is required")
    if not export_path.startswith("/") or _CONTROL.search(export_path):
        raise ConfigError(
            f"{prefix}.export_path",
            f"must be an absolute path without control characters, got {quote(export_path)}",
        )
    version = _string(config, "version", prefix=prefix) or NFS_DEFAULT_VERSION
    if version not in NFS_VERSIONS:
        raise ConfigError(
            f"{prefix}.version",
            f"must be one of {', '.join(sorted(NFS_VERSIONS))}, got {quote(version)}",
        )
    options = tuple(item for item in _string(config, "options", prefix=prefix).split(",") if item)
    for option in options:
        if _CONTROL.search(option) or any(c.isspace() for c in option):
            raise ConfigError(
                f"{prefix}.options",
                f"must be a comma-separated list without whitespace, got {quote(option)}",
            )
        if option.split("=", 1)[0] in {"vers", "nfsvers"}:
            raise ConfigError(
                f"{prefix}.options",
                f"must not set the protocol version ({quote(option)}); set nfs.version instead",
            )
    mount_point = _string(config, "mount_point", prefix=prefix)
    if mount_point:
        check_absolute_path(mount_point, field=f"{prefix}.mount_point")
    create_path = config.get("create_path") is None or _boolean(
        config, "create_path", prefix=prefix
    )
    return NfsConfig(
        server=server,
        export_path=export_path,
        version=version,
        options=options,
        mount_point=mount_point,
        create_path=create_path,
    )


# -- ceph_rbd ------------------------------------------------------------------------------

CEPH_DEFAULT_MON_PORT: Final = 6789
CEPH_DEFAULT_USER: Final = "admin"
_FORBIDDEN_IN_CEPH_NAMES: Final = frozenset("/@\0")


@dataclass(frozen=True, slots=True)
class Monitor:
    """One monitor address from ``ceph.monitors``."""

    host: str
    port: int = CEPH_DEFAULT_MON_PORT

    def __str__(self) -> str:
        if ":" in self.host:  # IPv6
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class CephRbdConfig:
    """A valid ``ceph`` config of a ``ceph_rbd`` pool (the proto's CephConfig)."""

    pool_name: str
    monitors: tuple[Monitor, ...] = ()
    user: str = CEPH_DEFAULT_USER
    keyring_path: str = ""
    namespace: str = ""
    secret_uuid: str = ""
    cluster_id: str = ""
    #: The cephx key of ``user`` (base64), given to librados as its ``key`` option; never
    #: shown (write-only, docs/security.md "Secrets").
    key: str = dataclasses.field(default="", repr=False)

    @property
    def location(self) -> str:
        """``rbd:<pool>[/<namespace>]``: the pool's ``mount_path``."""
        suffix = f"/{self.namespace}" if self.namespace else ""
        return f"rbd:{self.pool_name}{suffix}"

    @property
    def client_name(self) -> str:
        return f"client.{self.user}"


def parse_monitor(entry: object, *, field: str = "ceph.monitors[0]") -> Monitor:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; the port defaults to 6789."""
    if not isinstance(entry, str):
        raise ConfigError(field, f"must be host[:port] with port 1-65535, got {quote(entry)}")
    host, port = parse_endpoint(
        entry, field=field, default_port=CEPH_DEFAULT_MON_PORT, example="e.g. 10.0.0.1:6789"
    )
    return Monitor(host=host, port=port)


def _check_ceph_name(value: str, *, field: str) -> None:
    if _FORBIDDEN_IN_CEPH_NAMES & set(value) or any(c.isspace() for c in value):
        raise ConfigError(field, f"must not contain '/', '@' or whitespace, got {quote(value)}")


def parse_ceph_rbd(config: Mapping[str, Any], *, monitors_from_conf: bool = False) -> CephRbdConfig:
    """``pool_name``: required, no '/', '@' or whitespace; ``monitors``: a list of
    ``host[:port]`` (at least one unless ``monitors_from_conf``: a node whose backend reads
    a ceph.conf); ``user``: the client id without ``client.`` (default admin);
    ``keyring_path``: absolute when set; ``namespace``: like pool_name when set;
    ``secret_uuid``: a UUID when set; ``cluster_id``: free text (a UUID is checked against
    the cluster's fsid by the backend); ``key``: the cephx key of ``user`` (base64 of
    16-128 bytes, as in a keyring's ``key = ...``), not together with ``keyring_path``,
    never quoted in an error."""
    prefix = "ceph"
    config = _require_mapping(config, prefix=prefix)
    pool_name = _string(config, "pool_name", prefix=prefix)
    if not pool_name:
        raise ConfigError(f"{prefix}.pool_name", "is required")
    _check_ceph_name(pool_name, field=f"{prefix}.pool_name")

    raw_monitors = config.get("monitors")
    if raw_monitors is None:
        raw_monitors = []
    if not isinstance(raw_monitors, list | tuple):
        raise ConfigError(
            f"{prefix}.monitors", f"must be a list of host[:port], got {quote(raw_monitors)}"
        )
    monitors = tuple(
        parse_monitor(entry, field=f"{prefix}.monitors[{i}]")
        for i, entry in enumerate(raw_monitors)
    )
    if not monitors and not monitors_from_conf:
        raise ConfigError(f"{prefix}.monitors", "needs at least one monitor (host[:port])")

    user = _string(config, "user", prefix=prefix) or CEPH_DEFAULT_USER
    if user.startswith("client."):
        raise ConfigError(
            f"{prefix}.user",
            f"is the client id without the 'client.' prefix (e.g. 'admin'), got {quote(user)}",
        )
    if any(c.isspace() for c in user) or _FORBIDDEN_IN_CEPH_NAMES & set(user):
        raise ConfigError(f"{prefix}.user", f"must be a plain client id, got {quote(user)}")

    keyring_path = _string(config, "keyring_path", prefix=prefix)
    if keyring_path and (not keyring_path.startswith("/") or _CONTROL.search(keyring_path)):
        raise ConfigError(
            f"{prefix}.keyring_path",
            f"must be an absolute path without control characters, got {quote(keyring_path)}",
        )

    namespace = _string(config, "namespace", prefix=prefix)
    if namespace:
        _check_ceph_name(namespace, field=f"{prefix}.namespace")

    secret_uuid = _string(config, "secret_uuid", prefix=prefix)
    if secret_uuid:
        try:
            uuid.UUID(secret_uuid)
        except ValueError:
            raise ConfigError(
                f"{prefix}.secret_uuid",
                f"must be a UUID (the libvirt secret), got {quote(secret_uuid)}",
            ) from None

    key = _string(config, "key", prefix=prefix, secret=True)
    if key:
        _check_ceph_key(key, field=f"{prefix}.key")
        if keyring_path:
            raise ConfigError(
                f"{prefix}.key",
                "give either key or keyring_path, not both (keyring_path names a keyring "
                "file on the node, key is the key itself)",
            )

    return CephRbdConfig(
        pool_name=pool_name,
        monitors=monitors,
        user=user,
        keyring_path=keyring_path,
        namespace=namespace,
        secret_uuid=secret_uuid,
        cluster_id=_string(config, "cluster_id", prefix=prefix),
        key=key,
    )


#: Bounds of a cephx key's decoded length: ceph-authtool's keys are 28 bytes (a 12-byte
#: header and a 16-byte AES key).
CEPH_KEY_BYTES: Final = (16, 128)


def _check_ceph_key(key: str, *, field: str) -> None:
    """A cephx key is base64 (its value is never put in the message)."""
    low, high = CEPH_KEY_BYTES
    try:
        decoded = base64.b64decode(key, validate=True)
    except (ValueError, binascii.Error):
        decoded = None
    if decoded is None or not low <= len(decoded) <= high:
        raise ConfigError(
            field,
            f"must be a cephx key: the base64 of {low}-{high} bytes, as in a keyring's "
            f"'key = ...' line (a value of {len(key)} characters is not)",
        )


# -- iscsi ---------------------------------------------------------------------------------

#: The iSCSI port (IANA), used when ``portal`` names no port.
ISCSI_DEFAULT_PORT: Final = 3260
#: Upper bound of LUN numbers (SAM flat space addressing).
ISCSI_MAX_LUN: Final = 16383
#: RFC 7143 §4.2.7.1: iSCSI names are at most 223 bytes.
ISCSI_NAME_MAX: Final = 223
#: RFC 3720 §8.2.1 asks for CHAP secrets of at least 96 bits (12 octets) when they are not
#: random; shorter ones can be brute-forced offline from one captured exchange.
CHAP_PASSWORD_MIN: Final = 12

_IQN: Final = re.compile(
    r"iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
    r"(:\S+)?",
    re.IGNORECASE,
)
_EUI: Final = re.compile(r"eui\.[0-9a-f]{16}", re.IGNORECASE)
_NAA: Final = re.compile(r"naa\.([0-9a-f]{16}|[0-9a-f]{32})", re.IGNORECASE)
_LVM_NAME: Final = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}")


@dataclass(frozen=True, slots=True)
class IscsiConfig:
    """A valid ``iscsi`` config. The CHAP password never appears in ``repr``."""

    #: Normalised ``host:port`` (``[v6]:port`` for IPv6), the port filled in.
    portal: str
    target: str
    lun: int = 0
    chap_enabled: bool = False
    chap_user: str = ""
    chap_password: str = dataclasses.field(default="", repr=False)
    #: Accepted and ignored by the node (no device-mapper on the hosts).
    volume_group: str = ""


def is_iscsi_name(name: str) -> bool:
    """Whether ``name`` is an ``iqn.``, ``eui.`` or ``naa.`` name of at most 223 bytes."""
    if len(name.encode()) > ISCSI_NAME_MAX:
        return False
    return any(pattern.fullmatch(name) for pattern in (_IQN, _EUI, _NAA))


def normalize_portal(raw: str, *, field: str = "iscsi.portal") -> str:
    """``host[:port]`` -> ``host:port`` (port 3260 when omitted); raises ConfigError."""
    example = "e.g. 10.0.0.5:3260 or [fd00::5]:3260"
    if not raw:
        raise ConfigError(field, f"is required ({example})")
    if any(c.isspace() for c in raw) or "/" in raw or "," in raw:
        raise ConfigError(field, f"must be host[:port] ({example}), got {quote(raw)}")
    host, port = parse_endpoint(raw, field=field, default_port=ISCSI_DEFAULT_PORT, example=example)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}"


def parse_iscsi(config: Mapping[str, Any]) -> IscsiConfig:
    """``portal``: ``host[:port]`` (required; port 3260 by default); ``target``: an iqn.,
    eui. or naa. name (required); ``lun``: 0-16383; with ``chap_enabled`` a ``chap_user``
    without whitespace and a ``chap_password`` of at least 12 characters;
    ``volume_group``: a valid LVM name when set."""
    prefix = "iscsi"
    config = _require_mapping(config, prefix=prefix)
    portal = normalize_portal(_string(config, "portal", prefix=prefix), field=f"{prefix}.portal")
    target = _string(config, "target", prefix=prefix)
    if not target:
        raise ConfigError(
            f"{prefix}.target", "is required (an IQN such as iqn.2026-01.com.example:pool1)"
        )
    if not is_iscsi_name(target):
        raise ConfigError(
            f"{prefix}.target",
            "must be an iSCSI name: iqn.YYYY-MM.naming-authority[:id], "
            f"eui.<16 hex digits> or naa.<16 or 32 hex digits>; got {quote(target)}",
        )
    lun = _integer(config, "lun", prefix=prefix, high=ISCSI_MAX_LUN)
    chap_enabled = _boolean(config, "chap_enabled", prefix=prefix)
    chap_user = _string(config, "chap_user", prefix=prefix)
    chap_password = _string(config, "chap_password", prefix=prefix, secret=True)
    if chap_enabled:
        if not chap_user:
            raise ConfigError(f"{prefix}.chap_user", "is required when chap_enabled is true")
        if any(c.isspace() for c in chap_user):
            raise ConfigError(
                f"{prefix}.chap_user", f"must not contain whitespace, got {quote(chap_user)}"
            )
        if not chap_password:
            raise ConfigError(f"{prefix}.chap_password", "is required when chap_enabled is true")
        if len(chap_password) < CHAP_PASSWORD_MIN:
            raise ConfigError(
                f"{prefix}.chap_password",
                f"must be at least {CHAP_PASSWORD_MIN} characters (RFC 3720 recommends "
                "CHAP secrets of at least 96 bits)",
            )
    volume_group = _string(config, "volume_group", prefix=prefix)
    if volume_group and (volume_group in {".", ".."} or not _LVM_NAME.fullmatch(volume_group)):
        raise ConfigError(
            f"{prefix}.volume_group",
            f"must be a valid LVM volume group name (letters, digits, '+', '_', '.', '-', "
            f"not starting with '-'), got {quote(volume_group)}",
        )
    return IscsiConfig(
        portal=portal,
        target=target,
        lun=lun,
        chap_enabled=chap_enabled,
        chap_user=chap_user,
        chap_password=chap_password,
        volume_group=volume_group,
    )


# -- by kind -------------------------------------------------------------------------------

BackendConfig = LocalDirConfig | NfsConfig | CephRbdConfig | IscsiConfig

#: The parser of each backend kind (the ``storage_backends.base.BackendKind`` values).
PARSERS: Final[Mapping[str, Callable[[Mapping[str, Any]], BackendConfig]]] = {
    "local_dir": parse_local_dir,
    "nfs": parse_nfs,
    "ceph_rbd": parse_ceph_rbd,
    "iscsi": parse_iscsi,
}

#: The proto oneof member (and field-path prefix) of each kind's config.
CONFIG_FIELDS: Final[Mapping[str, str]] = {
    "local_dir": "local_dir",
    "nfs": "nfs",
    "ceph_rbd": "ceph",
    "iscsi": "iscsi",
}


def parse(kind: str, config: Mapping[str, Any]) -> BackendConfig:
    """Parse ``config`` with the parser of backend ``kind`` (a key of :data:`PARSERS`,
    KeyError otherwise), as the controller does: Ceph monitors are required."""
    return PARSERS[kind](config)
