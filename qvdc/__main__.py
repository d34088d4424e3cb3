"""``qvdc``: run one QvDC controller replica."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from qvdc import app, runtime
from qvdc.settings import (
    ControllerSettings,
    EtcdSettings,
    GrpcSettings,
    HeartbeatSettings,
    MonitorSettings,
    SettingsError,
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="qvdc", description="Quantix storage-pool controller (QvDC) replica."
    )
    p.add_argument(
        "--listen", default="127.0.0.1:7443", help="gRPC address HOST:PORT (default %(default)s)"
    )
    p.add_argument(
        "--etcd",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="etcd endpoint (repeatable). None: start an embedded etcd",
    )
    p.add_argument("--etcd-prefix", default="/quantix/", help="key prefix (default %(default)s)")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/qvdc"),
        help="state directory, holds the embedded etcd (default %(default)s)",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=float,
        default=30.0,
        help="seconds between node heartbeats, told to nodes (default %(default)s)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds without heartbeat before a node is OFFLINE (default 3 x interval + 10)",
    )
    p.add_argument("--replica-id", default="", help="replica name (default host-pid)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> ControllerSettings:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise SettingsError(f"--listen must be HOST:PORT, got {args.listen!r}")
    return ControllerSettings(
        etcd=EtcdSettings(endpoints=tuple(args.etcd), prefix=args.etcd_prefix),
        heartbeat=HeartbeatSettings(interval=args.heartbeat_interval),
        monitor=MonitorSettings(grace=args.grace),
        grpc=GrpcSettings(host=host, port=int(port)),
        state_dir=args.state_dir,
        replica_id=args.replica_id,
    )


def main(
    argv: Sequence[str] | None = None, *, factory: app.ControllerFactory = app.Controller
) -> None:
    """Parse ``argv``, run one replica built by ``factory`` and exit with its code
    (``qvdc.app``: 0 stopped, 1 failed, 3 forced; 2 here for invalid settings)."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        print(f"qvdc: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    runtime.tune_process()
    raise SystemExit(uvloop.run(app.main(settings, factory=factory)))


if __name__ == "__main__":
    main()
