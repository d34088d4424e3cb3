"""``qvdc``'s configuration: TOML file < ``QVDC_*`` environment < flags, all derived from
the settings dataclasses; refusals name the setting and where it came from (exit 2, one
line); every setting is in ``--help`` and in docs/configuration.md."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qvdc
from qvdc import config_file
from qvdc.kits import configfile
from qvdc.settings import ControllerSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"


@dataclasses.dataclass(frozen=True)
class Extra:
    window: float = 1.0
    """Seconds of something."""

    names: tuple[str, ...] = ()
    """Names of things."""


@dataclasses.dataclass(frozen=True)
class Root:
    """A settings tree another helper might grow: a new section and a new flag."""

    extra: Extra = dataclasses.field(default_factory=Extra)
    enabled: bool = False
    """Whether on."""


@dataclasses.dataclass(frozen=True)
class Odd:
    pairs: list[int] = dataclasses.field(default_factory=list)


def write(tmp_path: Path, text: str, name: str = "qvdc.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(*argv: str, env: dict[str, str] | None = None) -> config_file.Config:
    return config_file.load(list(argv), environ=env or {})


def run_qvdc(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qvdc", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


# ---------------------------------------------------------------- precedence


def test_defaults_without_file_environment_or_flags() -> None:
    config = load()
    assert config.settings == ControllerSettings()
    assert (config.log.level, config.log.format) == ("INFO", "text")


def test_file_then_environment_then_flag_each_overrides_the_one_before(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'state_dir = "/from-file"\n'
        '[heartbeat]\ninterval = 10\n[etcd]\nendpoints = ["a:1", "b:2"]\nprefix = "/file/"\n'
        '[log]\nformat = "json"\n',
    )
    from_file = load("--config", str(path))
    assert from_file.settings.heartbeat.interval == 10.0
    assert from_file.settings.etcd.endpoints == ("a:1", "b:2")
    assert from_file.settings.etcd.prefix == "/file/"
    assert from_file.settings.state_dir == Path("/from-file")
    assert from_file.log.format == "json"

    env = {
        "QVDC_HEARTBEAT_INTERVAL": "12",
        "QVDC_ETCD_ENDPOINTS": "c:3,d:4",
        "QVDC_CONFIG": str(path),
    }
    from_env = load(env=env)  # the file named by QVDC_CONFIG, under the environment
    assert from_env.settings.heartbeat.interval == 12.0
    assert from_env.settings.etcd.endpoints == ("c:3", "d:4")  # replaced whole
    assert from_env.settings.etcd.prefix == "/file/"  # the file still counts

    flagged = load(
        "--heartbeat-interval", "14", "--etcd", "e:5", "--etcd-endpoints", "f:6", env=env
    )
    assert flagged.settings.heartbeat.interval == 14.0
    assert flagged.settings.etcd.endpoints == ("e:5", "f:6")  # repeated, alias included
    assert flagged.settings.etcd.prefix == "/file/"
    assert flagged.log.format == "json"


def test_every_section_and_kind_reads_from_each_layer(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "replica_id = 'r-file'\n"
        "[grpc]\nport = 7000\nidle_timeout = 30\n"
        "[limits]\nmax_labels = 8\n"
        "[monitor]\ngrace = 100.5\n"
        "[log]\nlevel = 'debug'\n",
    )
    config = load(
        "--config", str(path), "--grpc-host", "0.0.0.0", "--grace", "99",
        env={"QVDC_LIMITS_MAX_REPEATED": "16", "QVDC_ETCD_EMBEDDED_DATA_DIR": "/d"},
    )  # fmt: skip
    s = config.settings
    assert (s.grpc.host, s.grpc.port, s.grpc.idle_timeout) == ("0.0.0.0", 7000, 30.0)
    assert (s.limits.max_labels, s.limits.max_repeated) == (8, 16)
    assert s.monitor.grace == 99.0
    assert s.replica_id == "r-file"
    assert s.etcd.embedded_data_dir == Path("/d")
    assert config.log.level == "DEBUG"


def test_listen_is_a_shorthand_for_grpc_host_and_port() -> None:
    s = load("--listen", "10.0.0.1:7500").settings
    assert (s.grpc.host, s.grpc.port) == ("10.0.0.1", 7500)
    s = load("--listen", "0.0.0.0:0", env={"QVDC_GRPC_PORT": "9"}).settings
    assert s.grpc.port == 0  # a flag, over the environment
    with pytest.raises(configfile.ConfigError, match="--listen and --grpc-port both given"):
        load("--listen", "h:1", "--grpc-port", "2")
    with pytest.raises(configfile.ConfigError, match="--listen must be HOST:PORT"):
        load("--listen", "localhost")


def test_a_new_settings_field_is_configurable_without_touching_the_loader() -> None:
    schema = configfile.Schema(roots=[((), Root)], env_prefix="T_")
    by_key = {s.key: s for s in schema}
    assert sorted(by_key) == ["enabled", "extra.names", "extra.window"]
    assert (by_key["extra.window"].flag, by_key["extra.window"].env) == (
        "--extra-window",
        "T_EXTRA_WINDOW",
    )
    parser = argparse.ArgumentParser()
    schema.add_arguments(parser)
    args = parser.parse_args(["--enabled", "--extra-names", "a,b"])
    resolved = schema.resolve(namespace=args, environ={"T_EXTRA_WINDOW": "2.5"}, config=None)
    (root,) = schema.build(resolved).values()
    assert root == Root(extra=Extra(window=2.5, names=("a", "b")), enabled=True)


def test_a_field_of_a_type_the_loader_cannot_read_fails_when_the_schema_is_built() -> None:
    with pytest.raises(TypeError, match=r"Odd\.pairs: no configuration kind"):
        configfile.Schema(roots=[((), Odd)], env_prefix="T_")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[heartbeat]\nintervall = 3\n",
            "unknown key 'heartbeat.intervall' (did you mean 'heartbeat.interval'?)",
        ),
        ("[heartbeet]\ninterval = 3\n", "unknown key 'heartbeet'"),
        ("listen = '1.2.3.4:5'\n", "unknown key 'listen'"),
        ("[grpc.port]\nx = 1\n", "grpc.port: expected an integer, got a table"),
        ("[heartbeat]\ninterval = 'fast'\n", "heartbeat.interval: expected a number, got 'fast'"),
        ("[heartbeat]\ninterval = true\n", "heartbeat.interval: expected a number, got true"),
        ("[etcd]\nendpoints = 'a:1'\n", "etcd.endpoints: expected a list of strings, got 'a:1'"),
        ("[log]\nformat = 'xml'\n", "log.format: expected one of text, json, got 'xml'"),
        ("[heartbeat\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(configfile.ConfigError) as info:
        load("--config", str(path))
    assert str(info.value).startswith(f"{path}: "), info.value
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {"QVDC_HEARTBEAT_INTERVAL": "soon"}, "QVDC_HEARTBEAT_INTERVAL: expected a number"),
        (["--grpc-port", "http"], {}, "--grpc-port: expected an integer, got 'http'"),
        (["--log-level", "loud"], {}, "--log-level: expected one of DEBUG"),
        (
            ["--heartbeat-interval", "30", "--grace", "40"],
            {},
            "monitor.grace (40.0 s) must be at least 2 x heartbeat.interval (30.0 s)",
        ),
        (
            ["--heartbeat-interval", "30", "--monitor-startup-grace", "45"],
            {},
            "monitor.startup_grace (45.0 s) must be at least 2 x heartbeat.interval",
        ),
        (
            ["--monitor-grace", "60", "--monitor-check-period", "60"],
            {},
            "monitor.check_period (60.0 s) must be shorter than monitor.grace (60.0 s)",
        ),
        (
            ["--heartbeat-interval", "0.5", "--heartbeat-commit-delay", "0.8"],
            {},
            "heartbeat.commit_delay (0.8 s) must not exceed heartbeat.interval (0.5 s)",
        ),
        (
            ["--etcd", "h:1"],
            {"QVDC_ETCD_EMBEDDED_QUOTA_BYTES": "1024"},
            "etcd.embedded_quota_bytes (QVDC_ETCD_EMBEDDED_QUOTA_BYTES) set with "
            "etcd.endpoints (--etcd)",  # the alias typed, not the canonical flag
        ),
        (["--limits-max-labels", "0"], {}, "limit max_labels must be a positive integer"),
        (
            ["--limits-max-reports-per-heartbeat", "5000"],
            {},
            "limit max_reports_per_heartbeat must be at most 1024 (the request decoders read "
            "no more entries of a field), got 5000",
        ),
        (
            ["--config", "/nonexistent/qvdc.toml"],
            {},
            "/nonexistent/qvdc.toml: cannot read the configuration",
        ),
    ],
)
def test_bad_values_and_combinations_are_refused_naming_them(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(configfile.ConfigError) as info:
        load(*argv, env=env)
    assert message in str(info.value)


def test_the_process_refuses_an_invalid_combination_with_exit_2_and_one_line(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[heartbeat]\ninterval = 30\n[monitor]\ngrace = 40\n", "bad.toml")
    done = run_qvdc("--config", str(path))
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert done.stderr == (
        "qvdc: monitor.grace (40.0 s) must be at least 2 x heartbeat.interval (30.0 s)\n"
    )


def test_the_process_refuses_an_unknown_key_with_exit_2_naming_key_and_file(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[grpc]\nprot = 7443\n", "typo.toml")
    done = run_qvdc("--config", str(path))
    assert done.returncode == 2, done
    assert done.stderr == f"qvdc: {path}: unknown key 'grpc.prot' (did you mean 'grpc.port'?)\n"


# ---------------------------------------------------------------- documentation


def test_every_setting_is_in_help_with_its_flag_environment_variable_and_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100000")  # argparse wraps at the terminal's width
    text = " ".join(config_file.build_parser().format_help().split())
    settings = list(config_file.SCHEMA)
    assert len(settings) > 40
    for setting in settings:
        assert setting.flag in text, setting.key
        assert f"[{setting.env}]" in text, setting.key
        help_line = " ".join(setting.help().split())
        assert help_line.replace("%%", "%") in text, setting.key
        assert re.search(r"\(default\b|default:|Default", help_line, re.IGNORECASE), setting.key


def test_every_setting_is_documented_in_configuration_md_with_a_default_and_unit() -> None:
    rows = {}
    for line in DOCS.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 4:
            rows[cells[0].strip("`")] = cells
    missing = [s.key for s in config_file.SCHEMA if s.key not in rows]
    assert missing == [], f"not in {DOCS.name}: {missing}"
    for setting in config_file.SCHEMA:
        _, default, unit, meaning = rows[setting.key][:4]
        assert default and meaning, setting.key
        if setting.metavar in ("SECONDS", "BYTES"):
            assert unit, f"{setting.key}: no unit in {DOCS.name}"
    stale = sorted(k for k in rows if "." in k and k not in config_file.SCHEMA.settings)
    stale = [k for k in stale if not k.startswith(("node.", "QVDC"))]
    assert stale == [], f"documented but not a setting: {stale}"


def test_flags_are_not_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    """A setting added later would make today's abbreviation ambiguous and break scripts."""
    with pytest.raises(SystemExit) as info:
        load("--heartbeat-int", "5")
    assert info.value.code == 2
    assert "unrecognized arguments: --heartbeat-int" in capsys.readouterr().err


def test_version() -> None:
    done = run_qvdc("--version")
    assert (done.returncode, done.stdout) == (0, f"qvdc {qvdc.__version__}\n")


def test_print_config_shows_the_effective_configuration_and_loads_back_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--config", str(ROOT / "deploy" / "qvdc.toml"), "--grace", "95", "--etcd", "e:1"]
    env = {"QVDC_LIMITS_MAX_LABELS": "7", "QVDC_GRPC_PORT": "7500"}
    effective = load(*argv, env=env)
    with pytest.raises(SystemExit) as info:
        load(*argv, "--print-config", env=env)
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "port = 7500\n" in printed and "max_labels = 7\n" in printed
    assert 'endpoints = ["e:1"]\n' in printed  # the flag replaced the file's three
    assert "# commit_max_ops = 128  (default)\n" in printed
    again = load("--config", str(write(tmp_path, printed, "printed.toml")))
    assert again == effective
