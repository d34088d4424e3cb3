"""Host facts (CPU, memory, running VMs) read from libvirt.

Why libvirt: it is already the hypervisor's management API, it answers the
same questions on every host (``qemu:///system``), and its built-in test
driver (``test:///default``) gives demos and tests fixed fake numbers without
a daemon.

How, and why this way:

* libvirt-python is blocking (each call is a synchronous RPC to libvirtd), so
  a whole query (open, read, close) runs in a worker thread. We use a *daemon*
  thread per query rather than ``asyncio.to_thread``: a wedged libvirtd never
  returns, a default-executor thread stuck in it would then block the event
  loop's executor shutdown and interpreter exit on Python 3.11 (both join
  executor threads without a timeout), and a daemon thread blocks neither.
  At most one query runs at a time; while a stuck one is still running, we do
  not pile up another.
* Every query is bounded by ``timeout``. On timeout or any libvirt error we log
  once and return the facts we have (zeros the first time) with ``error`` set;
  host facts are informational and must never stop the daemon or delay a
  heartbeat. The heartbeat reads :attr:`HostFactsCollector.latest`, which is
  refreshed in the background, so it never waits for libvirt.
* libvirt prints every error to stderr by default; the handler is silenced
  (docs/lab.md, Python packages) once per query thread (the registration is
  process-wide and idempotent).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class HostFacts:
    """One reading of the host. Zeros mean "unknown" (libvirt failed)."""

    hostname: str
    cpu_model: str = ""
    cpu_sockets: int = 0
    cpu_cores_per_socket: int = 0
    cpu_threads_per_core: int = 0
    cpu_total_threads: int = 0
    cpu_mhz: int = 0
    memory_total_bytes: int = 0
    memory_free_bytes: int = 0
    running_vms: int = 0
    #: Percentage of CPU time busy since the previous reading (0 on the first).
    cpu_usage_percent: float = 0.0
    #: Why the numbers are missing or old; empty when this reading succeeded.
    error: str = ""


@dataclass(frozen=True, slots=True)
class _CpuTimes:
    busy_ns: int
    total_ns: int


@dataclass(frozen=True, slots=True)
class _Reading:
    facts: HostFacts
    cpu: _CpuTimes | None


class HostFactsCollector:
    """Reads host facts from libvirt on demand; keeps the last good reading.

    ``latest`` is always available (zeros plus ``hostname_fallback`` before the
    first successful query), so callers never wait for libvirt.
    """

    def __init__(
        self, *, uri: str, timeout: float, hostname_fallback: str, logger: logging.Logger
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0: {timeout}")
        self._uri = uri
        self._timeout = timeout
        self._logger = logger
        self._latest = HostFacts(hostname=hostname_fallback, error="not collected yet")
        self._last_cpu: _CpuTimes | None = None
        self._busy = threading.Event()  # set while a query thread runs
        self._last_error = ""

    @property
    def latest(self) -> HostFacts:
        """The most recent facts (possibly with ``error`` set)."""
        return self._latest

    async def collect(self) -> HostFacts:
        """Query libvirt now (bounded by the timeout) and return the facts.

        Never raises for libvirt trouble: returns the previous numbers with
        ``error`` saying what went wrong.
        """
        if self._busy.is_set():
            return self._fail("previous libvirt query is still running")
        try:
            reading = await _run_in_daemon_thread(
                self._query, seconds=self._timeout, busy=self._busy, name="libvirt-hostfacts"
            )
        except TimeoutError:
            return self._fail(f"libvirt query timed out after {self._timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - libvirtError, ImportError, XML errors: all reported
            return self._fail(f"libvirt query failed: {exc}")
        facts = reading.facts
        if reading.cpu is not None and self._last_cpu is not None:
            d_total = reading.cpu.total_ns - self._last_cpu.total_ns
            d_busy = reading.cpu.busy_ns - self._last_cpu.busy_ns
            if d_total > 0:
                facts = replace(
                    facts, cpu_usage_percent=max(0.0, min(100.0, 100 * d_busy / d_total))
                )
        self._last_cpu = reading.cpu
        if self._last_error:
            self._logger.info("host facts available again from %s", self._uri)
            self._last_error = ""
        self._latest = facts
        return facts

    def _fail(self, message: str) -> HostFacts:
        # Log a given failure once, not on every refresh.
        if message != self._last_error:
            self._logger.warning("host facts from %s unavailable: %s", self._uri, message)
            self._last_error = message
        self._latest = replace(self._latest, error=message)
        return self._latest

    def _query(self) -> _Reading:
        """Blocking: open libvirt, read everything, close. Runs in a worker thread."""
        import libvirt  # imported here: the module is optional until facts are needed

        libvirt.registerErrorHandler(_ignore_libvirt_error, None)
        conn = libvirt.open(self._uri)
        if conn is None:  # old bindings return None instead of raising
            raise RuntimeError(f"cannot open {self._uri}")
        try:
            # getInfo: [arch, memory MiB, cpus, MHz, NUMA nodes, sockets/node,
            #           cores/socket, threads/core]
            info: list[Any] = conn.getInfo()
            arch, mem_mib, cpus, mhz, nodes, sockets, cores, threads = info[:8]
            hostname = _call_or(conn.getHostname, self._latest.hostname)
            free = _call_or(conn.getFreeMemory, 0)
            running = _call_or(conn.numOfDomains, 0)
            model = _cpu_model(_call_or(conn.getCapabilities, "")) or str(arch)
            cpu = _cpu_times(_call_or(lambda: conn.getCPUStats(-1), {}))
        finally:
            conn.close()
        facts = HostFacts(
            hostname=str(hostname),
            cpu_model=model,
            cpu_sockets=int(nodes) * int(sockets),
            cpu_cores_per_socket=int(cores),
            cpu_threads_per_core=int(threads),
            cpu_total_threads=int(cpus),
            cpu_mhz=int(mhz),
            memory_total_bytes=int(mem_mib) * 1024 * 1024,
            memory_free_bytes=int(free),
            running_vms=int(running),
        )
        return _Reading(facts=facts, cpu=cpu)


def _ignore_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt error handler that prints nothing (errors still raise libvirtError)."""


