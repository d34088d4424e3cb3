"""Good and bad pool backend configs, per kind: one table for every side that judges them.

``tests/storage_backends/test_configs.py`` checks the parser against it; the API tests
check that the controller's CreatePool verdict over gRPC is the parser's verdict, and the
backend contract that each backend's ``validate`` agrees. Configs are written as the
node's conversion hands them over: proto field names, Python values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

IQN = "iqn.2024-01.com.example:storage.lun1"
NFS_OK: dict[str, Any] = {"server": "nas.example.com", "export_path": "/export/vms"}
CEPH_OK: dict[str, Any] = {"pool_name": "rbd", "monitors": ["10.0.0.1:6789", "mon2"]}
ISCSI_OK: dict[str, Any] = {"portal": "10.0.0.5:3260", "target": IQN}


@dataclass(frozen=True)
class Case:
    """``kind``: a ``storage_backends.configs.PARSERS`` key. ``field``: the field a bad
    config is rejected for (``nfs.server``), None for a good one; ``reason``: how the
    reason starts."""

    kind: str
    config: dict[str, Any]
    field: str | None = None
    reason: str = ""


def good(kind: str, config: dict[str, Any], *, id: str) -> Any:
    return pytest.param(Case(kind, config), id=id)


def bad(kind: str, config: dict[str, Any], field: str, reason: str, *, id: str) -> Any:
    return pytest.param(Case(kind, config, field, reason), id=id)


GOOD = [
    good("local_dir", {}, id="local-dir-empty"),
    good("local_dir", {"path": "", "capacity_gib": 0}, id="local-dir-proto-defaults"),
    good("local_dir", {"path": "/var/lib/pools/a", "capacity_gib": 10}, id="local-dir-full"),
    good(
        "local_dir",
        {"path": "/mnt/disk/images", "mount_point": "/mnt/disk", "create_path": False},
        id="local-dir-mount-point",
    ),
    good("local_dir", {"path": "/mnt/disk", "require_mountpoint": True}, id="local-dir-is-mount"),
    good(
        "local_dir", {"require_mountpoint": True, "create_path": True}, id="local-dir-default-mnt"
    ),
    good("nfs", NFS_OK, id="nfs-minimal"),
    good(
        "nfs",
        {
            "server": "10.0.0.2",
            "export_path": "/",
            "version": "4.1",
            "options": "soft,timeo=100,retrans=2",
            "mount_point": "/mnt/nfs-a",
        },
        id="nfs-full",
    ),
    good("nfs", {**NFS_OK, "version": "", "options": "", "mount_point": ""}, id="nfs-defaults"),
    good("nfs", {**NFS_OK, "version": "3"}, id="nfs-v3"),
    good("nfs", {**NFS_OK, "create_path": False}, id="nfs-no-create-path"),
    good("nfs", {**NFS_OK, "options": "hard,,noatime"}, id="nfs-empty-option-item"),
    good("ceph_rbd", CEPH_OK, id="ceph-minimal"),
    good(
        "ceph_rbd",
        {
            "pool_name": "vms",
            "monitors": ["[2001:db8::1]:6789", "[2001:db8::2]", "ceph-mon.lan:3300"],
            "user": "libvirt",
            "keyring_path": "/etc/ceph/ceph.client.libvirt.keyring",
            "namespace": "tenant-a",
            "secret_uuid": "2b5a4a3c-2a47-4a8e-9a64-6c0b7b0f7c2e",
            "cluster_id": "prod",
        },
        id="ceph-full-ipv6",
    ),
    good("iscsi", ISCSI_OK, id="iscsi-minimal"),
    good("iscsi", {**ISCSI_OK, "portal": "10.0.0.5"}, id="iscsi-default-port"),
    good(
        "iscsi",
        {
            "portal": "san.example.com:3260",
            "target": "eui.02004567A425678D",
            "chap_enabled": True,
            "chap_user": "qvdc",
            "chap_password": "twelve-chars",
            "lun": 2,
            "volume_group": "qvdc_vg-1",
        },
        id="iscsi-eui-chap",
    ),
    good("iscsi", {**ISCSI_OK, "target": "iqn.2001-04.com.example"}, id="iscsi-iqn-no-id"),
    good("iscsi", {**ISCSI_OK, "target": "naa.6001405abcdef0123456789abcdef012"}, id="iscsi-naa"),
    good("iscsi", {**ISCSI_OK, "chap_password": "x"}, id="iscsi-chap-fields-unused-without-chap"),
]

BAD = [
    # local_dir
    bad(
        "local_dir", {"path": "pools/a"}, "local_dir.path", "must be an absolute path", id="ld-rel"
    ),
    bad(
        "local_dir", {"path": "/var/../etc"}, "local_dir.path", "must be normalised", id="ld-dotdot"
    ),
    bad("local_dir", {"path": "/var//p/"}, "local_dir.path", "must be normalised", id="ld-slashes"),
    bad(
        "local_dir", {"path": "//var/p"}, "local_dir.path", "must be normalised", id="ld-2-leading"
    ),
    bad("local_dir", {"path": "/var/./p"}, "local_dir.path", "must be normalised", id="ld-dot"),
    bad(
        "local_dir",
        {"path": "/srv/pool", "mount_point": "/srv/poo"},
        "local_dir.mount_point",
        "must be local_dir.path or one of its parents",
        id="ld-mount-point-outside",
    ),
    bad(
        "local_dir",
        {"mount_point": "/mnt/disk"},
        "local_dir.mount_point",
        "needs local_dir.path to be set",
        id="ld-mount-point-no-path",
    ),
    bad(
        "local_dir",
        {"path": "/mnt/d", "mount_point": "mnt"},
        "local_dir.mount_point",
        "must be an absolute path",
        id="ld-mount-point-relative",
    ),
    bad(
        "local_dir",
        {"require_mountpoint": "yes"},
        "local_dir.require_mountpoint",
        "must be true or false",
        id="ld-require-mountpoint-string",
    ),
    bad(
        "local_dir",
        {"create_path": 1},
        "local_dir.create_path",
        "must be true or false",
        id="ld-cp-int",
    ),
    bad("local_dir", {"path": "/var/p/"}, "local_dir.path", "must be normalised", id="ld-trailing"),
    bad(
        "local_dir",
        {"path": "/"},
        "local_dir.path",
        "must not be the filesystem root",
        id="ld-root",
    ),
    bad(
        "local_dir", {"path": "/a\x00b"}, "local_dir.path", "must not contain control", id="ld-nul"
    ),
    bad("local_dir", {"path": 7}, "local_dir.path", "must be a string", id="ld-path-int"),
    bad("local_dir", {"capacity_gib": -1}, "local_dir.capacity_gib", "must be >= 0", id="ld-neg"),
    bad(
        "local_dir",
        {"capacity_gib": "10"},
        "local_dir.capacity_gib",
        "must be an integer",
        id="ld-str",
    ),
    bad(
        "local_dir",
        {"capacity_gib": 1.5},
        "local_dir.capacity_gib",
        "must be an integer",
        id="ld-float",
    ),
    bad(
        "local_dir",
        {"capacity_gib": True},
        "local_dir.capacity_gib",
        "must be an integer",
        id="ld-bool",
    ),
    # nfs
    bad("nfs", {"export_path": "/x"}, "nfs.server", "is required", id="nfs-no-server"),
    bad(
        "nfs",
        {**NFS_OK, "server": "nas:/export"},
        "nfs.server",
        "must be a hostname",
        id="nfs-srv-path",
    ),
    bad(
        "nfs",
        {**NFS_OK, "server": "nas:2049"},
        "nfs.server",
        "must be a hostname",
        id="nfs-srv-port",
    ),
    bad(
        "nfs",
        {**NFS_OK, "server": "my nas"},
        "nfs.server",
        "must be a hostname",
        id="nfs-srv-space",
    ),
    bad(
        "nfs",
        {**NFS_OK, "server": "nas_1.lan"},
        "nfs.server",
        "must be a hostname",
        id="nfs-srv-underscore",
    ),
    bad(
        "nfs",
        {**NFS_OK, "server": "10.0.0.256"},
        "nfs.server",
        "must be a hostname",
        id="nfs-srv-bad-ipv4",
    ),
    bad(
        "nfs",
        {**NFS_OK, "server": "a" * 64 + ".lan"},
        "nfs.server",
        "must be a hostname",
        id="nfs-srv-long-label",
    ),
    bad("nfs", {**NFS_OK, "server": 7}, "nfs.server", "must be a string", id="nfs-srv-int"),
    bad("nfs", {"server": "nas"}, "nfs.export_path", "is required", id="nfs-no-export"),
    bad(
        "nfs",
        {**NFS_OK, "export_path": "export/vms"},
        "nfs.export_path",
        "must be an absolute",
        id="nfs-export-rel",
    ),
    bad(
        "nfs",
        {**NFS_OK, "export_path": "/a\nb"},
        "nfs.export_path",
        "must be an absolute",
        id="nfs-export-ctl",
    ),
    bad("nfs", {**NFS_OK, "version": "5"}, "nfs.version", "must be one of 3, 4, 4.0", id="nfs-v5"),
    bad(
        "nfs",
        {**NFS_OK, "mount_point": "mnt/a"},
        "nfs.mount_point",
        "must be an absolute",
        id="nfs-mp-rel",
    ),
    bad(
        "nfs",
        {**NFS_OK, "mount_point": "/mnt/../a"},
        "nfs.mount_point",
        "must be normalised",
        id="nfs-mp-dotdot",
    ),
    bad(
        "nfs",
        {**NFS_OK, "mount_point": "/"},
        "nfs.mount_point",
        "must not be the filesystem root",
        id="nfs-mp-root",
    ),
    bad(
        "nfs",
        {**NFS_OK, "options": "soft, timeo=100"},
        "nfs.options",
        "must be a comma-separated",
        id="nfs-opt-space",
    ),
    bad(
        "nfs",
        {**NFS_OK, "options": "hard,nfsvers=3"},
        "nfs.options",
        "must not set the protocol",
        id="nfs-opt-vers",
    ),
    # ceph_rbd
    bad("ceph_rbd", {"monitors": ["mon1"]}, "ceph.pool_name", "is required", id="ceph-no-pool"),
    bad(
        "ceph_rbd",
        {**CEPH_OK, "pool_name": "a/b"},
        "ceph.pool_name",
        "must not contain",
        id="ceph-pool-slash",
    ),
    bad(
        "ceph_rbd",
        {**CEPH_OK, "pool_name": " rbd"},
        "ceph.pool_name",
        "must not contain",
        id="ceph-pool-space",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd"},
        "ceph.monitors",
        "needs at least one monitor",
        id="ceph-no-monitors",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd", "monitors": []},
        "ceph.monitors",
        "needs at least one",
        id="ceph-empty-monitors",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd", "monitors": "mon1"},
        "ceph.monitors",
        "must be a list",
        id="ceph-monitors-str",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd", "monitors": ["mon1:0"]},
        "ceph.monitors[0]",
        "must be host[:port] with port 1-65535",
        id="ceph-port-0",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd", "monitors": ["mon1:65536"]},
        "ceph.monitors[0]",
        "must be host[:port]",
        id="ceph-port-big",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd", "monitors": ["mon1:"]},
        "ceph.monitors[0]",
        "must be host[:port]",
        id="ceph-port-empty",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd", "monitors": ["mon1", "mon 2"]},
        "ceph.monitors[1]",
        "must be host[:port]",
        id="ceph-2nd-bad",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd", "monitors": ["2001:db8::1"]},
        "ceph.monitors[0]",
        "must be host[:port]: write IPv6",
        id="ceph-bare-ipv6",
    ),
    bad(
        "ceph_rbd",
        {"pool_name": "rbd", "monitors": ["[mon1]:6789"]},
        "ceph.monitors[0]",
        "must be host[:port]",
        id="ceph-brackets-not-ipv6",
    ),
    bad(
        "ceph_rbd",
        {**CEPH_OK, "user": "client.admin"},
        "ceph.user",
        "is the client id without",
        id="ceph-user-prefix",
    ),
    bad(
        "ceph_rbd",
        {**CEPH_OK, "user": "ad min"},
        "ceph.user",
        "must be a plain client id",
        id="ceph-user-space",
    ),
    bad(
        "ceph_rbd",
        {**CEPH_OK, "keyring_path": "ceph.keyring"},
        "ceph.keyring_path",
        "must be an absolute",
        id="ceph-keyring-rel",
    ),
    bad(
        "ceph_rbd",
        {**CEPH_OK, "namespace": "a@b"},
        "ceph.namespace",
        "must not contain",
        id="ceph-namespace-at",
    ),
    bad(
        "ceph_rbd",
        {**CEPH_OK, "secret_uuid": "not-a-uuid"},
        "ceph.secret_uuid",
        "must be a UUID",
        id="ceph-secret",
    ),
    # iscsi
    bad("iscsi", {"target": IQN}, "iscsi.portal", "is required", id="iscsi-no-portal"),
    bad(
        "iscsi",
        {**ISCSI_OK, "portal": "10.0.0.5:iscsi"},
        "iscsi.portal",
        "must be host[:port]",
        id="iscsi-named-port",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "portal": "10.0.0.5:0"},
        "iscsi.portal",
        "must be host[:port]",
        id="iscsi-port-0",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "portal": "fd00::5:3260"},
        "iscsi.portal",
        "must be host[:port]: write IPv6",
        id="iscsi-bare-ipv6",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "portal": "bad_host:3260"},
        "iscsi.portal",
        "must be host[:port]",
        id="iscsi-bad-host",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "portal": "10.0.0.5:3260,1"},
        "iscsi.portal",
        "must be host[:port]",
        id="iscsi-tpgt",
    ),
    bad("iscsi", {"portal": "10.0.0.5:3260"}, "iscsi.target", "is required", id="iscsi-no-target"),
    bad(
        "iscsi",
        {**ISCSI_OK, "target": "iqn.2024-13.com.example:x"},
        "iscsi.target",
        "must be an iSCSI name",
        id="iscsi-iqn-month",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "target": "iqn.24-01.com.example"},
        "iscsi.target",
        "must be an iSCSI name",
        id="iscsi-iqn-year",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "target": "eui.1234"},
        "iscsi.target",
        "must be an iSCSI name",
        id="iscsi-eui-short",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "target": "storage.lun1"},
        "iscsi.target",
        "must be an iSCSI name",
        id="iscsi-not-a-name",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "chap_enabled": True, "chap_password": "long-enough-secret"},
        "iscsi.chap_user",
        "is required when chap_enabled",
        id="iscsi-chap-no-user",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "chap_enabled": True, "chap_user": "u"},
        "iscsi.chap_password",
        "is required when chap_enabled",
        id="iscsi-chap-no-password",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "chap_enabled": True, "chap_user": "u", "chap_password": "elevenchars"},
        "iscsi.chap_password",
        "must be at least 12 characters",
        id="iscsi-chap-short",
    ),
    bad(
        "iscsi",
        {
            **ISCSI_OK,
            "chap_enabled": True,
            "chap_user": "a u",
            "chap_password": "long-enough-secret",
        },
        "iscsi.chap_user",
        "must not contain whitespace",
        id="iscsi-chap-user-space",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "chap_enabled": "yes"},
        "iscsi.chap_enabled",
        "must be true or false",
        id="iscsi-chap-str",
    ),
    bad("iscsi", {**ISCSI_OK, "lun": -1}, "iscsi.lun", "must be in [0, 16383]", id="iscsi-lun-neg"),
    bad(
        "iscsi",
        {**ISCSI_OK, "lun": 16384},
        "iscsi.lun",
        "must be in [0, 16383]",
        id="iscsi-lun-big",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "volume_group": "-vg"},
        "iscsi.volume_group",
        "must be a valid LVM",
        id="iscsi-vg",
    ),
    bad(
        "iscsi",
        {**ISCSI_OK, "volume_group": 7},
        "iscsi.volume_group",
        "must be a string",
        id="iscsi-vg-int",
    ),
]
