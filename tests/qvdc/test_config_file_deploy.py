"""deploy/: the systemd units pass ``systemd-analyze verify``, the node's unit keeps its mounts
visible to the host, and the example configurations load with no unknown key."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from node import config_file as node_config
from qvdc import config_file

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent  # the virtualenv's qvdc and qvdc-node console scripts
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

#: Options that give a service its own mount namespace: mounts made inside it do not
#: propagate to the host even with MountFlags=shared (systemd.exec(5), MountFlags=).
MOUNT_NAMESPACING = {
    "PrivateMounts", "PrivateTmp", "PrivateDevices", "ProtectSystem", "ProtectHome",
    "ReadOnlyPaths", "ReadWritePaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
    "TemporaryFileSystem", "BindPaths", "BindReadOnlyPaths", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "RootDirectory", "RootImage", "MountFlags", "PrivateNetwork",
}  # fmt: skip


def installed_copy(tmp_path: Path, name: str) -> Path:
    """The unit with ExecStart pointing at this virtualenv (verify checks it is executable)."""
    text = (DEPLOY / name).read_text()
    assert "/opt/quantix/bin/" in text
    unit = tmp_path / name
    unit.write_text(text.replace("/opt/quantix/bin/", f"{BIN}/"))
    return unit


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False, cwd="/"
    )


@needs_systemd
@pytest.mark.parametrize("name", ["qvdc.service", "qvdc-node.service"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, name: str) -> None:
    unit = installed_copy(tmp_path, name)
    done = analyze("verify", str(unit))
    # verify exits 0 on unknown keys too, with a warning: any output is a failure.
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done


@needs_systemd
def test_verify_would_catch_a_misspelt_option(tmp_path: Path) -> None:
    unit = installed_copy(tmp_path, "qvdc.service")
    unit.write_text(unit.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    assert "Unknown key 'NoNewPrivilege'" in analyze("verify", str(unit)).stderr


@needs_systemd
def test_the_controller_unit_is_hardened(tmp_path: Path) -> None:
    unit = installed_copy(tmp_path, "qvdc.service")
    # Exposure 0-10 (shown) is 0-100 for --threshold: fail above 2.5.
    done = analyze("security", "--offline=yes", "--threshold=25", str(unit))
    assert done.returncode == 0, done.stdout[-2000:]


def unit_options(name: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / name)
    return {section: dict(parser[section]) for section in parser.sections()}


def test_the_node_unit_runs_as_root_without_a_mount_namespace() -> None:
    service = unit_options("qvdc-node.service")["Service"]
    assert service["User"] == "root"
    assert "CAP_SYS_ADMIN" in service["CapabilityBoundingSet"].split()
    assert set(service) & MOUNT_NAMESPACING == set()
    assert service["RestartPreventExitStatus"] == "2"  # invalid configuration: no restart loop


def test_the_controller_unit_does_not_restart_on_an_invalid_configuration() -> None:
    service = unit_options("qvdc.service")["Service"]
    assert service["RestartPreventExitStatus"] == "2"
    assert service["ExecStart"].endswith("--config /etc/quantix/qvdc.toml")
    assert service["User"] == "qvdc"


def test_the_example_configurations_load() -> None:
    controller = config_file.load(["--config", str(DEPLOY / "qvdc.toml")], environ={})
    assert len(controller.settings.etcd.endpoints) == 3
    assert controller.log.format == "json"
    node = node_config.load(["--config", str(DEPLOY / "qvdc-node.toml")], environ={})
    assert node.settings.libvirt_uri == "qemu:///system"
    assert len(node.settings.controllers) == 3
