"""Validate pool definitions before they are stored, as plain data.

Upstream checked nothing but the pool name (UPSTREAM.md §3.1): a pool of type NFS with no
server was stored, pushed to hosts and failed there, far from the operator who made the
mistake. Here every rule that can be checked without touching a host is checked at the API,
and the error names the offending field in protobuf field-path form, for example
``"spec.backend.local_dir.path: must be an absolute path"``.

Input is the protobuf JSON mapping of a ``StoragePool`` / ``CreatePoolRequest`` as
betterproto2 ``to_dict()`` produces it: camelCase keys (``exportPath``), enum values as
names (``"NFS"``), 64-bit integers as decimal strings (``"capacityGib": "10"``), and
default values omitted (so an absent ``type`` is ``CEPH_RBD``, the wire's zero value).
snake_case keys (the proto field names) are accepted as well, since hand-written documents
and ``etcdctl`` users write those. Messages always use the snake_case field path.

Working on dicts rather than generated message classes keeps this module pure (the domain
layer may not import protobuf code) and lets the same rules check what is read back from
etcd.

Exceptions: :class:`~qvdc.domain.errors.InvalidArgument` for a malformed definition,
:class:`~qvdc.domain.errors.FailedPrecondition` for a well-formed one this controller cannot
serve yet (LOCAL_LVM, CEPH_CEPHFS).
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import uuid
from collections.abc import Mapping
from typing import Any

from qvdc.domain.errors import FailedPrecondition, InvalidArgument
from qvdc.domain.model import BackendType

# -- names and labels --------------------------------------------------------------------

#: A pool name is a DNS label (RFC 1123): what hosts use it for (directory names, libvirt
#: pool names, log lines) must never need quoting.
POOL_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
POOL_NAME_MAX = 63

LABEL_KEY_RE = re.compile(r"[A-Za-z0-9._/-]{1,63}")
LABEL_VALUE_MAX = 253

# -- backends ------------------------------------------------------------------------------

#: The ``StorageBackend`` oneof members, snake_case name -> camelCase JSON name.
CONFIG_KINDS: Mapping[str, str] = {
    "ceph": "ceph",
    "local_lvm": "localLvm",
    "local_dir": "localDir",
    "nfs": "nfs",
    "iscsi": "iscsi",
}

#: The config each backend type needs.
EXPECTED_CONFIG: Mapping[BackendType, str] = {
    BackendType.CEPH_RBD: "ceph",
    BackendType.CEPH_CEPHFS: "ceph",
    BackendType.LOCAL_LVM: "local_lvm",
    BackendType.LOCAL_DIR: "local_dir",
    BackendType.NFS: "nfs",
    BackendType.ISCSI: "iscsi",
}

#: Types the proto defines but no node backend implements yet.
UNSUPPORTED_BACKENDS = frozenset({BackendType.LOCAL_LVM, BackendType.CEPH_CEPHFS})

NFS_VERSIONS = frozenset({"", "3", "4", "4.0", "4.1", "4.2"})

#: RFC 3720 §8.2.1 asks for CHAP secrets of at least 96 bits (12 octets) when they are not
#: random; shorter ones can be brute-forced offline from one captured exchange.
CHAP_PASSWORD_MIN = 12

#: RFC 3720 §3.2.6.1: iSCSI names are at most 223 bytes.
ISCSI_NAME_MAX = 223
_DNS_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
IQN_RE = re.compile(
    rf"iqn\.[0-9]{{4}}-(0[1-9]|1[0-2])\.{_DNS_LABEL}(\.{_DNS_LABEL})*(:\S+)?", re.IGNORECASE
)
EUI_RE = re.compile(r"eui\.[0-9A-Fa-f]{16}", re.IGNORECASE)

_HOSTNAME_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_LVM_NAME_RE = re.compile(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}")


# -- public API ----------------------------------------------------------------------------


def validate_pool_name(name: str) -> None:
    """Raise ``InvalidArgument`` (field ``name``) unless ``name`` is a valid pool name.

    A pool name is required and must be a DNS label (RFC 1123): 1-63 characters of lowercase
    letters, digits and '-', starting and ending with a letter or digit
    (``[a-z0-9]([-a-z0-9]*[a-z0-9])?``).
    """
    if not isinstance(name, str) or not name:
        raise InvalidArgument("is required", field="name")
    if len(name) > POOL_NAME_MAX:
        raise InvalidArgument(
            f"must be at most {POOL_NAME_MAX} characters, got {len(name)}", field="name"
        )
    if not POOL_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{name!r} is not a DNS label: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
            field="name",
        )


def validate_labels(labels: Mapping[str, str], *, field: str) -> None:
    """Raise ``InvalidArgument`` naming ``field`` unless every label is valid.

    Keys: 1-63 characters of ``[A-Za-z0-9._/-]``. Values: strings of at most 253 characters.
    """
    if not isinstance(labels, Mapping):
        raise InvalidArgument("must be a map of strings to strings", field=field)
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"key {key!r} must be 1-63 characters of [A-Za-z0-9._/-]", field=field
            )
        if not isinstance(value, str):
            raise InvalidArgument(f"value of {key!r} must be a string", field=field)
        if len(value) > LABEL_VALUE_MAX:
            raise InvalidArgument(
                f"value of {key!r} must be at most {LABEL_VALUE_MAX} characters, got {len(value)}",
                field=field,
            )


def parse_backend(
    backend: Mapping[str, Any], *, field: str = "spec.backend"
) -> tuple[BackendType, str | None, Mapping[str, Any]]:
    """Split a ``StorageBackend`` JSON mapping into ``(type, config_kind, config)``.

    ``type`` may be a name (``"NFS"``), a number, or absent (the zero value, CEPH_RBD).
    ``config_kind`` is the snake_case name of the oneof member that is set (``"local_dir"``)
    or None when none is; ``config`` is that member's mapping (empty when none is set).
    Raises ``InvalidArgument`` for an unknown type, several oneof members, or a config that
    is not a mapping.
    """
    if not isinstance(backend, Mapping):
        raise InvalidArgument("must be a StorageBackend message", field=field)
    backend_type = _parse_backend_type(backend.get("type"), field=f"{field}.type")
    present = [
        kind
        for kind, camel in CONFIG_KINDS.items()
        if backend.get(camel) is not None or backend.get(kind) is not None
    ]
    if len(present) > 1:
        raise InvalidArgument(
            f"only one config may be set, got {' and '.join(present)}", field=field
        )
    if not present:
        return backend_type, None, {}
    kind = present[0]
    config = backend.get(CONFIG_KINDS[kind], backend.get(kind))
    if not isinstance(config, Mapping):
        raise InvalidArgument("must be a message", field=f"{field}.{kind}")
    return backend_type, kind, config


def validate_backend(
    *,
    backend_type: BackendType,
    config_kind: str | None,
    config: Mapping[str, Any],
    field: str = "spec.backend",
) -> None:
    """Raise unless the backend definition is valid and servable; return None if it is.

    ``config_kind`` is the oneof member set (snake_case ``"local_dir"`` or camelCase
    ``"localDir"``), None when none is. Checks, in order:

    * unknown ``config_kind``                           -> ``InvalidArgument``;
    * LOCAL_LVM, CEPH_CEPHFS                            -> ``FailedPrecondition`` ("not
      supported by this controller yet");
    * config does not match the type                    -> ``InvalidArgument`` (LOCAL_DIR
      without any config is fine: every field has a node-side default);
    * the type's own rules (see the ``_validate_*`` functions) -> ``InvalidArgument``.
    """
    kind = _normalise_kind(config_kind, field=field)
    if backend_type in UNSUPPORTED_BACKENDS:
        raise FailedPrecondition(
            f"backend type {backend_type.name} is not supported by this controller yet",
            field=f"{field}.type",
        )
    expected = EXPECTED_CONFIG[backend_type]
    if kind is None and backend_type == BackendType.LOCAL_DIR:
        kind = expected
    if kind != expected:
        hint = (
            " (an unset type means CEPH_RBD, the zero value)"
            if backend_type == BackendType.CEPH_RBD
            else ""
        )
        raise InvalidArgument(
            f"type {backend_type.name} needs the {expected} config, got {kind or 'none'}{hint}",
            field=field,
        )
    prefix = f"{field}.{kind}"
    if backend_type == BackendType.LOCAL_DIR:
        _validate_local_dir(config, field=prefix)
    elif backend_type == BackendType.NFS:
        _validate_nfs(config, field=prefix)
    elif backend_type == BackendType.CEPH_RBD:
        _validate_ceph_rbd(config, field=prefix)
    elif backend_type == BackendType.ISCSI:
        _validate_iscsi(config, field=prefix)


def validate_pool_spec(spec: Mapping[str, Any], *, field: str = "spec") -> None:
    """Raise unless a ``StoragePoolSpec`` JSON mapping is valid; return None if it is.

    ``backend`` is required and checked with :func:`parse_backend` and
    :func:`validate_backend`; ``assigned_node_ids`` must be distinct non-empty strings
    without whitespace.
    """
    if not isinstance(spec, Mapping):
        raise InvalidArgument("must be a StoragePoolSpec message", field=field)
    backend = _get_field(spec, "backend")
    if backend is None:
        raise InvalidArgument("is required", field=f"{field}.backend")
    backend_type, kind, config = parse_backend(backend, field=f"{field}.backend")
    validate_backend(
        backend_type=backend_type, config_kind=kind, config=config, field=f"{field}.backend"
    )
    node_ids = _read_strings(spec, "assigned_node_ids", field=f"{field}.assigned_node_ids")
    seen: set[str] = set()
    for node_id in node_ids:
        if not node_id or any(c.isspace() for c in node_id):
            raise InvalidArgument(
                f"node id {node_id!r} must be non-empty and without spaces",
                field=f"{field}.assigned_node_ids",
            )
        if node_id in seen:
            raise InvalidArgument(
                f"node id {node_id!r} is listed twice", field=f"{field}.assigned_node_ids"
            )
        seen.add(node_id)


def validate_create_pool(request: Mapping[str, Any]) -> None:
    """Raise unless a ``CreatePoolRequest`` (or ``StoragePool``) JSON mapping is valid.

    Checks ``name`` (:func:`validate_pool_name`), ``labels`` (:func:`validate_labels`) and
    ``spec`` (required, :func:`validate_pool_spec`). Returns None when valid.
    """
    name = request.get("name", "")
    validate_pool_name(name if isinstance(name, str) else "")
    validate_labels(request.get("labels") or {}, field="labels")
    spec = request.get("spec")
    if spec is None:
        raise InvalidArgument("is required", field="spec")
    validate_pool_spec(spec, field="spec")


# -- per-backend rules ---------------------------------------------------------------------


def _validate_local_dir(config: Mapping[str, Any], *, field: str) -> None:
    """LOCAL_DIR: ``path`` empty (the node's default) or absolute and normalised;
    ``capacity_gib`` >= 0 (0 = the whole filesystem)."""
    path = _read_string(config, "path", field=f"{field}.path")
    if path:
        _check_path(path, field=f"{field}.path")
    _read_uint(config, "capacity_gib", field=f"{field}.capacity_gib")


def _validate_nfs(config: Mapping[str, Any], *, field: str) -> None:
    """NFS: ``server`` a hostname or IPv4 address (no port, no path, no spaces);
    ``export_path`` required and absolute; ``version`` one of NFS_VERSIONS; ``mount_point``
    absolute and normalised when set; ``options`` without whitespace."""
    server = _read_string(config, "server", field=f"{field}.server")
    if not server:
        raise InvalidArgument("is required", field=f"{field}.server")
    if ":" in server or any(c.isspace() for c in server):
        raise InvalidArgument(
            f"{server!r} must be a hostname or IP address without ':' or spaces "
            "(put the export in export_path)",
            field=f"{field}.server",
        )
    if not _is_host(server):
        raise InvalidArgument(
            f"{server!r} is not a valid hostname or IP address", field=f"{field}.server"
        )
    export_path = _read_string(config, "export_path", field=f"{field}.export_path")
    if not export_path:
        raise InvalidArgument("is required", field=f"{field}.export_path")
    if not export_path.startswith("/") or "\x00" in export_path:
        raise InvalidArgument(
            f"must be an absolute path, got {export_path!r}", field=f"{field}.export_path"
        )
    version = _read_string(config, "version", field=f"{field}.version")
    if version not in NFS_VERSIONS:
        allowed = ", ".join(repr(v) for v in sorted(NFS_VERSIONS))
        raise InvalidArgument(
            f"{version!r} is not a supported NFS version; use one of {allowed}",
            field=f"{field}.version",
        )
    mount_point = _read_string(config, "mount_point", field=f"{field}.mount_point")
    if mount_point:
        _check_path(mount_point, field=f"{field}.mount_point")
    options = _read_string(config, "options", field=f"{field}.options")
    if any(c.isspace() for c in options):
        raise InvalidArgument(
            "must be a comma-separated list without whitespace", field=f"{field}.options"
        )


def _validate_ceph_rbd(config: Mapping[str, Any], *, field: str) -> None:
    """CEPH_RBD: ``pool_name`` required; at least one monitor, each ``host`` or
    ``host:port`` (port 1-65535; IPv6 as ``[addr]`` or ``[addr]:port``); ``secret_uuid`` a
    UUID and ``keyring_path`` absolute when set."""
    if not _read_string(config, "pool_name", field=f"{field}.pool_name"):
        raise InvalidArgument("is required", field=f"{field}.pool_name")
    monitors = _read_strings(config, "monitors", field=f"{field}.monitors")
    if not monitors:
        raise InvalidArgument("at least one monitor is required", field=f"{field}.monitors")
    for monitor in monitors:
        _check_endpoint(monitor, field=f"{field}.monitors", port_required=False)
    secret_uuid = _read_string(config, "secret_uuid", field=f"{field}.secret_uuid")
    if secret_uuid:
        try:
            uuid.UUID(secret_uuid)
        except ValueError:
            raise InvalidArgument(
                f"{secret_uuid!r} is not a UUID", field=f"{field}.secret_uuid"
            ) from None
    keyring_path = _read_string(config, "keyring_path", field=f"{field}.keyring_path")
    if keyring_path and not keyring_path.startswith("/"):
        raise InvalidArgument(
            f"must be an absolute path, got {keyring_path!r}", field=f"{field}.keyring_path"
        )


def _validate_iscsi(config: Mapping[str, Any], *, field: str) -> None:
    """ISCSI: ``portal`` ``host:port``; ``target`` an IQN or EUI name; with ``chap_enabled``
    both ``chap_user`` and ``chap_password`` (>= 12 characters); ``lun`` >= 0;
    ``volume_group`` a valid LVM name when set."""
    portal = _read_string(config, "portal", field=f"{field}.portal")
    if not portal:
        raise InvalidArgument("is required", field=f"{field}.portal")
    _check_endpoint(portal, field=f"{field}.portal", port_required=True)
    target = _read_string(config, "target", field=f"{field}.target")
    if not target:
        raise InvalidArgument("is required", field=f"{field}.target")
    if len(target) > ISCSI_NAME_MAX or not (IQN_RE.fullmatch(target) or EUI_RE.fullmatch(target)):
        raise InvalidArgument(
            f"{target!r} is not an iSCSI name: use an IQN "
            "('iqn.YYYY-MM.reverse.domain[:identifier]') or an EUI ('eui.' + 16 hex digits)",
            field=f"{field}.target",
        )
    if _read_bool(config, "chap_enabled", field=f"{field}.chap_enabled"):
        if not _read_string(config, "chap_user", field=f"{field}.chap_user"):
            raise InvalidArgument("is required when chap_enabled", field=f"{field}.chap_user")
        password = _read_string(config, "chap_password", field=f"{field}.chap_password")
        if not password:
            raise InvalidArgument("is required when chap_enabled", field=f"{field}.chap_password")
        if len(password) < CHAP_PASSWORD_MIN:
            raise InvalidArgument(
                f"must be at least {CHAP_PASSWORD_MIN} characters (RFC 3720 recommends "
                "CHAP secrets of at least 96 bits)",
                field=f"{field}.chap_password",
            )
    _read_uint(config, "lun", field=f"{field}.lun")
    volume_group = _read_string(config, "volume_group", field=f"{field}.volume_group")
    if volume_group and (volume_group in {".", ".."} or not _LVM_NAME_RE.fullmatch(volume_group)):
        raise InvalidArgument(
            f"{volume_group!r} is not a valid LVM volume group name "
            "(letters, digits, '+', '_', '.', '-', not starting with '-')",
            field=f"{field}.volume_group",
        )


# -- helpers -------------------------------------------------------------------------------


def _to_camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _get_field(message: Mapping[str, Any], name: str) -> Any:
    """Return field ``name`` (snake_case) of a JSON-mapped message, camelCase key first."""
    value = message.get(_to_camel(name))
    return message.get(name) if value is None else value


def _read_string(message: Mapping[str, Any], name: str, *, field: str) -> str:
    value = _get_field(message, name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"must be a string, got {type(value).__name__}", field=field)
    return value


def _read_strings(message: Mapping[str, Any], name: str, *, field: str) -> list[str]:
    value = _get_field(message, name)
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise InvalidArgument("must be a list of strings", field=field)
    if not all(isinstance(item, str) for item in value):
        raise InvalidArgument("must be a list of strings", field=field)
    return list(value)


def _read_bool(message: Mapping[str, Any], name: str, *, field: str) -> bool:
    value = _get_field(message, name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArgument(f"must be a boolean, got {type(value).__name__}", field=field)
    return value


def _read_uint(message: Mapping[str, Any], name: str, *, field: str) -> int:
    """Return an unsigned integer field; 64-bit ones arrive as decimal strings in JSON."""
    value = _get_field(message, name)
    if value is None:
        return 0
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"must be an integer, got {value!r}", field=field)
    if value < 0:
        raise InvalidArgument(f"must be >= 0, got {value}", field=field)
    return value


def _normalise_kind(kind: str | None, *, field: str) -> str | None:
    if kind is None:
        return None
    for snake, camel in CONFIG_KINDS.items():
        if kind in (snake, camel):
            return snake
    raise InvalidArgument(
        f"unknown config {kind!r}; expected one of {', '.join(CONFIG_KINDS)}", field=field
    )


def _parse_backend_type(value: Any, *, field: str) -> BackendType:
    if value is None:
        return BackendType.CEPH_RBD
    if isinstance(value, str):
        try:
            return BackendType[value]
        except KeyError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return BackendType(value)
        except ValueError:
            pass
    names = ", ".join(member.name for member in BackendType)
    raise InvalidArgument(f"unknown backend type {value!r}; expected one of {names}", field=field)


def _check_path(path: str, *, field: str) -> None:
    """Require an absolute, normalised path other than '/', without '..' or NUL."""
    if "\x00" in path:
        raise InvalidArgument("must not contain NUL characters", field=field)
    if not path.startswith("/"):
        raise InvalidArgument(f"must be an absolute path, got {path!r}", field=field)
    if ".." in path.split("/"):
        raise InvalidArgument(f"must not contain '..', got {path!r}", field=field)
    normal = posixpath.normpath(path)
    if normal != path or path.startswith("//"):
        raise InvalidArgument(
            f"must be a normalised path (no '.', empty or trailing '/' parts): "
            f"{path!r}, did you mean {normal.replace('//', '/')!r}?",
            field=field,
        )
    if path == "/":
        raise InvalidArgument("must not be the filesystem root '/'", field=field)


def _is_host(host: str) -> bool:
    """True for an IPv4 or IPv6 address or an RFC 1123 hostname (<= 253 characters)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    if re.fullmatch(r"[0-9.]+", host):
        return False  # looks like an IPv4 address but is not one (e.g. 10.0.0.256)
    return len(host) <= 253 and _HOSTNAME_RE.fullmatch(host) is not None


def _check_endpoint(endpoint: str, *, field: str, port_required: bool) -> None:
    """Require ``host``, ``host:port``, ``[ipv6]`` or ``[ipv6]:port`` (port 1-65535)."""
    what = "host:port" if port_required else "host or host:port"
    bad = InvalidArgument(f"{endpoint!r} must be {what} with port 1-65535", field=field)
    host: str
    port: str | None
    if endpoint.startswith("["):
        inside, sep, rest = endpoint[1:].partition("]")
        if not sep or not isinstance(_parse_ip(inside), ipaddress.IPv6Address):
            raise bad
        host = inside
        if rest == "":
            port = None
        elif rest.startswith(":"):
            port = rest[1:]
        else:
            raise bad
    elif endpoint.count(":") == 1:
        host, _, port = endpoint.partition(":")
    elif ":" in endpoint:
        raise bad  # a bare IPv6 address is ambiguous: write [addr]:port
    else:
        host, port = endpoint, None
    if not host or not _is_host(host):
        raise bad
    if port is None:
        if port_required:
            raise bad
        return
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise bad


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
