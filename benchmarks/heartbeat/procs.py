"""Child processes of the harness (controller, ceiling server) and what /proc says about them.

Every child is started in its own session with its output in a log file under
the run directory, stopped with SIGTERM then SIGKILL (bounded), and read from
``/proc/<pid>`` for CPU seconds (``utime + stime``), current RSS (``VmRSS``)
and peak RSS (``VmHWM``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One reading of ``/proc/<pid>``."""

    cpu_s: float
    rss_bytes: int
    peak_rss_bytes: int


def sample(pid: int) -> ProcSample:
    """CPU seconds (user + system), RSS and peak RSS of a live process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # Fields after the command name (which may contain spaces) start at ") ".
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss = peak = 0
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return ProcSample(cpu_s=(utime + stime) / _CLK_TCK, rss_bytes=rss, peak_rss_bytes=peak)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_listening(host: str, port: int, *, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    """Return once ``host:port`` accepts TCP connections; raise if the child died or timed out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


class Child:
    """A Python child process (``python -m <module> args``) with its log file."""

    def __init__(
        self, *, name: str, module: str, args: list[str], log_path: Path, port: int = 0
    ) -> None:
        self.name = name
        self.port = port  # the port it serves on, if any
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def sample(self) -> ProcSample:
        return sample(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, *, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s; returns the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