def _call_or(fn: Callable[[], _T], default: _T) -> _T:
    """``fn()``, or ``default`` when the driver does not support it."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - libvirtError "not supported by the connection driver"
        return default


def _cpu_model(capabilities_xml: str) -> str:
    """The host CPU model from libvirt's capabilities XML ('' if absent)."""
    if not capabilities_xml:
        return ""
    root = ET.fromstring(capabilities_xml)
    model = root.findtext("./host/cpu/model")
    return model.strip() if model else ""


def _cpu_times(stats: dict[str, int]) -> _CpuTimes | None:
    """Busy and total CPU nanoseconds from ``getCPUStats`` (None if unsupported)."""
    if not stats:
        return None
    busy = int(stats.get("user", 0)) + int(stats.get("kernel", 0))
    total = busy + int(stats.get("idle", 0)) + int(stats.get("iowait", 0))
    return _CpuTimes(busy_ns=busy, total_ns=total)


async def _run_in_daemon_thread(
    fn: Callable[[], _T], *, seconds: float, busy: threading.Event, name: str
) -> _T:
    """Run blocking ``fn`` in a new daemon thread; wait at most ``seconds``.

    ``busy`` is set while the thread runs (also after we gave up waiting), so
    the caller can refuse to start a second one next to a stuck one.
    Raises ``TimeoutError`` on timeout, or whatever ``fn`` raised.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def deliver(outcome: Callable[[], None]) -> None:
        if not future.done():  # we may have given up (timeout or cancellation)
            outcome()

    def worker() -> None:
        outcome: Callable[[], None]
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - handed to the waiting coroutine
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        finally:
            busy.clear()
        try:
            loop.call_soon_threadsafe(deliver, outcome)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    busy.set()
    threading.Thread(target=worker, name=name, daemon=True).start()
    async with asyncio.timeout(seconds):
        return await future
