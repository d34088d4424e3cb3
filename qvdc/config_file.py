"""The ``qvdc`` command line: one TOML file, ``QVDC_*`` variables and flags, one schema.

Every field of :class:`qvdc.settings.ControllerSettings` (its nested dataclasses are TOML
tables) and of :class:`qvdc.kits.eventlog.LogSettings` (``[log]``) is a setting, named
alike in the three places: ``[heartbeat] interval`` = ``QVDC_HEARTBEAT_INTERVAL`` =
``--heartbeat-interval``. Precedence: flag > environment > file > default
(docs/configuration.md). A field added to a settings dataclass is picked up here unchanged.

Shorthands kept from the first command line: ``--listen HOST:PORT`` (``grpc.host`` and
``grpc.port``), ``--etcd`` (``etcd.endpoints``, repeatable), ``--grace`` (``monitor.grace``).

Besides the dataclasses' own checks, a combination only the layers can see is refused:
``etcd.embedded_*`` set explicitly together with ``etcd.endpoints`` (no embedded etcd is
started then, so the setting would be silently ignored).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import qvdc
from qvdc.kits import configfile, eventlog
from qvdc.settings import ControllerSettings

ENV_PREFIX = "QVDC_"
CONFIG_ENV = "QVDC_CONFIG"

SCHEMA = configfile.Schema(
    roots=[((), ControllerSettings), (("log",), eventlog.LogSettings)],
    env_prefix=ENV_PREFIX,
    aliases={"etcd.endpoints": ("--etcd",), "monitor.grace": ("--grace",)},
)

ConfigError = configfile.ConfigError


@dataclass(frozen=True, slots=True)
class Config:
    """What one ``qvdc`` process runs with."""

    settings: ControllerSettings
    log: eventlog.LogSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qvdc",
        allow_abbrev=False,  # a setting added later must not make an abbreviation ambiguous
        description="Quantix storage-pool controller (QvDC) replica.",
        epilog=(
            "Every option is also a QVDC_* environment variable (shown in brackets) and a key "
            "of the --config file ([heartbeat] interval = --heartbeat-interval). Precedence: "
            "flag > environment > file > default. Lists take commas in the environment. "
            "See docs/configuration.md."
        ),
    )
    configfile.add_config_argument(parser, env=CONFIG_ENV)
    parser.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="shorthand for --grpc-host and --grpc-port",
    )
    SCHEMA.add_arguments(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {qvdc.__version__}")
    return parser


def _listen(text: str, resolved: configfile.Resolved) -> None:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--listen must be HOST:PORT, got {text!r}")
    for key in ("grpc.host", "grpc.port"):
        if resolved.sources.get(key, "").startswith("--"):
            raise ConfigError(f"--listen and {resolved.sources[key]} both given: use one")
    resolved.set("grpc.host", host.strip("[]"), "--listen")
    resolved.set("grpc.port", int(port), "--listen")


def _check_combinations(resolved: configfile.Resolved) -> None:
    if not resolved.values.get("etcd.endpoints"):
        return
    embedded = sorted(k for k in resolved.values if k.startswith("etcd.embedded_"))
    if embedded:
        where = ", ".join(f"{k} ({resolved.sources[k]})" for k in embedded)
        raise ConfigError(
            f"{where} set with etcd.endpoints ({resolved.sources['etcd.endpoints']}): "
            "no embedded etcd is started when endpoints are given"
        )


def load(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Parse ``argv`` (argparse exits 2 on a malformed command line) and build the config.

    Raises :class:`ConfigError` naming the setting and its source.
    """
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    config = from_args(args, environ=env)
    if args.print_config:
        print(dump(config), end="")
        raise SystemExit(0)
    return config


def dump(config: Config) -> str:
    """``config`` as a TOML file that loads back to it (``--print-config``)."""
    return SCHEMA.dump({(): config.settings, ("log",): config.log})


def from_args(args: argparse.Namespace, *, environ: Mapping[str, str]) -> Config:
    resolved = SCHEMA.resolve(
        namespace=args,
        environ=environ,
        config=configfile.config_path(args, environ, env=CONFIG_ENV),
    )
    if args.listen is not None:
        _listen(args.listen, resolved)
    _check_combinations(resolved)
    built = SCHEMA.build(resolved)
    settings = built[()]
    log = built[("log",)]
    assert isinstance(settings, ControllerSettings)
    assert isinstance(log, eventlog.LogSettings)
    return Config(settings=settings, log=log)
