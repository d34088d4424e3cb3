"""Pool and node validation: each bad input gives the right exception and names its field.

Backend configs are mappings as the node's conversion writes them (proto field names, Python
values); the per-field rules belong to the shared parser and are tested with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from qvdc.domain import errors, validation
from qvdc.domain.model import BackendType
from storage_backends import configs

T = BackendType

NFS_OK = {"server": "nas.example.com", "export_path": "/export/vms"}
CEPH_OK = {"pool_name": "rbd", "monitors": ["10.0.0.1:6789", "mon2"]}
ISCSI_OK = {"portal": "10.0.0.5:3260", "target": "iqn.2024-01.com.example:storage.lun1"}


# --------------------------------------------------------------------------------------------
# Names and labels.


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a", id="one-char"),
        pytest.param("pool-1", id="dashed"),
        pytest.param("0pool9", id="digits-at-ends"),
        pytest.param("a" * 63, id="63-chars"),
    ],
)
def test_valid_pool_names(name: str) -> None:
    validation.validate_pool_name(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("", "name: is required", id="empty"),
        pytest.param("a" * 64, "name: must be at most 63 characters, got 64", id="64-chars"),
        pytest.param("Pool", "name: 'Pool' is not a DNS label", id="uppercase"),
        pytest.param("-pool", "name: '-pool' is not a DNS label", id="leading-dash"),
        pytest.param("pool-", "name: 'pool-' is not a DNS label", id="trailing-dash"),
        pytest.param("my_pool", "name: 'my_pool' is not a DNS label", id="underscore"),
        pytest.param("my.pool", "name: 'my.pool' is not a DNS label", id="dot"),
        pytest.param("my pool", "name: 'my pool' is not a DNS label", id="space"),
    ],
)
def test_invalid_pool_names(name: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.validate_pool_name(name)
    assert caught.value.message.startswith(message)
    assert caught.value.field == "name"


def test_valid_labels() -> None:
    validation.validate_labels(
        {"env": "prod", "example.com/team": "storage", "a" * 63: "v" * 253, "k": ""},
        field="labels",
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        pytest.param({"": "x"}, "labels: key '' must be 1-63 characters", id="empty-key"),
        pytest.param({"a" * 64: "x"}, "labels: key 'aaaa", id="long-key"),
        pytest.param({"bad key": "x"}, "labels: key 'bad key' must be", id="space-in-key"),
        pytest.param({"k=v": "x"}, "labels: key 'k=v' must be", id="equals-in-key"),
        pytest.param(
            {"k": "v" * 254},
            "labels: value of 'k' must be at most 253 characters, got 254",
            id="long-value",
        ),
        pytest.param({"k": 5}, "labels: value of 'k' must be a string", id="non-string-value"),
    ],
)
def test_invalid_labels(labels: Mapping[str, Any], message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.validate_labels(labels, field="labels")
    assert str(caught.value).startswith(message)


# --------------------------------------------------------------------------------------------
# Backends: the type picks the config and its parser; the parser's verdict names the field.
# The per-field rules are tested with the parser, tests/storage_backends/test_configs.py.


@pytest.mark.parametrize(
    ("backend_type", "kind", "config"),
    [
        pytest.param(T.LOCAL_DIR, None, {}, id="local-dir-no-config"),
        pytest.param(T.LOCAL_DIR, "localDir", {}, id="local-dir-camel-kind"),
        pytest.param(T.LOCAL_DIR, "local_dir", {"path": "/srv/a", "capacity_gib": 10}, id="ld"),
        pytest.param(T.NFS, "nfs", NFS_OK, id="nfs"),
        pytest.param(T.CEPH_RBD, "ceph", CEPH_OK, id="ceph"),
        pytest.param(T.ISCSI, "iscsi", ISCSI_OK, id="iscsi"),
    ],
)
def test_valid_backends(backend_type: BackendType, kind: str | None, config: Any) -> None:
    validation.validate_backend(backend_type=backend_type, config_kind=kind, config=config)


INVALID = errors.InvalidArgument
PRECONDITION = errors.FailedPrecondition

BAD_BACKENDS = [
    pytest.param(
        T.NFS,
        "localDir",
        {},
        INVALID,
        "spec.backend: type NFS needs the nfs config, got local_dir",
        id="nfs-with-local-dir-config",
    ),
    pytest.param(
        T.NFS,
        None,
        {},
        INVALID,
        "spec.backend: type NFS needs the nfs config, got none",
        id="nfs-without-config",
    ),
    pytest.param(
        T.CEPH_RBD,
        None,
        {},
        INVALID,
        "spec.backend: type CEPH_RBD needs the ceph config, got none (an unset type means "
        "CEPH_RBD, the zero value)",
        id="unset-type-is-ceph-rbd",
    ),
    pytest.param(
        T.ISCSI, "bogus", {}, INVALID, "spec.backend: unknown config 'bogus'", id="unknown-kind"
    ),
    pytest.param(
        T.LOCAL_LVM,
        "localLvm",
        {"volume_group": "vg"},
        PRECONDITION,
        "spec.backend.type: backend type LOCAL_LVM is not supported by this controller yet",
        id="local-lvm-unsupported",
    ),
    pytest.param(
        T.CEPH_CEPHFS,
        "ceph",
        CEPH_OK,
        PRECONDITION,
        "spec.backend.type: backend type CEPH_CEPHFS is not supported by this controller yet",
        id="cephfs-unsupported",
    ),
    # The parser's verdicts, under spec.backend.
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": "pools/a"},
        INVALID,
        "spec.backend.local_dir.path: must be an absolute path, got 'pools/a'",
        id="local-dir-relative",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {"export_path": "/x"},
        INVALID,
        "spec.backend.nfs.server: is required",
        id="nfs-no-server",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"pool_name": "rbd", "monitors": ["mon1", "mon 2"]},
        INVALID,
        "spec.backend.ceph.monitors[1]: must be host[:port]",
        id="ceph-second-monitor-bad",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"pool_name": "rbd"},
        INVALID,
        "spec.backend.ceph.monitors: needs at least one monitor",
        id="ceph-monitors-required-at-the-controller",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "chap_enabled": True, "chap_user": "u", "chap_password": "elevenchars"},
        INVALID,
        "spec.backend.iscsi.chap_password: must be at least 12 characters",
        id="iscsi-chap-password-short",
    ),
]


@pytest.mark.parametrize(("backend_type", "kind", "config", "exc", "message"), BAD_BACKENDS)
def test_invalid_backends(
    backend_type: BackendType,
    kind: str | None,
    config: Any,
    exc: type[errors.DomainError],
    message: str,
) -> None:
    with pytest.raises(errors.DomainError) as caught:
        validation.validate_backend(backend_type=backend_type, config_kind=kind, config=config)
    assert type(caught.value) is exc
    assert str(caught.value).startswith(message)
    assert caught.value.field is not None
    assert str(caught.value).startswith(caught.value.field + ": ")


def test_every_servable_type_has_a_parser_under_its_oneof_member() -> None:
    """The parser's field prefix is the oneof member the type needs, so the controller's
    field path (``spec.backend.ceph.pool_name``) names a real field."""
    servable = set(BackendType) - validation.UNSUPPORTED_BACKENDS
    assert set(validation.BACKEND_KINDS) == servable
    for backend_type, kind in validation.BACKEND_KINDS.items():
        assert kind in configs.PARSERS
        assert configs.CONFIG_FIELDS[kind] == validation.EXPECTED_CONFIG[backend_type]


# --------------------------------------------------------------------------------------------
# Host names: the parser's RFC 1123 rule, as InvalidArgument.


@pytest.mark.parametrize("hostname", ["hv-1", "hv-1.rack2.example.com", "H1"])
def test_valid_hostnames(hostname: str) -> None:
    validation.validate_hostname(hostname)


@pytest.mark.parametrize(
    ("hostname", "message"),
    [
        pytest.param("", "hostname: is required", id="empty"),
        pytest.param("bad host", "hostname: 'bad host' is not a valid host name", id="space"),
        pytest.param("hv_1", "hostname: 'hv_1' is not a valid host name", id="underscore"),
        pytest.param("a" * 64, "hostname: 'aaaa", id="long-label"),
    ],
)
def test_invalid_hostnames(hostname: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.validate_hostname(hostname)
    assert str(caught.value).startswith(message)
    assert caught.value.field == "hostname"


# --------------------------------------------------------------------------------------------
# Descriptions, assigned nodes, management addresses.


def test_description_length() -> None:
    validation.validate_description("d" * 1024)
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.validate_description("d" * 1025)
    assert str(caught.value) == "description: at most 1024 characters, got 1025"


def test_a_node_listed_twice_is_named_by_its_index() -> None:
    validation.validate_assigned_node_ids(["a", "b"])
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.validate_assigned_node_ids(["a", "b", "a"])
    assert caught.value.field == "spec.assigned_node_ids[2]"
    assert str(caught.value) == "spec.assigned_node_ids[2]: node 'a' listed twice"


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("10.0.0.5:9090", "10.0.0.5"),
        ("fd00::5", "fd00::5"),
        ("[fd00::5]:9090", "fd00::5"),
        ("[FD00:0::5]", "fd00::5"),
    ],
)
def test_management_ip_is_normalised(value: str, address: str) -> None:
    assert validation.normalize_management_ip(value) == address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "management_ip: is required"),
        ("10.0.0.5:http", "management_ip: port in '10.0.0.5:http' must be 1-65535"),
        ("10.0.0.5:0", "management_ip: port in '10.0.0.5:0' must be 1-65535"),
        ("10.0.0.5:65536", "management_ip: port in '10.0.0.5:65536' must be 1-65535"),
        ("[fd00::1]:70000", "management_ip: port in '[fd00::1]:70000' must be 1-65535"),
        ("[fd00::1]x", "management_ip: '[fd00::1]x' is not [address]:port"),
        ("1" * 5000, "management_ip: '" + "1" * 64 + "'… (5000 characters) is not an IP"),
        ("host-1", "management_ip: 'host-1' is not an IP address"),
        ("10.0.0.256", "management_ip: '10.0.0.256' is not an IP address"),
    ],
)
def test_bad_management_ips(value: str, message: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validation.normalize_management_ip(value)
    assert str(caught.value).startswith(message)


# --------------------------------------------------------------------------------------------
# The error classes themselves.


@pytest.mark.parametrize(
    ("cls", "code", "retryable"),
    [
        pytest.param(errors.InvalidArgument, "INVALID_ARGUMENT", False, id="invalid-argument"),
        pytest.param(errors.NotFound, "NOT_FOUND", False, id="not-found"),
        pytest.param(errors.AlreadyExists, "ALREADY_EXISTS", False, id="already-exists"),
        pytest.param(
            errors.FailedPrecondition, "FAILED_PRECONDITION", False, id="failed-precondition"
        ),
        pytest.param(errors.Unavailable, "UNAVAILABLE", True, id="unavailable"),
        pytest.param(errors.Conflict, "ABORTED", True, id="conflict"),
    ],
)
def test_error_classes(cls: type[errors.DomainError], code: str, retryable: bool) -> None:
    with_field = cls("must be an absolute path", field="spec.backend.local_dir.path")
    assert isinstance(with_field, errors.DomainError)
    assert str(with_field) == "spec.backend.local_dir.path: must be an absolute path"
    assert with_field.reason == "must be an absolute path"
    assert with_field.field == "spec.backend.local_dir.path"
    without_field = cls("pool 'x' not found")
    assert str(without_field) == without_field.message == "pool 'x' not found"
    assert without_field.field is None
    assert (cls.code, cls.retryable) == (code, retryable)
