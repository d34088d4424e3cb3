"""Validate pool and node definitions before they are stored, as plain data.

Every rule that can be checked without touching a host is checked at the API, and the
error names the offending field in protobuf field-path form, for example
``"spec.backend.local_dir.path: must be an absolute path"``.

The backend configs themselves are checked by :mod:`storage_backends.configs`, the parser
the node's backends run before attaching a pool: one set of rules, so the controller never
stores a pool a node would refuse (docs/architecture.md). This module picks the parser for
the backend type, maps its :class:`~storage_backends.configs.ConfigError` to
:class:`~qvdc.domain.errors.InvalidArgument` under ``spec.backend``, and refuses the types
no node implements yet. Host names follow the same module's RFC 1123 rule, which the node
daemon applies to its own name.

Config input is the config message as the node sees it: proto field names and Python
values (``to_dict(casing=SNAKE, output_format=PYTHON, include_default_values=True)``).

Exceptions: :class:`~qvdc.domain.errors.InvalidArgument` for a malformed definition,
:class:`~qvdc.domain.errors.FailedPrecondition` for a well-formed one this controller cannot
serve yet (LOCAL_LVM, CEPH_CEPHFS).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

from qvdc.domain.errors import FailedPrecondition, InvalidArgument
from qvdc.domain.limits import quote
from qvdc.domain.model import BackendType
from storage_backends import configs

# -- names and labels --------------------------------------------------------------------

#: A pool name is a DNS label (RFC 1123): what hosts use it for (directory names, libvirt
#: pool names, log lines) must never need quoting.
POOL_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
POOL_NAME_MAX = 63

LABEL_KEY_RE = re.compile(r"[A-Za-z0-9._/-]{1,63}")
LABEL_VALUE_MAX = 253

DESCRIPTION_MAX = 1024

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

#: The ``storage_backends`` kind whose parser checks each servable type's config.
BACKEND_KINDS: Mapping[BackendType, str] = {
    BackendType.CEPH_RBD: "ceph_rbd",
    BackendType.LOCAL_DIR: "local_dir",
    BackendType.NFS: "nfs",
    BackendType.ISCSI: "iscsi",
}

#: Types the proto defines but no node backend implements yet.
UNSUPPORTED_BACKENDS = frozenset({BackendType.LOCAL_LVM, BackendType.CEPH_CEPHFS})


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
            f"{quote(name)} is not a DNS label: use lowercase letters, digits and '-', "
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
                f"key {quote(key)} must be 1-63 characters of [A-Za-z0-9._/-]", field=field
            )
        if not isinstance(value, str):
            raise InvalidArgument(f"value of {quote(key)} must be a string", field=field)
        if len(value) > LABEL_VALUE_MAX:
            raise InvalidArgument(
                f"value of {quote(key)} must be at most {LABEL_VALUE_MAX} characters, "
                f"got {len(value)}",
                field=field,
            )


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
    * the config breaks its backend's rules (:func:`storage_backends.configs.parse`, the
      parser the node runs too)                        -> ``InvalidArgument`` naming the
      field (``spec.backend.nfs.server``).
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
    try:
        configs.parse(BACKEND_KINDS[backend_type], config)
    except configs.ConfigError as exc:
        raise InvalidArgument(exc.reason, field=f"{field}.{exc.field}") from exc


def validate_description(description: str, *, field: str = "description") -> None:
    """Raise ``InvalidArgument`` unless ``description`` is at most 1024 characters."""
    if len(description) > DESCRIPTION_MAX:
        raise InvalidArgument(
            f"at most {DESCRIPTION_MAX} characters, got {len(description)}", field=field
        )


def validate_assigned_node_ids(
    node_ids: Sequence[str], *, field: str = "spec.assigned_node_ids"
) -> None:
    """Raise ``InvalidArgument`` naming the entry (``spec.assigned_node_ids[2]``) if a node
    is listed twice. Whether each node exists is the catalog's check, against etcd."""
    seen: set[str] = set()
    for i, node_id in enumerate(node_ids):
        if node_id in seen:
            raise InvalidArgument(f"node {quote(node_id)} listed twice", field=f"{field}[{i}]")
        seen.add(node_id)


def normalize_management_ip(value: str, *, field: str = "management_ip") -> str:
    """``"10.0.0.5"``, ``"10.0.0.5:9090"``, ``"fd00::5"`` or ``"[fd00::5]:9090"`` -> the
    address; ``InvalidArgument`` naming ``field`` for anything else."""
    if not value:
        raise InvalidArgument("is required", field=field)
    host, port = value, ""
    if value.startswith("["):
        end = value.find("]")
        host = value[1:end] if end > 0 else value
        rest = value[end + 1 :] if end > 0 else ""
        if rest:
            if not rest.startswith(":"):
                raise InvalidArgument(f"{quote(value)} is not [address]:port", field=field)
            port = rest[1:]
            _check_port(port, value=value, field=field)
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
        _check_port(port, value=value, field=field)
    try:
        return str(ipaddress.ip_address(host))
    except ValueError as exc:
        raise InvalidArgument(
            f"{quote(value)} is not an IP address (optionally with :port)", field=field
        ) from exc


def _check_port(port: str, *, value: str, field: str) -> None:
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise InvalidArgument(f"port in {quote(value)} must be 1-65535", field=field)


def validate_hostname(hostname: str, *, field: str = "hostname") -> None:
    """Raise ``InvalidArgument`` naming ``field`` unless ``hostname`` is an RFC 1123 host
    name (:func:`storage_backends.configs.is_hostname`, the rule the node daemon applies to
    its own name)."""
    if not hostname:
        raise InvalidArgument("is required", field=field)
    if not configs.is_hostname(hostname):
        raise InvalidArgument(f"{quote(hostname)} is not a valid host name (RFC 1123)", field=field)


# -- helpers -------------------------------------------------------------------------------


def _normalise_kind(kind: str | None, *, field: str) -> str | None:
    if kind is None:
        return None
    for snake, camel in CONFIG_KINDS.items():
        if kind in (snake, camel):
            return snake
    raise InvalidArgument(
        f"unknown config {quote(kind)}; expected one of {', '.join(CONFIG_KINDS)}", field=field
    )
