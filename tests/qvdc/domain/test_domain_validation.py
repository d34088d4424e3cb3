"""Pool-definition validation: each bad input gives the right exception and names its field.

Inputs are protobuf JSON mappings as betterproto2 ``to_dict()`` writes them (camelCase keys,
enum names, 64-bit integers as strings); snake_case keys are accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from qvdc.domain import errors, validation
from qvdc.domain.model import BackendType

T = BackendType

NFS_OK = {"server": "nas.example.com", "exportPath": "/export/vms"}
CEPH_OK = {"poolName": "rbd", "monitors": ["10.0.0.1:6789", "mon2"]}
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
# Backends: valid configurations.


@pytest.mark.parametrize(
    ("backend_type", "kind", "config"),
    [
        pytest.param(T.LOCAL_DIR, None, {}, id="local-dir-no-config"),
        pytest.param(T.LOCAL_DIR, "localDir", {}, id="local-dir-empty-config"),
        pytest.param(
            T.LOCAL_DIR,
            "local_dir",
            {"path": "/var/lib/pools/a", "capacityGib": "10"},
            id="local-dir-snake-kind-uint64-string",
        ),
        pytest.param(T.LOCAL_DIR, "localDir", {"capacity_gib": 0}, id="local-dir-snake-key"),
        pytest.param(T.NFS, "nfs", NFS_OK, id="nfs-minimal"),
        pytest.param(
            T.NFS,
            "nfs",
            {
                "server": "10.0.0.2",
                "exportPath": "/",
                "version": "4.1",
                "options": "soft,timeo=100,retrans=2",
                "mountPoint": "/mnt/nfs-a",
            },
            id="nfs-full",
        ),
        pytest.param(T.NFS, "nfs", {**NFS_OK, "version": "4.0"}, id="nfs-4.0"),
        pytest.param(T.CEPH_RBD, "ceph", CEPH_OK, id="ceph-minimal"),
        pytest.param(
            T.CEPH_RBD,
            "ceph",
            {
                "poolName": "vms",
                "monitors": ["[2001:db8::1]:6789", "[2001:db8::2]", "ceph-mon.lan:3300"],
                "user": "libvirt",
                "keyringPath": "/etc/ceph/ceph.client.libvirt.keyring",
                "secretUuid": "2b5a4a3c-2a47-4a8e-9a64-6c0b7b0f7c2e",
            },
            id="ceph-full-ipv6",
        ),
        pytest.param(T.ISCSI, "iscsi", ISCSI_OK, id="iscsi-minimal"),
        pytest.param(
            T.ISCSI,
            "iscsi",
            {
                "portal": "san.example.com:3260",
                "target": "eui.02004567A425678D",
                "chapEnabled": True,
                "chapUser": "qvdc",
                "chapPassword": "twelve-chars",
                "lun": 2,
                "volumeGroup": "qvdc_vg-1",
            },
            id="iscsi-eui-chap",
        ),
        pytest.param(
            T.ISCSI, "iscsi", {**ISCSI_OK, "target": "iqn.2001-04.com.example"}, id="iqn-no-id"
        ),
    ],
)
def test_valid_backends(backend_type: BackendType, kind: str | None, config: Any) -> None:
    validation.validate_backend(backend_type=backend_type, config_kind=kind, config=config)


# --------------------------------------------------------------------------------------------
# Backends: each bad input, its exception type and its field.

INVALID = errors.InvalidArgument
PRECONDITION = errors.FailedPrecondition

BAD_BACKENDS = [
    # Type / config mismatch and unsupported types.
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
        {"volumeGroup": "vg"},
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
    # LOCAL_DIR.
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": "pools/a"},
        INVALID,
        "spec.backend.local_dir.path: must be an absolute path, got 'pools/a'",
        id="local-dir-relative",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": "/var/../etc"},
        INVALID,
        "spec.backend.local_dir.path: must not contain '..'",
        id="local-dir-dotdot",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": "/var//pools/"},
        INVALID,
        "spec.backend.local_dir.path: must be a normalised path",
        id="local-dir-not-normalised",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": "//var/pools"},
        INVALID,
        "spec.backend.local_dir.path: must be a normalised path",
        id="local-dir-double-leading-slash",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": "/var/./pools"},
        INVALID,
        "spec.backend.local_dir.path: must be a normalised path",
        id="local-dir-dot",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": "/"},
        INVALID,
        "spec.backend.local_dir.path: must not be the filesystem root",
        id="local-dir-root",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": "/a\x00b"},
        INVALID,
        "spec.backend.local_dir.path: must not contain NUL",
        id="local-dir-nul",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"path": 7},
        INVALID,
        "spec.backend.local_dir.path: must be a string",
        id="local-dir-path-not-string",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"capacityGib": "-1"},
        INVALID,
        "spec.backend.local_dir.capacity_gib: must be >= 0",
        id="local-dir-negative-capacity",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"capacityGib": "lots"},
        INVALID,
        "spec.backend.local_dir.capacity_gib: must be an integer",
        id="local-dir-capacity-not-integer",
    ),
    pytest.param(
        T.LOCAL_DIR,
        "localDir",
        {"capacityGib": True},
        INVALID,
        "spec.backend.local_dir.capacity_gib: must be an integer",
        id="local-dir-capacity-bool",
    ),
    # NFS.
    pytest.param(
        T.NFS,
        "nfs",
        {"exportPath": "/x"},
        INVALID,
        "spec.backend.nfs.server: is required",
        id="nfs-no-server",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {**NFS_OK, "server": "nas:/export"},
        INVALID,
        "spec.backend.nfs.server: 'nas:/export' must be a hostname or IP address without ':'",
        id="nfs-server-with-path",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {**NFS_OK, "server": "my nas"},
        INVALID,
        "spec.backend.nfs.server: 'my nas' must be a hostname or IP address without ':'",
        id="nfs-server-space",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {**NFS_OK, "server": "nas_1.lan"},
        INVALID,
        "spec.backend.nfs.server: 'nas_1.lan' is not a valid hostname",
        id="nfs-server-underscore",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {**NFS_OK, "server": "10.0.0.256"},
        INVALID,
        "spec.backend.nfs.server: '10.0.0.256' is not a valid hostname",
        id="nfs-server-bad-ipv4",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {"server": "nas"},
        INVALID,
        "spec.backend.nfs.export_path: is required",
        id="nfs-no-export",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {**NFS_OK, "exportPath": "export/vms"},
        INVALID,
        "spec.backend.nfs.export_path: must be an absolute path",
        id="nfs-relative-export",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {**NFS_OK, "version": "5"},
        INVALID,
        "spec.backend.nfs.version: '5' is not a supported NFS version",
        id="nfs-bad-version",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {**NFS_OK, "mountPoint": "mnt/a"},
        INVALID,
        "spec.backend.nfs.mount_point: must be an absolute path",
        id="nfs-relative-mount-point",
    ),
    pytest.param(
        T.NFS,
        "nfs",
        {**NFS_OK, "options": "soft, timeo=100"},
        INVALID,
        "spec.backend.nfs.options: must be a comma-separated list without whitespace",
        id="nfs-options-whitespace",
    ),
    # CEPH_RBD.
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"monitors": ["mon1"]},
        INVALID,
        "spec.backend.ceph.pool_name: is required",
        id="ceph-no-pool",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"poolName": "rbd"},
        INVALID,
        "spec.backend.ceph.monitors: at least one monitor is required",
        id="ceph-no-monitors",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"poolName": "rbd", "monitors": "mon1"},
        INVALID,
        "spec.backend.ceph.monitors: must be a list of strings",
        id="ceph-monitors-not-list",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"poolName": "rbd", "monitors": ["mon1:0"]},
        INVALID,
        "spec.backend.ceph.monitors: 'mon1:0' must be host or host:port with port 1-65535",
        id="ceph-port-zero",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"poolName": "rbd", "monitors": ["mon1:65536"]},
        INVALID,
        "spec.backend.ceph.monitors: 'mon1:65536' must be host or host:port",
        id="ceph-port-too-big",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"poolName": "rbd", "monitors": ["mon1", "mon 2"]},
        INVALID,
        "spec.backend.ceph.monitors: 'mon 2' must be host or host:port",
        id="ceph-second-monitor-bad",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"poolName": "rbd", "monitors": ["2001:db8::1"]},
        INVALID,
        "spec.backend.ceph.monitors: '2001:db8::1' must be host or host:port",
        id="ceph-bare-ipv6-ambiguous",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {"poolName": "rbd", "monitors": ["[mon1]:6789"]},
        INVALID,
        "spec.backend.ceph.monitors: '[mon1]:6789' must be host or host:port",
        id="ceph-brackets-not-ipv6",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {**CEPH_OK, "secretUuid": "not-a-uuid"},
        INVALID,
        "spec.backend.ceph.secret_uuid: 'not-a-uuid' is not a UUID",
        id="ceph-bad-secret-uuid",
    ),
    pytest.param(
        T.CEPH_RBD,
        "ceph",
        {**CEPH_OK, "keyringPath": "ceph.keyring"},
        INVALID,
        "spec.backend.ceph.keyring_path: must be an absolute path",
        id="ceph-relative-keyring",
    ),
    # ISCSI.
    pytest.param(
        T.ISCSI,
        "iscsi",
        {"target": ISCSI_OK["target"]},
        INVALID,
        "spec.backend.iscsi.portal: is required",
        id="iscsi-no-portal",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "portal": "10.0.0.5"},
        INVALID,
        "spec.backend.iscsi.portal: '10.0.0.5' must be host:port with port 1-65535",
        id="iscsi-portal-without-port",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "portal": "10.0.0.5:iscsi"},
        INVALID,
        "spec.backend.iscsi.portal: '10.0.0.5:iscsi' must be host:port",
        id="iscsi-portal-named-port",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {"portal": "10.0.0.5:3260"},
        INVALID,
        "spec.backend.iscsi.target: is required",
        id="iscsi-no-target",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "target": "iqn.2024-13.com.example:x"},
        INVALID,
        "spec.backend.iscsi.target: 'iqn.2024-13.com.example:x' is not an iSCSI name",
        id="iscsi-iqn-bad-month",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "target": "iqn.24-01.com.example"},
        INVALID,
        "spec.backend.iscsi.target: 'iqn.24-01.com.example' is not an iSCSI name",
        id="iscsi-iqn-short-year",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "target": "eui.1234"},
        INVALID,
        "spec.backend.iscsi.target: 'eui.1234' is not an iSCSI name",
        id="iscsi-eui-short",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "target": "storage.lun1"},
        INVALID,
        "spec.backend.iscsi.target: 'storage.lun1' is not an iSCSI name: use an IQN",
        id="iscsi-target-not-a-name",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "chapEnabled": True, "chapPassword": "long-enough-secret"},
        INVALID,
        "spec.backend.iscsi.chap_user: is required when chap_enabled",
        id="iscsi-chap-no-user",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "chapEnabled": True, "chapUser": "u"},
        INVALID,
        "spec.backend.iscsi.chap_password: is required when chap_enabled",
        id="iscsi-chap-no-password",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "chapEnabled": True, "chapUser": "u", "chapPassword": "elevenchars"},
        INVALID,
        "spec.backend.iscsi.chap_password: must be at least 12 characters",
        id="iscsi-chap-password-short",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "chapEnabled": "yes"},
        INVALID,
        "spec.backend.iscsi.chap_enabled: must be a boolean",
        id="iscsi-chap-enabled-not-bool",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "lun": -1},
        INVALID,
        "spec.backend.iscsi.lun: must be >= 0",
        id="iscsi-negative-lun",
    ),
    pytest.param(
        T.ISCSI,
        "iscsi",
        {**ISCSI_OK, "volumeGroup": "-vg"},
        INVALID,
        "spec.backend.iscsi.volume_group: '-vg' is not a valid LVM volume group name",
        id="iscsi-bad-volume-group",
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


def test_chap_fields_are_not_required_without_chap() -> None:
    validation.validate_backend(
        backend_type=T.ISCSI, config_kind="iscsi", config={**ISCSI_OK, "chapPassword": "x"}
    )


# --------------------------------------------------------------------------------------------
# Whole documents.


def create_request(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "name": "vms",
        "labels": {"env": "prod"},
        "spec": {
            "backend": {"type": "NFS", "nfs": dict(NFS_OK)},
            "assignedNodeIds": ["node-a", "node-b"],
        },
    }
    request.update(changes)
    return request


def test_valid_create_request() -> None:
    validation.validate_create_pool(create_request())


def test_valid_create_request_snake_case_and_numeric_type() -> None:
    validation.validate_create_pool(
        {
            "name": "local",
            "spec": {
                "backend": {"type": 3, "local_dir": {"path": "/srv/pool"}},
                "assigned_node_ids": ["n1"],
            },
        }
    )


@pytest.mark.parametrize(
    ("request_", "exc", "message"),
    [
        pytest.param(create_request(name=""), INVALID, "name: is required", id="no-name"),
        pytest.param(create_request(name=5), INVALID, "name: is required", id="name-not-string"),
        pytest.param(
            create_request(labels={"bad key": "v"}), INVALID, "labels: key 'bad key'", id="labels"
        ),
        pytest.param(create_request(spec=None), INVALID, "spec: is required", id="no-spec"),
        pytest.param(
            create_request(spec={"assignedNodeIds": []}),
            INVALID,
            "spec.backend: is required",
            id="no-backend",
        ),
        pytest.param(
            create_request(spec={"backend": {}}),
            INVALID,
            "spec.backend: type CEPH_RBD needs the ceph config, got none",
            id="empty-backend-is-ceph-rbd",
        ),
        pytest.param(
            create_request(spec={"backend": {"type": "ZFS"}}),
            INVALID,
            "spec.backend.type: unknown backend type 'ZFS'",
            id="unknown-type-name",
        ),
        pytest.param(
            create_request(spec={"backend": {"type": 9}}),
            INVALID,
            "spec.backend.type: unknown backend type 9",
            id="unknown-type-number",
        ),
        pytest.param(
            create_request(
                spec={"backend": {"type": "NFS", "nfs": NFS_OK, "localDir": {"path": "/a"}}}
            ),
            INVALID,
            "spec.backend: only one config may be set, got local_dir and nfs",
            id="two-configs",
        ),
        pytest.param(
            create_request(spec={"backend": {"type": "NFS", "nfs": "nas:/x"}}),
            INVALID,
            "spec.backend.nfs: must be a message",
            id="config-not-a-message",
        ),
        pytest.param(
            create_request(
                spec={"backend": {"type": "NFS", "nfs": {"server": "nas", "exportPath": "x"}}}
            ),
            INVALID,
            "spec.backend.nfs.export_path: must be an absolute path",
            id="nested-backend-rule",
        ),
        pytest.param(
            create_request(
                spec={"backend": {"type": "LOCAL_LVM", "localLvm": {"volumeGroup": "vg"}}}
            ),
            PRECONDITION,
            "spec.backend.type: backend type LOCAL_LVM is not supported",
            id="unsupported-type",
        ),
        pytest.param(
            create_request(
                spec={"backend": {"type": "NFS", "nfs": NFS_OK}, "assignedNodeIds": ["a", "a"]}
            ),
            INVALID,
            "spec.assigned_node_ids: node id 'a' is listed twice",
            id="duplicate-node",
        ),
        pytest.param(
            create_request(
                spec={"backend": {"type": "NFS", "nfs": NFS_OK}, "assignedNodeIds": [""]}
            ),
            INVALID,
            "spec.assigned_node_ids: node id '' must be non-empty",
            id="empty-node-id",
        ),
    ],
)
def test_invalid_create_requests(
    request_: dict[str, Any], exc: type[errors.DomainError], message: str
) -> None:
    with pytest.raises(errors.DomainError) as caught:
        validation.validate_create_pool(request_)
    assert type(caught.value) is exc
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
