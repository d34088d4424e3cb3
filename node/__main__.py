"""``qvdc-node``: command line -> NodeSettings -> ``uvloop.run(app.main(settings))``.

Only parsing lives here; every default and range is owned by
:class:`node.settings.NodeSettings`, so the CLI and programmatic users get
the same validation. A bad setting exits with status 2 and one line naming
it, like any argparse error.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from node import __version__, app
from node import settings as settings_mod

_DEFAULTS = settings_mod.NodeSettings(controllers=("127.0.0.1:7443",))


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label must be key=value, got {text!r}")
    return key, value


def _backend_option(text: str) -> tuple[str, str, str]:
    """``"nfs.nfs_port=2049"`` -> ``("nfs", "nfs_port", "2049")``."""
    name, sep, value = text.partition("=")
    kind, dot, key = name.partition(".")
    if not sep or not dot or not kind or not key:
        raise argparse.ArgumentTypeError(f"expected KIND.KEY=VALUE, got {text!r}")
    return kind, key, value


def _group_backend_options(items: list[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    grouped: dict[str, dict[str, str]] = {}
    for kind, key, value in items:
        grouped.setdefault(kind, {})[key] = value
    return grouped


def build_parser() -> argparse.ArgumentParser:
    """The ``qvdc-node`` argument parser."""
    p = argparse.ArgumentParser(
        prog="qvdc-node",
        description="Quantix node daemon: registers this host with the QvDC controller, "
        "attaches the storage pools it assigns and reports their health.",
    )
    p.add_argument(
        "--controller",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="controller endpoint; repeat for several replicas (tried in order, with failover)",
    )
    p.add_argument("--hostname", default=None, help="node identity (default: this host's name)")
    p.add_argument(
        "--management-ip",
        default=_DEFAULTS.management_ip,
        help="address operators reach this host at (default: %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=_DEFAULTS.state_dir,
        help="where node-id and assignments.json are kept (default: %(default)s)",
    )
    p.add_argument(
        "--pools-root",
        type=Path,
        default=None,
        help="directory local_dir pools are created under (default: <state-dir>/pools)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=_DEFAULTS.heartbeat_interval,
        metavar="SECONDS",
        help="seconds between heartbeats until the controller says otherwise "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--probe-timeout",
        type=float,
        default=_DEFAULTS.probe_timeout,
        metavar="SECONDS",
        help="seconds one pool probe may take before the pool is reported ERROR "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--libvirt-uri",
        default=_DEFAULTS.libvirt_uri,
        help="libvirt connection for host facts; qemu:///system on real hosts "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--label",
        action="append",
        type=_label,
        default=[],
        metavar="KEY=VALUE",
        help="label sent at registration; repeatable",
    )
    p.add_argument(
        "--backend-option",
        action="append",
        type=_backend_option,
        default=[],
        metavar="KIND.KEY=VALUE",
        help="constructor option of a storage backend, e.g. nfs.mount_command='mount' or "
        "nfs.nfs_port=2049; repeatable (keys ending in _command are split like a shell)",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default: %(default)s)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def settings_from_args(args: argparse.Namespace) -> settings_mod.NodeSettings:
    """Build validated settings from parsed arguments (raises SettingsError)."""
    state_dir: Path = args.state_dir
    return settings_mod.NodeSettings(
        controllers=tuple(args.controller),
        hostname=args.hostname or socket.gethostname(),
        management_ip=args.management_ip,
        state_dir=state_dir,
        pools_root=args.pools_root if args.pools_root is not None else state_dir / "pools",
        heartbeat_interval=args.heartbeat_interval,
        probe_timeout=args.probe_timeout,
        libvirt_uri=args.libvirt_uri,
        labels=dict(args.label),
        backend_options=_group_backend_options(args.backend_option),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except settings_mod.SettingsError as exc:
        parser.error(str(exc))  # exits with status 2
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return uvloop.run(app.main(settings))


if __name__ == "__main__":
    sys.exit(main())
