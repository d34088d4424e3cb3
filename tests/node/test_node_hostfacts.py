"""Host facts from libvirt's built-in test driver, and the bounds around libvirt."""

from __future__ import annotations

import logging
import threading

from node import hostfacts

LOG = logging.getLogger("test")


def collector(uri: str = "test:///default", timeout: float = 5.0) -> hostfacts.HostFactsCollector:
    return hostfacts.HostFactsCollector(
        uri=uri, timeout=timeout, hostname_fallback="fallback-host", logger=LOG
    )


async def test_reads_the_test_driver_host():
    c = collector()
    assert c.latest.error == "not collected yet"
    facts = await c.collect()
    # test:///default: 2 NUMA nodes x 2 sockets x 2 cores x 2 threads, 16 CPUs at
    # 1400 MHz, 3 GiB of memory, one running domain ("test").
    assert facts.error == ""
    assert facts.cpu_total_threads == 16
    assert (facts.cpu_sockets, facts.cpu_cores_per_socket, facts.cpu_threads_per_core) == (4, 2, 2)
    assert facts.cpu_mhz == 1400
    assert facts.cpu_model  # the capabilities' model, or the arch when there is none
    assert facts.memory_total_bytes == 3072 * 1024 * 1024
    assert facts.memory_free_bytes > 0
    assert facts.running_vms == 1
    assert facts.hostname
    assert c.latest == facts
    again = await c.collect()
    assert 0.0 <= again.cpu_usage_percent <= 100.0


async def test_unusable_uri_reports_zeros_instead_of_failing(caplog):
    c = collector("bogus+nonsense:///nowhere")
    with caplog.at_level(logging.WARNING):
        facts = await c.collect()
    assert facts.error.startswith("libvirt query failed: ")
    assert (facts.hostname, facts.cpu_total_threads, facts.running_vms) == ("fallback-host", 0, 0)
    assert "host facts from bogus+nonsense:///nowhere unavailable" in caplog.text


async def test_hung_libvirt_is_bounded_and_not_piled_up(monkeypatch):
    c = collector(timeout=0.2)
    release = threading.Event()
    started: list[int] = []

    def hang() -> object:
        started.append(1)
        release.wait(10)
        raise RuntimeError("released")

    monkeypatch.setattr(c, "_query", hang)
    try:
        facts = await c.collect()
        assert facts.error == "libvirt query timed out after 0.2s"
        busy = await c.collect()
        assert busy.error == "previous libvirt query is still running"
        assert len(started) == 1
    finally:
        release.set()
