"""``qvdc-node``'s configuration: TOML file < ``QVDC_NODE_*`` environment < flags, from the
NodeSettings fields; every setting in ``--help`` and docs/configuration.md; JSON logs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from node import config_file
from qvdc.kits import configfile

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"


def load(*argv: str, env: dict[str, str] | None = None) -> config_file.Config:
    return config_file.load(list(argv), environ=env or {})


def test_file_then_environment_then_flag(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'controllers = ["10.0.0.1:7443", "10.0.0.2:7443"]\n'
        'hostname = "hv-file"\n'
        "heartbeat_interval = 20\n"
        'state_dir = "/srv/node"\n'
        'libvirt_uri = "test:///default"\n'
        "[labels]\nrack = 'r1'\nzone = 'z1'\n"
        "[backend_options.nfs]\nnfs_port = 2049\nmount_command = 'mount -o vers=4,soft'\n"
        "[log]\nformat = 'json'\n"
    )
    from_file = load("--config", str(path)).settings
    assert from_file.controllers == ("10.0.0.1:7443", "10.0.0.2:7443")
    assert (from_file.hostname, from_file.heartbeat_interval) == ("hv-file", 20.0)
    assert from_file.pools_root == Path("/srv/node/pools")  # derived from state_dir
    assert dict(from_file.labels) == {"rack": "r1", "zone": "z1"}
    assert dict(from_file.backend_options["nfs"]) == {
        "nfs_port": "2049",
        "mount_command": "mount -o vers=4,soft",
    }

    env = {
        "QVDC_NODE_CONFIG": str(path),
        "QVDC_NODE_HEARTBEAT_INTERVAL": "15",
        "QVDC_NODE_LABELS": "rack=r2",
        "QVDC_NODE_POOLS_ROOT": "/mnt/pools",
    }
    from_env = load(env=env)
    assert from_env.settings.heartbeat_interval == 15.0
    assert dict(from_env.settings.labels) == {"rack": "r2"}  # replaced whole
    assert from_env.settings.pools_root == Path("/mnt/pools")
    assert from_env.log.format == "json"

    flagged = load(
        "--heartbeat-interval", "10", "--controller", "h:1",
        "--backend-option", "nfs.mount_command=sudo mount -o a,b", "--log-format", "text",
        env=env,
    )  # fmt: skip
    assert flagged.settings.heartbeat_interval == 10.0
    assert flagged.settings.controllers == ("h:1",)
    assert dict(flagged.settings.backend_options) == {"nfs": {"mount_command": "sudo mount -o a,b"}}
    assert flagged.log.format == "text"


def test_the_libvirt_default_is_the_hosts_own_hypervisor() -> None:
    assert load("--controller", "h:1").settings.libvirt_uri == "qemu:///system"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("controllers = ['h:1']\nheartbeat = 3\n", "unknown key 'heartbeat'"),
        ("controllers = ['h:1']\n[labels]\nrack = [1]\n", "labels: expected KEY=VALUE pairs"),
        ("controllers = 'h:1'\n", "controllers: expected a list of strings"),
        ("controllers = ['h:1']\nheartbeat_interval = 1\nrpc_timeout = 20\n", "rpc_timeout"),
    ],
)
def test_a_bad_file_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(configfile.ConfigError, match=message):
        load("--config", str(path))


def test_the_process_exits_2_with_one_line_for_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("controllers = ['h:1']\nprobe_timout = 1\n")
    done = subprocess.run(
        [sys.executable, "-m", "node", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 2, done
    assert done.stderr == (
        f"qvdc-node: {path}: unknown key 'probe_timout' (did you mean 'probe_timeout'?)\n"
    )


def test_every_setting_is_in_help_and_in_configuration_md(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100000")
    text = " ".join(config_file.build_parser().format_help().split())
    docs = DOCS.read_text()
    node_part = docs[docs.index("# Node daemon configuration") :]
    for setting in config_file.SCHEMA:
        assert setting.flag in text and f"[{setting.env}]" in text, setting.key
        assert f"| `{setting.key}` |" in node_part, f"{setting.key} not in {DOCS.name}"


async def test_json_log_lines_parse_and_carry_the_fields(tmp_path: Path) -> None:
    with socket.socket() as hole:  # a port nobody listens on: "controller unreachable"
        hole.bind(("127.0.0.1", 0))
        port = hole.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node", "--controller", f"127.0.0.1:{port}",
        "--state-dir", str(tmp_path / "state"), "--hostname", "json-host",
        "--libvirt-uri", "test:///default", "--insecure",
        "--log-format", "json", "--log-level", "debug",
        cwd=ROOT, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not any("controller unreachable" in line for line in lines):
                raw = await proc.stderr.readline()
                assert raw, "daemon exited early:\n" + "".join(lines)
                lines.append(raw.decode())
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest = await proc.stderr.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines.extend(rest.decode().splitlines(keepends=True))
    docs = [json.loads(line) for line in lines if line.strip()]
    assert len(docs) >= 2
    for doc in docs:
        assert {"ts", "level", "logger", "msg"} <= set(doc), doc
        assert doc["ts"].endswith("Z") and doc["level"] in ("DEBUG", "INFO", "WARNING", "ERROR")
    assert any(d["logger"].startswith("node") and "unreachable" in d["msg"] for d in docs)


def test_print_config_loads_back_to_the_same_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(ROOT / "deploy" / "qvdc-node.toml"), "--state-dir", "/srv/n"]
    effective = load(*argv, "--backend-option", "nfs.mount_command=mount -o a,b")
    with pytest.raises(SystemExit):
        load(*argv, "--backend-option", "nfs.mount_command=mount -o a,b", "--print-config")
    printed = capsys.readouterr().out
    assert 'pools_root = "/srv/n/pools"\n' in printed
    path = tmp_path / "printed.toml"
    path.write_text(printed)
    assert load("--config", str(path)) == effective
