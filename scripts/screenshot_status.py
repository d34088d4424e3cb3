"""Remake docs/status-page.png: the status page of a real run, in headless Chromium.

    .venv/bin/python scripts/screenshot_status.py [--out docs/status-page.png]

Starts a real ``qvdc`` (embedded etcd, plain text on loopback, HTTP port on) in a
temporary directory, registers four hosts over gRPC and keeps three of them beating with
pool reports (tests/qvdc/http/status_fleet.py): one healthy, one reporting ERROR, one
disabled by an operator (MAINTENANCE) and one that fell silent (its row STALE); waits
until the silent row is stale, loads ``/status`` in Chromium (tests/fixtures/chromium.py)
and writes the PNG. Everything it started is stopped at the end.

``--url URL`` photographs a page that is already served instead (``make run``'s, say;
``--token`` signs in with a viewer token, and the dev CA's certificate is accepted).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpclib.client  # noqa: E402
import grpclib.exceptions  # noqa: E402

from protos.limiquantix.storage import v1 as storage  # noqa: E402
from tests.fixtures.chromium import Browser, find_chromium  # noqa: E402
from tests.qvdc.http.status_fleet import Fleet  # noqa: E402

WIDTH = 1180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(what: str, probe, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while loop.time() < deadline:
        try:
            last = await probe()
            if last:
                return last
        except (OSError, grpclib.exceptions.GRPCError) as exc:
            last = exc
        await asyncio.sleep(0.3)
    raise SystemExit(f"screenshot: timed out waiting for {what} ({last})")


async def photograph(url: str, out: Path, *, headers: dict[str, str] | None = None) -> None:
    executable = find_chromium()
    if executable is None:
        raise SystemExit("screenshot: chromium is not installed (scripts/bootstrap.sh installs it)")
    async with Browser(executable, args=("--ignore-certificate-errors",)) as browser:
        tab = await browser.open(url, headers=headers)
        await tab.wait_for("document.getElementById('link').textContent === 'live'")
        await tab.wait_for("document.querySelectorAll('tr.host').length > 0")
        await asyncio.sleep(1.5)  # the ages tick once
        await tab.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=800,
            deviceScaleFactor=1,
            mobile=False,
        )
        await asyncio.sleep(0.3)
        await tab.screenshot(out, width=WIDTH)
    print(f"wrote {out}")


def start_qvdc(state: Path, grpc_port: int, http_port: int) -> subprocess.Popen[bytes]:
    """A real controller: embedded etcd, plain text on loopback, the HTTP port on."""
    with open(state / "qvdc.log", "wb") as log:
        return subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "qvdc"),
                "--listen",
                f"127.0.0.1:{grpc_port}",
                "--state-dir",
                str(state),
                "--tls-mode",
                "off",
                "--heartbeat-interval",
                "1",
                "--monitor-grace",
                "4",
                "--http-enabled",
                "--http-port",
                str(http_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def real_run(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="qvdc-screenshot-") as state:
        grpc_port, http_port = free_port(), free_port()
        qvdc = start_qvdc(Path(state), grpc_port, http_port)
        channel = grpclib.client.Channel("127.0.0.1", grpc_port)
        try:
            fleet = Fleet(
                channel,
                error="nfs1.example.com:/export/gold does not answer FSSTAT (timed out after 2 s)",
                reason="firmware update, ticket OPS-1432",
            )

            async def answering() -> bool:
                await fleet.pools.list_pools(storage.ListPoolsRequest(), timeout=2)
                return True

            await wait_for("the controller", answering)
            await fleet.seed()
            async with fleet.beating():

                async def stale() -> bool:
                    pool = await fleet.pools.get_pool(
                        storage.GetPoolRequest(id=fleet.pool_ids["gold"]), timeout=2
                    )
                    return any(h.stale for h in pool.status.host_statuses)

                await wait_for("host-d's row to turn stale", stale)
                await photograph(f"http://127.0.0.1:{http_port}/status", out)
        finally:
            channel.close()
            os.killpg(qvdc.pid, signal.SIGTERM)
            try:
                qvdc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(qvdc.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "status-page.png")
    parser.add_argument("--url", help="photograph this page instead of starting a run")
    parser.add_argument("--token", help="with --url: the operator token to sign in with")
    args = parser.parse_args()
    if args.url:
        headers = None
        if args.token:
            basic = base64.b64encode(f"screenshot:{args.token}".encode()).decode()
            headers = {"Authorization": f"Basic {basic}"}
        asyncio.run(photograph(args.url, args.out, headers=headers))
    else:
        asyncio.run(real_run(args.out))


if __name__ == "__main__":
    main()
