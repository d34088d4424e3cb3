"""The naive baseline's parts: every report material, every submission written."""

from __future__ import annotations

from benchmarks.heartbeat import naive_server
from qvdc.domain.model import Health, PoolId, PoolReport
from qvdc.kits import materiality


def test_the_ordered_buffer_keeps_every_submission_and_never_a_key_twice_per_batch() -> None:
    buffer = naive_server.OrderedBuffer()
    for value in (b"1", b"2"):
        buffer.add("hs/a", value)
        buffer.add("hs/b", value)
    buffer.add("hs/c", None)
    assert len(buffer) == 5
    first = buffer.take(128)
    assert first == [("hs/a", b"1"), ("hs/b", b"1")]  # stops before "hs/a" again
    buffer.put_back(first)  # a failed commit: back at the front, in order
    assert buffer.take(1) == [("hs/a", b"1")]
    assert buffer.take(128) == [("hs/b", b"1"), ("hs/a", b"2")]
    assert buffer.take(128) == [("hs/b", b"2"), ("hs/c", None)]
    assert len(buffer) == 0


def test_every_report_is_material_even_an_unchanged_one() -> None:
    report = PoolReport(pool_id=PoolId("p"), health=Health.HEALTHY, total_bytes=10, used_bytes=1)
    assert not materiality.is_material_change(report, report)  # production: not written
    assert naive_server.always_material(report, report, fraction=0.01, min_bytes=1)
