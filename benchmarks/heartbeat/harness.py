"""What every measurement of a run shares: the config, the load generators, the
child processes (controller, naive server, ceiling), and a fresh etcd per measurement.

Each measurement (the naive baseline, each host count) runs in
:meth:`Harness.in_fresh_etcd`: its own embedded etcd (``qvdc.store.embedded``,
8 GiB quota, no auto-compaction) in its own work directory, and an
:class:`~benchmarks.heartbeat.observer.EtcdObserver` on it; afterwards every
child is stopped, the generators close their streams, and the directory is
removed (unless ``--keep``), whether the measurement succeeded or not.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from benchmarks.heartbeat import machine, procs, results
from benchmarks.heartbeat.config import Config
from benchmarks.heartbeat.generators import GeneratorPool
from benchmarks.heartbeat.observer import EtcdObserver
from benchmarks.heartbeat.phases import PhaseRunner
from benchmarks.heartbeat.progress import Progress
from qvdc.settings import EtcdSettings
from qvdc.store.embedded import EmbeddedEtcd

HOST = "127.0.0.1"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Environment:
    """A measurement's etcd, the observer watching it, and its work directory."""

    etcd: EmbeddedEtcd
    observer: EtcdObserver
    workdir: Path


class Harness:
    """Shared state of one run; see the module docstring."""

    def __init__(self, config: Config, *, progress: Progress, gens: GeneratorPool) -> None:
        self.config = config
        self.progress = progress
        self.gens = gens
        self.phases = PhaseRunner(config, gens=gens, progress=progress)
        self._children: list[procs.Child] = []

    def start_controller(self, workdir: Path, endpoint: str, *, naive: bool) -> procs.Child:
        port = procs.free_port()
        name = "qvdc-naive" if naive else "qvdc"
        args = [
            "--etcd",
            endpoint,
            "--listen",
            f"{HOST}:{port}",
            "--heartbeat-interval",
            f"{self.config.heartbeat_interval:g}",
            "--grace",
            f"{self.config.grace:g}",
            "--state-dir",
            str(workdir / name),
            "--tls-mode",
            "off",  # measured in plain text, as before TLS existed
            "--log-level",
            "WARNING",
        ]
        # The naive baseline: the same replica with every report written (naive_server).
        module = "benchmarks.heartbeat.naive_server" if naive else "qvdc"
        child = procs.Child(
            name=name, module=module, args=args, log_path=workdir / f"{name}.log", port=port
        )
        self._children.append(child)
        try:
            procs.wait_listening(HOST, port, timeout=60, proc=child.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{name} did not start: {exc}\n{child.log_tail()}") from exc
        return child

    def start_ceiling(self, workdir: Path, fixture: Path, codec: str) -> procs.Child:
        port = procs.free_port()
        child = procs.Child(
            name=f"ceiling-{codec}",
            module="benchmarks.heartbeat.ceiling",
            args=[
                "--listen",
                f"{HOST}:{port}",
                "--fixture",
                str(fixture),
                "--codec",
                codec,
                "--interval",
                str(max(1, round(self.config.heartbeat_interval))),
            ],
            log_path=workdir / f"ceiling-{codec}.log",
            port=port,
        )
        self._children.append(child)
        try:
            procs.wait_listening(HOST, port, timeout=120, proc=child.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"ceiling did not start: {exc}\n{child.log_tail()}") from exc
        return child

    def stop(self, child: procs.Child) -> None:
        child.stop()
        if child in self._children:
            self._children.remove(child)

    async def in_fresh_etcd(
        self, label: str, body: Callable[[Environment], Awaitable[T]]
    ) -> tuple[T, results.Loads]:
        """Run ``body`` against a fresh etcd in a fresh work dir; always clean up.
        Returns what it returned and the load averages before and after."""
        cfg = self.config
        base = cfg.workdir or Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"hb-{label}-", dir=base))
        etcd_settings = EtcdSettings(
            embedded_quota_bytes=8 * 1024**3, embedded_compaction_retention="0"
        )
        load_start = machine.load_average()
        try:
            async with EmbeddedEtcd(data_dir=workdir / "etcd", settings=etcd_settings) as etcd:
                observer = EtcdObserver(endpoint=etcd.endpoint)
                await observer.connect()
                try:
                    value = await body(Environment(etcd=etcd, observer=observer, workdir=workdir))
                finally:
                    await observer.close()
        finally:
            for child in list(self._children):
                self.stop(child)
            with contextlib.suppress(Exception):
                await self.gens.call("close", [{}] * len(self.gens), timeout=120)
            if not cfg.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        return value, results.Loads(start=load_start, end=machine.load_average())
