"""The iSCSI backend against a real tgtd (session fixture), plus the iscsiadm command contract.

Everything that crosses the wire is real: SendTargets discovery, logins with
and without CHAP, REPORT LUNS, READ CAPACITY(16) on sparse file LUNs served
by tgtd. The one thing this machine cannot do is a kernel login, so
:class:`IscsiadmInitiator` runs against :class:`FakeIscsiadm`, a recording
runner that keeps iscsiadm's session table; tests assert the exact commands,
including the CHAP password upstream never set, and that the password never
reaches a log line or an error message.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from storage_backends import _libiscsi, base, iscsi
from tests.fixtures.iscsi import (
    CHAP_IQN,
    CHAP_LUN_SIZE,
    CHAP_PASSWORD,
    CHAP_USER,
    PLAIN_IQN,
    PLAIN_LUN_SIZE,
    Target,
    TgtServer,
    scratch_target_fixture,  # noqa: F401
    tgtd_fixture,  # noqa: F401
)

TIMEOUT = 2.0
MIB = 1024 * 1024


def spec(pool_id: str = "p1", /, **config: object) -> base.PoolSpec:
    return base.PoolSpec(pool_id=pool_id, kind="iscsi", config=config)


def plain_spec(server: TgtServer, pool_id: str = "p1", **overrides: object) -> base.PoolSpec:
    return spec(pool_id, **{"portal": server.portal, "target": PLAIN_IQN, "lun": 1, **overrides})


def chap_spec(server: TgtServer, pool_id: str = "p1", **overrides: object) -> base.PoolSpec:
    config = {
        "portal": server.portal,
        "target": CHAP_IQN,
        "lun": 1,
        "chap_enabled": True,
        "chap_user": CHAP_USER,
        "chap_password": CHAP_PASSWORD,
    }
    return spec(pool_id, **{**config, **overrides})


@pytest.fixture
def backend() -> iscsi.IscsiBackend:
    return iscsi.IscsiBackend(initiator=iscsi.UserspaceInitiator())


# -- a recording iscsiadm ------------------------------------------------------------


@dataclass
class FakeIscsiadm:
    """Records argv lists and answers like iscsiadm, keeping its session table.

    ``overrides`` maps a predicate on argv to a scripted ``(rc, stdout, stderr)``.
    """

    calls: list[list[str]] = field(default_factory=list)
    sessions: set[tuple[str, str]] = field(default_factory=set)
    overrides: list[tuple[Callable[[list[str]], bool], tuple[int, bytes, bytes]]] = field(
        default_factory=list
    )
    hang: bool = False

    def fail(self, when: Callable[[list[str]], bool], rc: int, stderr: str = "") -> None:
        self.overrides.append((when, (rc, b"", stderr.encode())))

    async def __call__(self, argv: Sequence[str], *, timeout: float) -> tuple[int, bytes, bytes]:
        args = list(argv)
        self.calls.append(args)
        assert timeout > 0
        if self.hang:
            raise base.BackendTimeout(f"run {args[0]}: timed out after {timeout:g}s")
        for when, result in self.overrides:
            if when(args):
                return result
        if args[1:3] == ["-m", "session"]:
            if not self.sessions:
                return iscsi.ISCSIADM_NO_OBJECTS_FOUND, b"", b"iscsiadm: No active sessions.\n"
            lines = [
                f"tcp: [{i}] {portal},1 {target} (non-flash)"
                for i, (portal, target) in enumerate(sorted(self.sessions), 1)
            ]
            return 0, ("\n".join(lines) + "\n").encode(), b""
        if args[1:3] == ["-m", "node"] and args[-1] in ("-l", "-u"):
            key = (args[args.index("-p") + 1], args[args.index("-T") + 1])
            if args[-1] == "-l":
                if key in self.sessions:
                    return iscsi.ISCSIADM_SESSION_EXISTS, b"", b"session exists\n"
                self.sessions.add(key)
            else:
                if key not in self.sessions:
                    return iscsi.ISCSIADM_NO_OBJECTS_FOUND, b"", b"No matching sessions\n"
                self.sessions.discard(key)
        return 0, b"", b""


@pytest.fixture
def iscsiadm() -> FakeIscsiadm:
    return FakeIscsiadm()


@pytest.fixture
def kernel_backend(iscsiadm: FakeIscsiadm) -> iscsi.IscsiBackend:
    initiator = iscsi.IscsiadmInitiator(runner=iscsiadm, path_exists=lambda path: True)
    return iscsi.IscsiBackend(initiator=initiator)


def node_command(server: TgtServer, target: str, *tail: str) -> list[str]:
    return ["iscsiadm", "-m", "node", "-T", target, "-p", server.portal, *tail]


# -- construction and validation ---------------------------------------------------------


def test_backend_and_initiators_satisfy_their_protocols(backend: iscsi.IscsiBackend) -> None:
    assert isinstance(backend, base.StorageBackend)
    assert backend.kind == "iscsi"
    assert isinstance(iscsi.UserspaceInitiator(), iscsi.Initiator)
    assert isinstance(iscsi.IscsiadmInitiator(), iscsi.Initiator)


def test_default_initiator_is_iscsiadm_only_where_it_is_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert isinstance(iscsi.IscsiBackend().initiator, iscsi.UserspaceInitiator)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    assert isinstance(iscsi.IscsiBackend().initiator, iscsi.IscsiadmInitiator)


def test_initiator_name_comes_from_the_host_file_when_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "initiatorname.iscsi"
    monkeypatch.setattr(iscsi.targets, "HOST_INITIATOR_NAME_FILE", str(path))
    userspace = iscsi.UserspaceInitiator()
    assert iscsi.IscsiBackend(initiator=userspace).initiator_name == iscsi.DEFAULT_INITIATOR_NAME
    path.write_text("## comment\nInitiatorName=iqn.1993-08.org.debian:01:abc\n")
    assert iscsi.IscsiBackend(initiator=userspace).initiator_name == "iqn.1993-08.org.debian:01:abc"
    path.write_text("InitiatorName=GenerateName=yes\n")  # unusable: fall back, do not fail
    assert iscsi.IscsiBackend(initiator=userspace).initiator_name == iscsi.DEFAULT_INITIATOR_NAME
    named = iscsi.IscsiBackend(
        initiator=iscsi.UserspaceInitiator(), initiator_name="iqn.2026-01.x:y"
    )
    assert named.initiator_name == "iqn.2026-01.x:y"
    with pytest.raises(base.InvalidConfig, match="initiator_name"):
        iscsi.IscsiBackend(initiator=iscsi.UserspaceInitiator(), initiator_name="node-7")


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("10.0.0.5:3260", "10.0.0.5:3260"),
        ("10.0.0.5", "10.0.0.5:3260"),
        ("san.example.com:3261", "san.example.com:3261"),
        ("[fd00::5]:3260", "[fd00::5]:3260"),
        ("[::1]", "[::1]:3260"),
        ("127.0.0.1:03260", "127.0.0.1:3260"),
    ],
)
def test_portal_is_normalized_to_host_and_port(raw: str, normalized: str) -> None:
    assert iscsi.normalize_portal(raw) == normalized


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"target": PLAIN_IQN}, r"^iscsi\.portal is required"),
        ({"portal": "10.0.0.5:0", "target": PLAIN_IQN}, r"^iscsi\.portal must be .* port 1-65535"),
        ({"portal": "10.0.0.5:http", "target": PLAIN_IQN}, r"^iscsi\.portal must be .* 1-65535"),
        ({"portal": "fd00::5:3260", "target": PLAIN_IQN}, r"^iscsi\.portal .* IPv6 .* \[addr\]"),
        ({"portal": "[fd00::zz]:3260", "target": PLAIN_IQN}, r"^iscsi\.portal must be host"),
        ({"portal": "10.0.0.5:3260,1", "target": PLAIN_IQN}, r"^iscsi\.portal must be host"),
        ({"portal": "bad_host:3260", "target": PLAIN_IQN}, r"^iscsi\.portal must be host"),
        ({"portal": "10.0.0.5"}, r"^iscsi\.target is required"),
        ({"portal": "10.0.0.5", "target": "pool1"}, r"^iscsi\.target must be an iSCSI name"),
        ({"portal": "10.0.0.5", "target": "iqn.2026-13.x:y"}, r"^iscsi\.target must be"),
        ({"portal": "10.0.0.5", "target": PLAIN_IQN, "lun": -1}, r"^iscsi\.lun must be"),
        ({"portal": "10.0.0.5", "target": PLAIN_IQN, "lun": "1"}, r"^iscsi\.lun must be"),
        ({"portal": "10.0.0.5", "target": PLAIN_IQN, "lun": True}, r"^iscsi\.lun must be"),
        ({"portal": "10.0.0.5", "target": PLAIN_IQN, "lun": 16384}, r"^iscsi\.lun must be"),
        (
            {"portal": "10.0.0.5", "target": PLAIN_IQN, "chap_enabled": "yes"},
            r"^iscsi\.chap_enabled must be",
        ),
        (
            {"portal": "10.0.0.5", "target": PLAIN_IQN, "chap_enabled": True, "chap_password": "x"},
            r"^iscsi\.chap_user is required when chap_enabled",
        ),
        (
            {"portal": "10.0.0.5", "target": PLAIN_IQN, "chap_enabled": True, "chap_user": "u"},
            r"^iscsi\.chap_password is required when chap_enabled",
        ),
        (
            {"portal": "10.0.0.5", "target": PLAIN_IQN, "volume_group": 7},
            r"^iscsi\.volume_group must be a string",
        ),
    ],
)
def test_validate_names_the_bad_field(
    backend: iscsi.IscsiBackend, config: dict[str, object], message: str
) -> None:
    with pytest.raises(base.InvalidConfig, match=message):
        backend.validate(spec(**config))


def test_validate_accepts_proto_defaults_and_other_name_formats(
    backend: iscsi.IscsiBackend,
) -> None:
    # What node.convert hands over for an IscsiConfig with defaults filled in.
    full = {
        "portal": "10.0.0.5:3260",
        "target": PLAIN_IQN,
        "chap_enabled": False,
        "chap_user": "",
        "chap_password": "",
        "lun": 0,
        "volume_group": "",
    }
    backend.validate(spec(**full))
    backend.validate(spec(portal="10.0.0.5", target="eui.0123456789abcdef"))
    backend.validate(spec(portal="10.0.0.5", target="naa.6001405abcdef0123456789abcdef012"))
    config = iscsi.parse_config(
        spec(**{**full, "chap_enabled": True, "chap_user": "u", "chap_password": "s3cret-password"})
    )
    assert config.chap == _libiscsi.Credentials(user="u", password="s3cret-password")
    assert "s3cret-password" not in repr(config)


def test_a_non_string_password_is_not_echoed(backend: iscsi.IscsiBackend) -> None:
    with pytest.raises(base.InvalidConfig) as caught:
        backend.validate(spec(portal="10.0.0.5", target=PLAIN_IQN, chap_password=123456789012))
    assert "123456789012" not in str(caught.value)


async def test_attach_rejects_a_bad_spec_before_any_io(backend: iscsi.IscsiBackend) -> None:
    with pytest.raises(base.InvalidConfig):
        await backend.attach(spec(portal="10.0.0.5"), timeout=TIMEOUT)


# -- attach, probe, list, detach against the real tgtd ------------------------------------


async def test_attach_measures_the_lun_exactly(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    info = await backend.attach(plain_spec(tgtd), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.error_message == ""
    # READ CAPACITY(16) of the 256 MiB sparse file: exact, no rounding.
    assert info.total_bytes == PLAIN_LUN_SIZE
    assert info.available_bytes == PLAIN_LUN_SIZE
    assert info.used_bytes == 0
    assert info.volume_count == 1  # LUN 1; tgtd's controller LUN 0 is not a volume
    assert info.mount_path == f"iscsi://{tgtd.portal}/{PLAIN_IQN}/1"
    assert (info.pool_id, info.kind) == ("p1", "iscsi")


async def test_attach_is_idempotent(backend: iscsi.IscsiBackend, tgtd: TgtServer) -> None:
    first = await backend.attach(plain_spec(tgtd), timeout=TIMEOUT)
    second = await backend.attach(plain_spec(tgtd), timeout=TIMEOUT)
    assert second.health is base.PoolHealth.HEALTHY, second.error_message
    assert second.mount_path == first.mount_path
    assert second.total_bytes == first.total_bytes


async def test_attach_fails_when_the_portal_does_not_offer_the_target(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    missing = "iqn.2026-01.io.quantix.test:missing"
    with pytest.raises(base.MountError) as caught:
        await backend.attach(plain_spec(tgtd, target=missing), timeout=TIMEOUT)
    assert str(caught.value) == (
        f"target {missing} not offered by portal {tgtd.portal}; offered: [{CHAP_IQN}, {PLAIN_IQN}]"
    )
    assert (
        await backend.initiator.session_exists(portal=tgtd.portal, target=missing, timeout=TIMEOUT)
        is False
    )


async def test_detach_is_idempotent_and_reattach_works(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    pool = plain_spec(tgtd)
    await backend.attach(pool, timeout=TIMEOUT)
    await backend.detach(pool, timeout=TIMEOUT)
    assert not await backend.initiator.session_exists(
        portal=tgtd.portal, target=PLAIN_IQN, timeout=TIMEOUT
    )
    await backend.detach(pool, timeout=TIMEOUT)
    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_detach_keeps_the_session_while_another_pool_uses_the_target(
    kernel_backend: iscsi.IscsiBackend, iscsiadm: FakeIscsiadm, tgtd: TgtServer
) -> None:
    one, two = plain_spec(tgtd, "p1"), plain_spec(tgtd, "p2")
    await kernel_backend.attach(one, timeout=TIMEOUT)
    await kernel_backend.attach(two, timeout=TIMEOUT)  # login answers "session exists": fine
    await kernel_backend.detach(one, timeout=TIMEOUT)
    assert node_command(tgtd, PLAIN_IQN, "-u") not in iscsiadm.calls
    info = await kernel_backend.probe(two, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    await kernel_backend.detach(two, timeout=TIMEOUT)
    assert iscsiadm.calls[-1] == node_command(tgtd, PLAIN_IQN, "-u")
    assert iscsiadm.sessions == set()


async def test_a_session_lost_underneath_is_unmounted_until_reattached(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    pool = plain_spec(tgtd)
    await backend.attach(pool, timeout=TIMEOUT)
    await backend.initiator.logout(portal=tgtd.portal, target=PLAIN_IQN, timeout=TIMEOUT)
    info = await backend.probe(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert info.error_message.startswith(f"no iSCSI session to {PLAIN_IQN} on portal {tgtd.portal}")
    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message


async def test_probe_without_attach_still_measures(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    info = await backend.probe(plain_spec(tgtd), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.total_bytes == PLAIN_LUN_SIZE


async def test_volume_count_and_list_follow_the_targets_luns(
    backend: iscsi.IscsiBackend, tgtd: TgtServer, scratch_target: Target
) -> None:
    pool = plain_spec(tgtd, target=scratch_target.iqn)
    info = await backend.attach(pool, timeout=TIMEOUT)
    assert info.volume_count == 1
    tgtd.add_lun(scratch_target, 2, size=16 * MIB)
    info = await backend.probe(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.volume_count == 2
    assert info.total_bytes == 32 * MIB  # still LUN 1: the pool is one LUN
    volumes = await backend.list_volumes(pool, timeout=TIMEOUT)
    assert [(v.name, v.size_bytes, v.path) for v in volumes] == [
        ("lun-1", 32 * MIB, f"iscsi://{tgtd.portal}/{scratch_target.iqn}/1"),
        ("lun-2", 16 * MIB, f"iscsi://{tgtd.portal}/{scratch_target.iqn}/2"),
    ]


async def test_lun_zero_controller_is_an_error_naming_the_data_luns(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    info = await backend.probe(plain_spec(tgtd, lun=0), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == (
        f"LUN 0 of {PLAIN_IQN} is a storage array controller, not a disk; "
        "set iscsi.lun to one of the target's data LUNs [1]"
    )


async def test_a_lun_the_target_does_not_have_is_an_error(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    info = await backend.probe(plain_spec(tgtd, lun=7), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == (
        f"LUN 7 is not on target {PLAIN_IQN}; the target reports data LUNs [1]"
    )


async def test_a_target_hidden_by_its_acl_names_the_initiator(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    closed = tgtd.add_target("closed", luns={1: 8 * MIB}, acl=None)
    try:
        info = await backend.probe(plain_spec(tgtd, target=closed.iqn), timeout=TIMEOUT)
    finally:
        tgtd.delete_target(closed)
    assert info.health is base.PoolHealth.ERROR
    # tgtd answers "target not found" to initiators outside the ACL.
    assert info.error_message == (
        f"target {closed.iqn} not found on portal {tgtd.portal}, "
        f"or initiator {backend.initiator_name} is not in its ACL"
    )


# -- CHAP ------------------------------------------------------------------------------


async def test_chap_with_the_right_password_is_healthy(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    info = await backend.attach(chap_spec(tgtd), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    assert info.total_bytes == CHAP_LUN_SIZE


async def test_chap_with_a_wrong_password_is_an_error_naming_chap(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    wrong = chap_spec(tgtd, chap_password="not-the-password")
    info = await backend.probe(wrong, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == f"CHAP authentication failed for user '{CHAP_USER}'"
    with pytest.raises(
        base.MountError, match=rf"^CHAP authentication failed for user '{CHAP_USER}'$"
    ):
        await backend.attach(wrong, timeout=TIMEOUT)
    unknown_user = chap_spec(tgtd, chap_user="nobody")
    info = await backend.probe(unknown_user, timeout=TIMEOUT)
    assert info.error_message == "CHAP authentication failed for user 'nobody'"


async def test_chap_target_without_chap_configured_says_so(
    backend: iscsi.IscsiBackend, tgtd: TgtServer
) -> None:
    info = await backend.probe(chap_spec(tgtd, chap_enabled=False), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == (
        f"target {CHAP_IQN} requires CHAP authentication: set iscsi.chap_enabled, "
        "iscsi.chap_user and iscsi.chap_password"
    )


# -- IscsiadmInitiator: the exact commands ------------------------------------------------


async def test_iscsiadm_login_sets_the_chap_password_and_never_logs_it(
    kernel_backend: iscsi.IscsiBackend,
    iscsiadm: FakeIscsiadm,
    tgtd: TgtServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    info = await kernel_backend.attach(chap_spec(tgtd), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.HEALTHY, info.error_message
    update = ("-o", "update", "-n")
    assert iscsiadm.calls == [
        ["iscsiadm", "-m", "discovery", "-t", "st", "-p", tgtd.portal],
        node_command(tgtd, CHAP_IQN, *update, "node.session.auth.authmethod", "-v", "CHAP"),
        node_command(tgtd, CHAP_IQN, *update, "node.session.auth.username", "-v", CHAP_USER),
        node_command(tgtd, CHAP_IQN, *update, "node.session.auth.password", "-v", CHAP_PASSWORD),
        node_command(tgtd, CHAP_IQN, "-l"),
        ["iscsiadm", "-m", "session"],  # the probe checks the kernel session first
    ]
    assert info.mount_path == f"/dev/disk/by-path/ip-{tgtd.portal}-iscsi-{CHAP_IQN}-lun-1"

    await kernel_backend.detach(chap_spec(tgtd), timeout=TIMEOUT)
    assert iscsiadm.calls[-1] == node_command(tgtd, CHAP_IQN, "-u")
    assert "iscsiadm" in caplog.text  # commands are logged at debug...
    assert CHAP_PASSWORD not in caplog.text  # ...without the password


async def test_iscsiadm_login_without_chap_touches_no_auth_settings(
    kernel_backend: iscsi.IscsiBackend, iscsiadm: FakeIscsiadm, tgtd: TgtServer
) -> None:
    await kernel_backend.attach(plain_spec(tgtd), timeout=TIMEOUT)
    assert iscsiadm.calls[:2] == [
        ["iscsiadm", "-m", "discovery", "-t", "st", "-p", tgtd.portal],
        node_command(tgtd, PLAIN_IQN, "-l"),
    ]


async def test_iscsiadm_auth_failure_and_failed_updates_mask_the_password(
    iscsiadm: FakeIscsiadm,
) -> None:
    initiator = iscsi.IscsiadmInitiator(runner=iscsiadm, path_exists=lambda path: True)

    async def login() -> str:
        return await initiator.login(
            portal="10.0.0.5:3260",
            target=PLAIN_IQN,
            lun=1,
            chap_user="u",
            chap_password="hunter2-secret",
            timeout=TIMEOUT,
        )

    iscsiadm.fail(lambda argv: argv[-1] == "-l", iscsi.ISCSIADM_LOGIN_AUTH_FAILED, "auth failed")
    with pytest.raises(base.MountError, match=r"^CHAP authentication failed for user 'u'$"):
        await login()

    iscsiadm.overrides.clear()
    iscsiadm.fail(
        lambda argv: "node.session.auth.password" in argv,
        7,
        "iscsiadm: cannot set node.session.auth.password to hunter2-secret",
    )
    with pytest.raises(base.MountError) as caught:
        await login()
    message = str(caught.value)
    assert "hunter2-secret" not in message
    assert message == (
        f"`iscsiadm -m node -T {PLAIN_IQN} -p 10.0.0.5:3260 -o update -n "
        "node.session.auth.password -v ***` failed (exit 7): "
        "iscsiadm: cannot set node.session.auth.password to ***"
    )


async def test_iscsiadm_timeouts_and_missing_device_links_are_reported(
    iscsiadm: FakeIscsiadm,
) -> None:
    initiator = iscsi.IscsiadmInitiator(
        runner=iscsiadm, path_exists=lambda path: False, poll_interval=0.01
    )

    async def login() -> str:
        return await initiator.login(
            portal="10.0.0.5:3260",
            target=PLAIN_IQN,
            lun=2,
            chap_user=None,
            chap_password=None,
            timeout=0.2,
        )

    with pytest.raises(base.MountError) as caught:
        await login()
    link = f"/dev/disk/by-path/ip-10.0.0.5:3260-iscsi-{PLAIN_IQN}-lun-2"
    assert str(caught.value) == (
        f"logged in to {PLAIN_IQN} on portal 10.0.0.5:3260 but {link} did not appear within 0.2s"
    )

    iscsiadm.hang = True
    with pytest.raises(base.BackendTimeout, match=r"^iscsiadm login to .* timed out after 0.2s$"):
        await login()


async def test_iscsiadm_logout_and_session_listing(iscsiadm: FakeIscsiadm) -> None:
    initiator = iscsi.IscsiadmInitiator(runner=iscsiadm, path_exists=lambda path: True)
    portal = "10.0.0.5:3260"

    async def exists() -> bool:
        return await initiator.session_exists(portal=portal, target=PLAIN_IQN, timeout=TIMEOUT)

    async def logout() -> None:
        await initiator.logout(portal=portal, target=PLAIN_IQN, timeout=TIMEOUT)

    assert await exists() is False  # iscsiadm exit 21: no sessions at all
    await logout()  # exit 21: already logged out counts as success
    iscsiadm.sessions.add((portal, PLAIN_IQN))
    assert await exists() is True
    await logout()
    assert iscsiadm.sessions == set()
    iscsiadm.fail(lambda argv: argv[-1] == "-u", 9, "internal error")
    with pytest.raises(base.MountError, match=r"logout from .* failed \(exit 9\): internal error"):
        await logout()


def test_session_listing_matches_portal_and_target() -> None:
    output = (
        "tcp: [1] 10.0.0.5:3260,1 iqn.2026-01.io.quantix.test:plain (non-flash)\n"
        "tcp: [2] [fd00::5]:3260,1 iqn.2026-01.io.quantix.test:chap (non-flash)\n"
    )
    listed = iscsi.session_listed
    assert listed(output, portal="10.0.0.5:3260", target=PLAIN_IQN)
    assert listed(output, portal="[fd00::5]:3260", target=CHAP_IQN)
    assert not listed(output, portal="10.0.0.6:3260", target=PLAIN_IQN)
    assert not listed(output, portal="10.0.0.5:3260", target=CHAP_IQN)
    # A DNS name cannot be compared with the IP iscsiadm shows: the target decides.
    assert listed(output, portal="san.example.com:3260", target=PLAIN_IQN)


async def test_probe_of_an_attached_pool_without_kernel_session_is_unmounted(
    kernel_backend: iscsi.IscsiBackend, iscsiadm: FakeIscsiadm, tgtd: TgtServer
) -> None:
    pool = plain_spec(tgtd)
    await kernel_backend.attach(pool, timeout=TIMEOUT)
    iscsiadm.sessions.clear()  # e.g. an operator ran iscsiadm -u, or iscsid restarted
    info = await kernel_backend.probe(pool, timeout=TIMEOUT)
    assert info.health is base.PoolHealth.UNMOUNTED
    assert info.mount_path == f"/dev/disk/by-path/ip-{tgtd.portal}-iscsi-{PLAIN_IQN}-lun-1"


# -- libiscsi missing ------------------------------------------------------------------


@pytest.fixture
def no_libiscsi(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_libiscsi, "LIBRARY_NAMES", ("libiscsi-quantix-missing.so.99",))
    _libiscsi.reset_for_tests()
    try:
        yield
    finally:
        monkeypatch.undo()
        _libiscsi.reset_for_tests()


async def test_missing_libiscsi_is_reported_with_the_package_name(
    backend: iscsi.IscsiBackend, tgtd: TgtServer, no_libiscsi: None
) -> None:
    info = await backend.probe(plain_spec(tgtd), timeout=TIMEOUT)
    assert info.health is base.PoolHealth.ERROR
    assert info.error_message == "libiscsi not installed (Debian package libiscsi7)"
    with pytest.raises(base.BackendUnavailable, match=r"^libiscsi not installed \(Debian"):
        await backend.attach(plain_spec(tgtd), timeout=TIMEOUT)


def test_the_scsi_task_layout_matches_libiscsi_1_19() -> None:
    # Offsets from the C header (gcc, LP64): a mismatch would decode garbage sense data.
    assert _libiscsi._ScsiTask.sense.offset == 48
    assert _libiscsi._ScsiTask.datain.offset == 64
    assert _libiscsi._ScsiSense.key.offset == 4
    assert _libiscsi._ScsiSense.ascq.offset == 8
