"""A controller replica process for the hostile-input tests.

``python -m tests.qvdc.hostile.replica --etcd HOST:PORT --prefix /p/ --idle-timeout S``
runs ``qvdc.app.main`` as ``python -m qvdc`` does (uvloop, the tuned process, INFO
logs on stderr), with the settings the CLI does not expose: a small idle-connection
timeout for the raw-socket tests, and a long monitor grace, so no node goes OFFLINE
(and etcd stays still) while a test compares it before and after a request.

A separate process on purpose: a hostile request that freezes the controller's loop
must fail the test within its client-side timeout, not freeze the test too, and the
memory a request costs is the process's own RSS (``/proc/<pid>/status``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvloop

from qvdc import app, runtime
from qvdc.settings import (
    ControllerSettings,
    EtcdSettings,
    GrpcSettings,
    HeartbeatSettings,
    MonitorSettings,
    TlsSettings,
)


def main() -> None:
    parser = argparse.ArgumentParser(prog="hostile-replica")
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--idle-timeout", type=float, default=120.0)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--replica-id", default="hostile")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = ControllerSettings(
        etcd=EtcdSettings(endpoints=(args.etcd,), prefix=args.prefix),
        heartbeat=HeartbeatSettings(interval=30.0),
        monitor=MonitorSettings(grace=600.0),
        grpc=GrpcSettings(host="127.0.0.1", port=0, idle_timeout=args.idle_timeout),
        state_dir=args.state_dir,
        replica_id=args.replica_id,
        tls=TlsSettings(mode="off"),  # the hostile input is gRPC's, not TLS's
    )
    runtime.tune_process()
    raise SystemExit(uvloop.run(app.main(settings)))


if __name__ == "__main__":
    main()
