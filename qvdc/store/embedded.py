"""EmbeddedEtcd: run Debian's ``etcd`` as a child process when no etcd is configured.

The controller's default deployment is one replica with one etcd member
(docs/architecture.md). With ``EtcdSettings.endpoints`` empty the controller starts
that member itself::

    async with EmbeddedEtcd(data_dir=state_dir / "etcd", settings=settings.etcd) as etcd:
        store = await EtcdStore.connect(
            settings=dataclasses.replace(settings.etcd, endpoints=(etcd.endpoint,)))

Design choices, and why:

- A real etcd binary, not an in-process imitation: the controller then behaves
  exactly as it will against an external cluster, and ``etcdctl`` works on it.
- Loopback only, on free ports picked at start (client and peer), so several
  controllers or test sessions on one machine never collide. A port picked free
  can still be taken before etcd binds it; start then retries with new ports.
  The member keeps its data across restarts even when the ports change (a
  single member never dials its own peer URL).
- ``--auto-compaction-mode=revision`` and ``--quota-backend-bytes``: etcd 3.4
  keeps every revision forever by default, and its RSS grows with the database
  (measured: 56 MB DB and about 200 MB RSS after 200k writes).
- Readiness is etcd's own ``/health`` endpoint (leader elected, no alarm), read
  with a raw HTTP/1.1 GET over asyncio streams: no HTTP client dependency, and
  the etcd client library stays confined to ``qvdc.store.etcd``.
- All of etcd's output (zap logger to stderr, and anything it prints before the
  logger exists) goes to one log file next to the data dir,
  ``<data_dir parent>/<data_dir name>.log``; a failed start quotes its tail.
- Stop is SIGTERM (etcd flushes and exits in 1-2 s), then SIGKILL after
  ``stop_timeout``; the child is killed in ``finally`` paths as well, so a
  cancelled start or stop never leaves an orphan etcd behind. The child runs in
  its own session so a terminal's Ctrl-C reaches the controller, which then
  stops etcd in order, instead of killing etcd under it.

The helpers :func:`find_etcd`, :func:`etcd_command`, :func:`pick_free_ports` and
:func:`read_log_tail` are public so the synchronous test fixture starts etcd with
the very same command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import types
from pathlib import Path
from typing import IO

from qvdc.settings import EtcdSettings

_log = logging.getLogger(__name__)

ETCD_NOT_FOUND = "etcd not found: install Debian package etcd-server"
"""The error message when the ``etcd`` binary is not on PATH."""

_PORT_ATTEMPTS = 3
"""Starts tried with freshly picked ports when etcd reports its port taken."""


class EmbeddedEtcdError(Exception):
    """The embedded etcd could not be found, started or stopped."""


def find_etcd(binary: str = "etcd") -> str:
    """The path of the etcd binary; raises EmbeddedEtcdError(ETCD_NOT_FOUND) if missing."""
    path = shutil.which(binary)
    if path is None:
        raise EmbeddedEtcdError(f"{ETCD_NOT_FOUND} (looked for {binary!r} on PATH)")
    return path


def pick_free_ports(count: int, *, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def etcd_command(
    *,
    binary: str,
    data_dir: Path,
    client_port: int,
    peer_port: int,
    settings: EtcdSettings,
    name: str = "qvdc",
    host: str = "127.0.0.1",
) -> list[str]:
    """The argv of a single-member etcd on ``host`` with our compaction and quota flags."""
    client_url = f"http://{host}:{client_port}"
    peer_url = f"http://{host}:{peer_port}"
    return [
        binary,
        f"--name={name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster={name}={peer_url}",
        "--initial-cluster-state=new",
        "--auto-compaction-mode=revision",
        f"--auto-compaction-retention={settings.embedded_compaction_retention}",
        f"--quota-backend-bytes={settings.embedded_quota_bytes}",
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def log_path_for(data_dir: Path) -> Path:
    """Where the etcd keeping ``data_dir`` logs: ``<parent>/<name>.log``."""
    return data_dir.parent / f"{data_dir.name}.log"


def read_log_tail(path: Path, *, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def probe_health(endpoint: str, *, timeout: float) -> bool:
    """True if etcd at ``host:port`` answers ``GET /health`` with ``"health":"true"``."""
    host, _, port = endpoint.rpartition(":")
    request = f"GET /health HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n"
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(request.encode())
                await writer.drain()
                answer = await reader.read()  # to EOF: the server closes after answering
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    status, _, body = answer.partition(b"\r\n")
    return b" 200 " in status and b'"health":"true"' in body.replace(b" ", b"")


class EmbeddedEtcd:
    """A single-member etcd child process on loopback; an async context manager.

    ``endpoint`` ("127.0.0.1:port") is valid after start; ``restart()`` keeps the
    ports and data dir (tests use it to break and restore watches).
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        settings: EtcdSettings,
        binary: str = "etcd",
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
        host: str = "127.0.0.1",
    ) -> None:
        if startup_timeout <= 0 or stop_timeout <= 0:
            raise ValueError("startup_timeout and stop_timeout must be > 0")
        self.data_dir = Path(data_dir)
        self.settings = settings
        self.binary = binary
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.host = host
        self.log_path = log_path_for(self.data_dir)
        self._ports: tuple[int, int] | None = None  # (client, peer) once started
        self._proc: asyncio.subprocess.Process | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client URL."""
        if self._ports is None:
            raise EmbeddedEtcdError("embedded etcd has not been started")
        return f"{self.host}:{self._ports[0]}"

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs (None before start and after stop)."""
        return self._proc.pid if self._proc is not None else None

    async def __aenter__(self) -> EmbeddedEtcd:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start etcd on free ports and wait until it is healthy (bounded by startup_timeout)."""
        if self._proc is not None:
            raise EmbeddedEtcdError("embedded etcd is already running")
        binary = find_etcd(self.binary)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            client_port, peer_port = pick_free_ports(2, host=self.host)
            try:
                await self._launch(binary, client_port=client_port, peer_port=peer_port)
                return
            except EmbeddedEtcdError as exc:
                # Case: another process took a picked port first; pick again.
                if "address already in use" not in str(exc) or attempt == _PORT_ATTEMPTS:
                    raise
                _log.info("embedded etcd: port taken, retrying with other ports")

    async def restart(self) -> None:
        """Stop, then start again on the same ports and data dir."""
        if self._ports is None:
            raise EmbeddedEtcdError("embedded etcd has not been started")
        client_port, peer_port = self._ports
        await self.stop()
        await self._launch(find_etcd(self.binary), client_port=client_port, peer_port=peer_port)

    async def _launch(self, binary: str, *, client_port: int, peer_port: int) -> None:
        argv = etcd_command(
            binary=binary,
            data_dir=self.data_dir,
            client_port=client_port,
            peer_port=peer_port,
            settings=self.settings,
            host=self.host,
        )
        self._ports = (client_port, peer_port)
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = self.log_path.open("ab")
        try:
            async with asyncio.timeout(self.startup_timeout):
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=self._log_file,
                    stderr=self._log_file,
                    start_new_session=True,
                )
            _log.info("embedded etcd pid %d at %s", self._proc.pid, self.endpoint)
            await self._wait_healthy(log_offset=log_offset)
        except BaseException:
            await self._terminate(kill=True)
            raise

    async def _wait_healthy(self, *, log_offset: int) -> None:
        """Poll /health until it answers true; raise with the log tail if etcd dies or hangs."""
        proc = self._proc
        assert proc is not None
        try:
            async with asyncio.timeout(self.startup_timeout):
                while True:
                    if proc.returncode is not None:
                        raise EmbeddedEtcdError(
                            f"etcd exited with code {proc.returncode} during startup; "
                            f"log {self.log_path}:\n{self._new_log(log_offset)}"
                        )
                    if await probe_health(self.endpoint, timeout=1.0):
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise EmbeddedEtcdError(
                f"etcd at {self.endpoint} was not healthy within {self.startup_timeout} s; "
                f"log {self.log_path}:\n{self._new_log(log_offset)}"
            ) from None

    def _new_log(self, offset: int) -> str:
        """The tail of what this start wrote to the log."""
        tail = read_log_tail(self.log_path)
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                fresh = f.read().decode(errors="replace")
        except OSError:
            return tail
        return "\n".join(fresh.splitlines()[-25:]) or tail

    async def stop(self) -> None:
        """SIGTERM, wait up to stop_timeout, then SIGKILL. Idempotent."""
        await self._terminate(kill=False)

    async def _terminate(self, *, kill: bool) -> None:
        proc = self._proc
        try:
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                try:
                    async with asyncio.timeout(self.stop_timeout):
                        await proc.wait()
                except TimeoutError:
                    _log.warning("embedded etcd pid %d ignored SIGTERM; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    try:
                        async with asyncio.timeout(self.stop_timeout):
                            await proc.wait()
                    except TimeoutError:
                        raise EmbeddedEtcdError(
                            f"embedded etcd pid {proc.pid} did not exit even after SIGKILL"
                        ) from None
        finally:
            # Whatever happened above (even cancellation), never leave the child running.
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            self._proc = None
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
