"""NodeSettings validation and the ``qvdc-node`` command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node import __main__ as cli
from node import config_file, settings

OK = ("127.0.0.1:7443",)


def test_defaults_and_derived_values():
    s = settings.NodeSettings(controllers=OK)
    assert (s.heartbeat_interval, s.rpc_timeout, s.probe_timeout) == (30.0, 5.0, 2.0)
    assert (s.reconnect_initial, s.reconnect_max, s.immediate_retries) == (0.1, 7.0, 5)
    assert s.libvirt_uri == "qemu:///system"  # the host's own hypervisor, not the test driver
    assert s.effective_probe_interval == 10.0  # min(heartbeat interval, 10 s)
    assert s.replace(heartbeat_interval=4.0).effective_probe_interval == 4.0
    assert s.replace(probe_interval=0.5).effective_probe_interval == 0.5
    assert s.endpoints == (("127.0.0.1", 7443),)
    assert settings.NodeSettings(controllers=("[::1]:7443",)).endpoints == (("::1", 7443),)


def test_settings_are_deeply_frozen():
    labels = {"rack": "r1"}
    s = settings.NodeSettings(controllers=list(OK), labels=labels)  # type: ignore[arg-type]
    labels["rack"] = "changed"
    assert s.labels == {"rack": "r1"}
    assert isinstance(s.controllers, tuple)
    with pytest.raises(TypeError):
        s.labels["x"] = "y"  # type: ignore[index]
    with pytest.raises(AttributeError):
        s.hostname = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"controllers": ()}, "at least one controller"),
        ({"controllers": ("nohost",)}, "must be host:port"),
        ({"controllers": (":7443",)}, "must be host:port"),
        ({"controllers": ("h:0",)}, "port must be in 1..65535"),
        ({"controllers": ("h:70000",)}, "port must be in 1..65535"),
        ({"controllers": ("h:http",)}, "port must be in 1..65535"),
        ({"controllers": ("::1:7443",)}, r"\[addr\]:port"),
        ({"controllers": ("[nope]:7443",)}, "bad IPv6 address"),
        ({"controllers": ("h:1", "h:1")}, "must be distinct"),
        ({"hostname": " "}, "hostname must not be empty"),
        ({"hostname": "hv_1"}, "hostname must be an RFC 1123 host name"),
        ({"hostname": "hv-1."}, "hostname must be an RFC 1123 host name"),
        ({"labels": {"a=b": "c"}}, "label key"),
        ({"heartbeat_interval": 0}, "heartbeat_interval must be in"),
        ({"heartbeat_jitter": 1.0}, "heartbeat_jitter"),
        ({"rpc_timeout": 0}, "rpc_timeout must be in"),
        ({"probe_timeout": -1}, "probe_timeout must be in"),
        ({"probe_interval": 0}, "probe_interval must be in"),
        ({"reconnect_initial": 8.0}, "reconnect_initial <= reconnect_max"),
        ({"immediate_retries": 0}, "immediate_retries"),
        ({"attach_backoff_initial": 0}, "attach_backoff_initial"),
        ({"heartbeat_interval": 1.0, "rpc_timeout": 20.0}, "must not exceed the controller's"),
        ({"heartbeat_interval": 1.0, "probe_timeout": 7.0}, "heartbeat_interval \\+ rpc_timeout"),
    ],
)
def test_invalid_settings_are_rejected_with_the_field_named(changes, message):
    options = {"controllers": OK, **changes}
    with pytest.raises(settings.SettingsError, match=message):
        settings.NodeSettings(**options)


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in (
        "--controllers HOST:PORT, --controller HOST:PORT",
        "--hostname",
        "--management-ip",
        "--state-dir",
        "--pools-root",
        "--heartbeat-interval",
        "--probe-timeout",
        "--libvirt-uri",
        "--labels KEY=VALUE, --label KEY=VALUE",
        "--backend-options KIND.KEY=VALUE, --backend-option KIND.KEY=VALUE",
        "--log-level",
        "--log-format",
        "--config PATH",
    ):
        assert option in out
    assert "(default: qemu:///system)" in " ".join(out.split())


def test_module_entry_point_help():
    done = subprocess.run(
        [sys.executable, "-m", "node", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert "usage: qvdc-node" in done.stdout


def test_arguments_become_settings(tmp_path):
    config = config_file.load(
        [
            "--controller",
            "10.0.0.1:7443",
            "--controller",
            "10.0.0.2:7443",
            "--hostname",
            "hv-1",
            "--management-ip",
            "10.1.0.1",
            "--state-dir",
            str(tmp_path),
            "--heartbeat-interval",
            "5",
            "--probe-timeout",
            "1.5",
            "--libvirt-uri",
            "qemu:///system",
            "--label",
            "rack=r7",
            "--label",
            "zone=eu=1",
            "--log-level",
            "debug",
        ],
        environ={},
    )
    s = config.settings
    assert s.controllers == ("10.0.0.1:7443", "10.0.0.2:7443")
    assert (s.hostname, s.management_ip) == ("hv-1", "10.1.0.1")
    assert (s.state_dir, s.pools_root) == (tmp_path, tmp_path / "pools")
    assert (s.heartbeat_interval, s.probe_timeout) == (5.0, 1.5)
    assert s.effective_probe_interval == 5.0
    assert s.libvirt_uri == "qemu:///system"
    assert dict(s.labels) == {"rack": "r7", "zone": "eu=1"}
    assert config.log.level == "DEBUG"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--controller", "nohost"], "must be host:port"),
        (["--controller", "h:1", "--heartbeat-interval", "0"], "heartbeat_interval must be in"),
        (["--controller", "h:1", "--label", "novalue"], "--label: expected KEY=VALUE pairs"),
        ([], "controllers is required: set --controllers, QVDC_NODE_CONTROLLERS"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("qvdc-node: "), err  # one line
