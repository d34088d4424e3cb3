"""``python -m benchmarks.heartbeat``: size a QvDC control plane by its heartbeat throughput.

Starts a real etcd, one ``qvdc`` replica in its own process and load-generator
processes that simulate HOSTS hosts with POOLS pools each over StreamHeartbeat
(or UpdateHeartbeat), and measures, in one run: accepted heartbeats/s and RPC
latency for the steady-state and full-report workloads, the same against a
bare grpclib server (the ceiling), etcd writes per heartbeat against the
materially changed reports and against a naive replica (``naive_server``),
aggregation lag, and the controller's CPU and memory. See
``benchmarks/RESULTS.md`` for the method and the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import uvloop

from benchmarks.heartbeat import config, report, runner
from benchmarks.heartbeat.progress import Progress

EPILOG = """\
workloads:
  steady state  delta heartbeats (docs/architecture.md, "The heartbeat path"): a report
                is sent only when it changed materially (probability --change-fraction
                per report per heartbeat); every other report drifts below the threshold
                and is not sent, as a real node does. The measured window also times
                aggregation lag.
  full reports  every heartbeat carries all POOLS reports (delta=false on the stream;
                UpdateHeartbeat with --mode unary), as upstream nodes and resyncs send.

examples:
  python -m benchmarks.heartbeat --quick --json out.json          # < 60 s smoke run
  python -m benchmarks.heartbeat --hosts 10000 --duration 30
  python -m benchmarks.heartbeat --sweep 1000,10000,100000 --json sweep.json --plot sweep.png
  python -m benchmarks.heartbeat --hosts 300000 --interval 30     # a fleet at its real pace

Throughput is measured at saturation (--interval 0): each generator keeps
--concurrency heartbeats in flight, so latency includes that queue. With
--interval S every host sends one heartbeat every S seconds instead.
"""


def _hosts_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("host counts must be >= 1")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.heartbeat",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_argument_group("fleet")
    size.add_argument(
        "--hosts", type=_hosts_list, default=None, help="simulated hosts (default 10000)"
    )
    size.add_argument(
        "--sweep",
        type=_hosts_list,
        default=None,
        metavar="N,N,...",
        help="run each host count in turn on a fresh etcd and controller (overrides --hosts)",
    )
    size.add_argument("--pools-per-host", type=int, default=8, help="default %(default)s")
    size.add_argument(
        "--hosts-per-pool",
        type=int,
        default=16,
        help="hosts sharing each pool (clusters of this size; default %(default)s)",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--mode",
        choices=["stream", "unary"],
        default="stream",
        help="RPC of the full-reports workload and the naive baseline: StreamHeartbeat "
        "(delta=false) or the upstream-compatible UpdateHeartbeat; the steady state always "
        "streams (default %(default)s)",
    )
    load.add_argument(
        "--duration", type=float, default=20.0, help="measured seconds per workload (default 20)"
    )
    load.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each")
    load.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds between one host's heartbeats; 0 = as fast as acknowledged (default)",
    )
    load.add_argument(
        "--concurrency",
        type=int,
        default=48,
        help="heartbeats in flight per generator process (default %(default)s)",
    )
    load.add_argument(
        "--generators", type=int, default=2, help="load-generator processes (default 2)"
    )
    load.add_argument(
        "--change-fraction",
        type=float,
        default=0.001,
        help="probability that a report changes materially per heartbeat (default 0.001)",
    )
    load.add_argument("--idle", type=float, default=3.0, help="seconds of the no-change check")
    load.add_argument("--seed", type=int, default=1)
    base = p.add_argument_group("baselines")
    base.add_argument(
        "--naive-hosts",
        type=int,
        default=1000,
        help="hosts driving the naive baseline (every report written), measured once per run "
        "on its own etcd "
        "(default %(default)s); its writes per heartbeat do not depend on the host count",
    )
    base.add_argument("--naive-duration", type=float, default=8.0)
    base.add_argument("--no-ceiling", action="store_true", help="skip the bare-server ceiling")
    base.add_argument(
        "--no-betterproto2-ceiling",
        action="store_true",
        help="skip the informational ceiling with betterproto2's own codec (always skipped "
        "with --quick and above 10,000 hosts)",
    )
    base.add_argument("--ceiling-duration", type=float, default=None, help="default: --duration")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results")
    out.add_argument("--plot", type=Path, default=None, metavar="PATH", help="PNG of the sweep")
    out.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy the controller and ceiling during each workload (raw stacks in DIR)",
    )
    out.add_argument("--workdir", type=Path, default=None, help="parent of the run directories")
    out.add_argument("--keep", action="store_true", help="keep etcd data and logs")
    out.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small run that finishes within a minute: 200 hosts, 3 s per workload",
    )
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> config.Config:
    hosts = args.sweep or args.hosts or ((200,) if args.quick else (10_000,))
    duration = 3.0 if args.quick and args.duration == 20.0 else args.duration
    warmup = 1.0 if args.quick and args.warmup == 3.0 else args.warmup
    if args.quick:
        naive_hosts = min(args.naive_hosts, 100)
        naive_duration = min(args.naive_duration, 2.0)
        idle = min(args.idle, 1.0)
    else:
        naive_hosts, naive_duration, idle = args.naive_hosts, args.naive_duration, args.idle
    ceiling_duration = args.ceiling_duration or duration
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    return config.Config(
        hosts=tuple(hosts),
        pools_per_host=args.pools_per_host,
        hosts_per_pool=args.hosts_per_pool,
        mode=args.mode,
        duration=duration,
        warmup=warmup,
        idle=idle,
        interval=args.interval,
        concurrency=args.concurrency,
        generators=args.generators,
        change_fraction=args.change_fraction,
        naive_hosts=naive_hosts,
        naive_duration=naive_duration,
        ceiling=not args.no_ceiling,
        ceiling_duration=ceiling_duration,
        betterproto2_ceiling=not args.quick and not args.no_betterproto2_ceiling,
        seed=args.seed,
        workdir=args.workdir,
        keep=args.keep,
        profile_dir=args.profile,
        quick=args.quick,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_config = config_from(args)
    progress = Progress(quiet=args.quiet)

    def save(doc: dict[str, object]) -> None:  # after every size: a long sweep keeps its parts
        if args.json is not None:
            args.json.write_text(json.dumps(doc, indent=2) + "\n")

    doc = uvloop.run(runner.run(run_config, progress=progress, on_result=save))
    print(report.table(doc))
    print()
    print(report.targets(doc))
    if args.json is not None:
        save(doc)
        print(f"\nresults: {args.json}")
    if args.plot is not None:
        report.plot(doc, args.plot)
        print(f"plot: {args.plot}")
    failed = [r["hosts"] for r in doc.get("sweep", []) if "error" in r]
    if failed or "error" in doc.get("naive", {}):
        print(f"\nFAILED: hosts {failed} (naive: {'error' in doc.get('naive', {})}); see the JSON")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
