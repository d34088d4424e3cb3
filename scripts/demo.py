"""`make run`: the whole slice on this machine, with live status.

Starts a QvDC controller (with its embedded etcd) and one node daemon, creates
a local-directory pool assigned to that node, and prints the live pool table
(phase, capacity, one row per host) every second until Ctrl-C; then stops
everything it started. State and logs go to ``.run/``.

The controller listens on 127.0.0.1:7443 when that port is free (else a free
one). The embedded etcd picks its own ports; the demo reads the endpoint from the
controller's log and writes both, with the key prefix, to the context file
``.run/context.json`` (and ``~/.config/qvdc/context.json``) that ``qvdcctl``
reads, so ``qvdcctl ...`` and ``etcdctl --endpoints=$(qvdcctl context
etcd-endpoint) ...`` work as written in a second terminal. The files are removed
on exit.

mTLS is on: a dev CA and the controller's, the node's and an admin operator's
certificates are made in ``.run/pki/`` if missing (``qvdcctl certs`` makes the same),
the controller requires client certificates, and the context file names the
operator's, so ``qvdcctl`` speaks mTLS too.

The HTTP port is on (127.0.0.1:8080 when free, else a free port; HTTPS with the
controller's certificate) for the status page, ``/status``: a viewer token for it is
made once in ``.run/tokens.toml`` (``.run/status-token`` holds it alone) and the page's
URL is printed; a browser signs in with any name and that token as the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpclib.client
from grpclib.exceptions import GRPCError

from protos.limiquantix.compute import v1 as compute
from protos.limiquantix.storage import v1 as storage
from qvdc.cli import render_pools
from qvdc.security import certs
from qvdc.transport import tls

ROOT = Path(__file__).resolve().parent.parent
#: State and logs; ``QUANTIX_RUN_DIR`` moves them (the README test runs a stack of its
#: own there, with only that directory's context file).
RUN = Path(os.environ.get("QUANTIX_RUN_DIR") or ROOT / ".run")
BIN = ROOT / ".venv" / "bin"
POOL_NAME = "demo-local"
INTERVAL = "5"
PREFERRED_PORT = 7443
PREFERRED_HTTP_PORT = 8080
TOKENS = RUN / "tokens.toml"
STATUS_TOKEN = RUN / "status-token"
PREFIX = "/quantix/"
CONTEXT_FILES = (
    (RUN / "context.json",)
    if os.environ.get("QUANTIX_RUN_DIR")
    else (RUN / "context.json", Path.home() / ".config" / "qvdc" / "context.json")
)
PKI = RUN / "pki"
OPERATOR = "demo-admin"
ETCD_LOG_LINE = re.compile(r"embedded etcd pid \d+ at (\S+)")


def free_port(preferred: int = 0) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_pki(hostname: str) -> dict[str, Path]:
    """The CA and the controller's, node's and operator's certificates in ``.run/pki``,
    issuing what is missing (an existing CA is kept, as ``qvdcctl certs init`` does)."""
    issued: list[str] = []
    ca_cert, _ = certs.paths(PKI, certs.CA_NAME)
    if ca_cert.exists():
        ca = certs.read_pair(directory=PKI, name=certs.CA_NAME)
    else:
        ca = certs.issue_ca("quantix dev CA", days=3650)
        certs.write_pair(ca, directory=PKI, name=certs.CA_NAME)
        issued.append(certs.CA_NAME)
    wanted = {
        certs.CONTROLLER_NAME: lambda: certs.issue_server(ca, days=365),
        certs.node_name(hostname): lambda: certs.issue_node(ca, hostname, days=365),
        certs.operator_name(OPERATOR): lambda: certs.issue_operator(
            ca, OPERATOR, "admin", days=365
        ),
    }
    new_ca = bool(issued)  # then every certificate is issued again, from it
    for name, issue in wanted.items():
        if new_ca or not certs.paths(PKI, name)[0].exists():
            certs.write_pair(issue(), directory=PKI, name=name)
            issued.append(name)
    print(f"PKI .run/pki: {'issued ' + ', '.join(issued) if issued else 'kept'}")
    out = {"ca": ca_cert}
    for role, name in (
        ("controller", certs.CONTROLLER_NAME),
        ("node", certs.node_name(hostname)),
        ("operator", certs.operator_name(OPERATOR)),
    ):
        out[f"{role}_cert"], out[f"{role}_key"] = certs.paths(PKI, name)
    return out


def ensure_status_token() -> str:
    """The viewer token the status page is opened with, made once (kept across runs)."""
    if STATUS_TOKEN.exists() and TOKENS.exists():
        return STATUS_TOKEN.read_text().strip()
    token = secrets.token_hex(16)
    for path, text in (
        (
            TOKENS,
            "# make run's operator token for the status page (scripts/demo.py)\n"
            f'[[operator]]\nname = "demo-viewer"\nrole = "viewer"\ntoken = "{token}"\n',
        ),
        (STATUS_TOKEN, token + "\n"),
    ):
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(text)
    return token


def write_context(*, controller: str, etcd: str, pki: dict[str, Path]) -> None:
    data = {
        "controller": controller,
        "etcd": etcd,
        "prefix": PREFIX,
        "etcdctl": f"etcdctl --endpoints={etcd} get --prefix {PREFIX} --keys-only",
        "tls_ca": str(pki["ca"]),
        "tls_cert": str(pki["operator_cert"]),
        "tls_key": str(pki["operator_key"]),
    }
    for path in CONTEXT_FILES:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2) + "\n")


def remove_context(controller: str) -> None:
    for path in CONTEXT_FILES:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("controller") == controller:
                path.unlink()


def start(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    log = open(RUN / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
    print(f"starting {name}: {' '.join(argv)}  (log: .run/{name}.log)")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


async def wait_for(what: str, probe, *, timeout: float = 60.0, procs=()):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"demo: a child exited early ({p.args[0]}); see .run/*.log")
        try:
            result = await probe()
            if result:
                return result
        except (GRPCError, OSError, TimeoutError) as exc:
            last = exc
        await asyncio.sleep(0.3)
    raise SystemExit(f"demo: timed out waiting for {what} ({last})")


async def demo() -> None:
    RUN.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    log_size = (RUN / "qvdc.log").stat().st_size if (RUN / "qvdc.log").exists() else 0
    port = free_port(PREFERRED_PORT)
    http_port = free_port(PREFERRED_HTTP_PORT)
    hostname = f"{socket.gethostname()}-demo"
    pki = ensure_pki(hostname)
    status_token = ensure_status_token()
    qvdc = start(
        "qvdc",
        [
            str(BIN / "qvdc"),
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            str(RUN / "qvdc"),
            "--heartbeat-interval",
            INTERVAL,
            "--tls-cert",
            str(pki["controller_cert"]),
            "--tls-key",
            str(pki["controller_key"]),
            "--tls-client-ca",
            str(pki["ca"]),
            "--auth-tokens-file",
            str(TOKENS),
            "--http-enabled",
            "--http-port",
            str(http_port),
        ],
    )
    node = None
    operator = tls.client_context(ca=pki["ca"], cert=pki["operator_cert"], key=pki["operator_key"])
    channel = grpclib.client.Channel("127.0.0.1", port, ssl=operator)
    pools = storage.StoragePoolServiceStub(channel)
    nodes = compute.NodeServiceStub(channel)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:

        async def answering() -> bool:
            await nodes.list_nodes(compute.ListNodesRequest(), timeout=2)
            return True

        await wait_for("the controller", answering, procs=[qvdc])

        async def etcd_logged() -> str | None:
            text = (RUN / "qvdc.log").read_bytes()[log_size:].decode(errors="replace")
            found = ETCD_LOG_LINE.findall(text)
            return found[-1].removeprefix("http://") if found else None

        etcd = await wait_for("the embedded etcd's endpoint", etcd_logged, procs=[qvdc])
        write_context(controller=f"127.0.0.1:{port}", etcd=etcd, pki=pki)
        print(f"controller 127.0.0.1:{port}   embedded etcd {etcd}   context .run/context.json")
        print(
            "mTLS on: controller, node and qvdcctl present certificates of the CA "
            f".run/pki/ca.crt (operator {OPERATOR}, admin)"
        )
        print(f"etcdctl --endpoints={etcd} get --prefix {PREFIX} --keys-only")
        print(
            f"status page https://127.0.0.1:{http_port}/status  (certificate of the dev CA "
            f".run/pki/ca.crt; sign in with any name and the viewer token {status_token}, "
            "also in .run/status-token)"
        )
        node = start(
            "node",
            [
                str(BIN / "qvdc-node"),
                "--controller",
                f"127.0.0.1:{port}",
                "--hostname",
                hostname,
                "--state-dir",
                str(RUN / "node"),
                "--pools-root",
                str(RUN / "pools"),
                "--heartbeat-interval",
                INTERVAL,
                "--libvirt-uri",
                "test:///default",  # libvirt's test driver: the demo needs no libvirtd
                "--tls-ca",
                str(pki["ca"]),
                "--tls-cert",
                str(pki["node_cert"]),
                "--tls-key",
                str(pki["node_key"]),
            ],
        )

        async def registered() -> str | None:
            listed = await nodes.list_nodes(compute.ListNodesRequest(), timeout=2)
            return next((n.id for n in listed.nodes if n.hostname == hostname), None)

        node_id = await wait_for("the node daemon to register", registered, procs=[qvdc, node])
        print(f"node {hostname} registered as {node_id}")
        existing = await pools.list_pools(storage.ListPoolsRequest(), timeout=5)
        pool = next((p for p in existing.pools if p.name == POOL_NAME), None)
        if pool is None:
            pool = await pools.create_pool(
                storage.CreatePoolRequest(
                    name=POOL_NAME,
                    description="make run demo pool",
                    spec=storage.StoragePoolSpec(
                        backend=storage.StorageBackend(
                            type=storage.StorageBackendBackendType.LOCAL_DIR,
                            local_dir=storage.LocalDirConfig(path=str(RUN / "pools" / POOL_NAME)),
                        ),
                        assigned_node_ids=[node_id],
                    ),
                ),
                timeout=5,
            )
            print(f"created pool {POOL_NAME} ({pool.id}) assigned to {hostname}")
        elif node_id not in pool.spec.assigned_node_ids:
            await pools.assign_pool_to_node(
                storage.AssignPoolToNodeRequest(pool_id=pool.id, node_id=node_id), timeout=5
            )
        while not stop.is_set():
            listed = await pools.list_pools(storage.ListPoolsRequest(), timeout=5)
            hosts = await nodes.list_nodes(compute.ListNodesRequest(), timeout=5)
            clear = "\x1b[2J\x1b[H" if sys.stdout.isatty() else "\n"
            stamp = dt.datetime.now().strftime("%H:%M:%S")
            print(
                f"{clear}Quantix demo  {stamp}  controller 127.0.0.1:{port} (mTLS)  etcd {etcd}  "
                f"(Ctrl-C stops everything)\n"
                f"{render_pools(listed.pools, nodes=hosts.nodes, color=sys.stdout.isatty())}",
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
    finally:
        tls.close_at_once(channel)
        remove_context(f"127.0.0.1:{port}")
        for proc in (node, qvdc):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (node, qvdc):
            if proc is not None:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        print("\nstopped the node daemon, the controller and its etcd")


if __name__ == "__main__":
    asyncio.run(demo())
