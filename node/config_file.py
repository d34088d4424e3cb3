"""The ``qvdc-node`` command line: one TOML file, ``QVDC_NODE_*`` variables and flags.

Every field of :class:`node.settings.NodeSettings` (top level of the file) and of
:class:`qvdc.kits.eventlog.LogSettings` (``[log]``) is a setting, named alike in the three
places: ``heartbeat_interval`` = ``QVDC_NODE_HEARTBEAT_INTERVAL`` = ``--heartbeat-interval``.
Precedence: flag > environment > file > default (docs/configuration.md). The singular
flags of the first command line stay as aliases: ``--controller``, ``--label``,
``--backend-option``. ``pools_root`` defaults to ``<state_dir>/pools``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node import __version__
from node.settings import NodeSettings
from qvdc.kits import configfile, eventlog

ENV_PREFIX = "QVDC_NODE_"
CONFIG_ENV = "QVDC_NODE_CONFIG"

SCHEMA = configfile.Schema(
    roots=[((), NodeSettings), (("log",), eventlog.LogSettings)],
    env_prefix=ENV_PREFIX,
    aliases={
        "controllers": ("--controller",),
        "labels": ("--label",),
        "backend_options": ("--backend-option",),
    },
    metavars={"controllers": "HOST:PORT", "backend_options": "KIND.KEY=VALUE"},
)

ConfigError = configfile.ConfigError


@dataclass(frozen=True, slots=True)
class Config:
    """What one ``qvdc-node`` process runs with."""

    settings: NodeSettings
    log: eventlog.LogSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qvdc-node",
        allow_abbrev=False,  # a setting added later must not make an abbreviation ambiguous
        description="Quantix node daemon: registers this host with the QvDC controller, "
        "attaches the storage pools it assigns and reports their health.",
        epilog=(
            "Every option is also a QVDC_NODE_* environment variable (shown in brackets) and "
            "a key of the --config file (heartbeat_interval = --heartbeat-interval). "
            "Precedence: flag > environment > file > default. Lists and KEY=VALUE pairs take "
            "commas in the environment. Keys of backend options ending in _command are split "
            "like a shell. See docs/configuration.md."
        ),
    )
    configfile.add_config_argument(parser, env=CONFIG_ENV)
    SCHEMA.add_arguments(parser)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def from_args(args: argparse.Namespace, *, environ: Mapping[str, str]) -> Config:
    """Build the config; raises :class:`ConfigError` naming the setting and its source."""
    resolved = SCHEMA.resolve(
        namespace=args,
        environ=environ,
        config=configfile.config_path(args, environ, env=CONFIG_ENV),
    )
    if "pools_root" not in resolved.values and "state_dir" in resolved.values:
        state_dir = resolved.values["state_dir"]
        assert isinstance(state_dir, Path)
        resolved.set("pools_root", state_dir / "pools", "state_dir")
    built = SCHEMA.build(resolved)
    settings, log = built[()], built[("log",)]
    assert isinstance(settings, NodeSettings)
    assert isinstance(log, eventlog.LogSettings)
    return Config(settings=settings, log=log)


def load(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Parse ``argv`` (argparse exits 2 on a malformed command line) and build the config."""
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
