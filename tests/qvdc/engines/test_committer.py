"""GroupCommitter over a real etcd: coalescing, batch limits, retries, and a table that
does not keep a burst's size."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

import pytest

from qvdc.engines.committer import CoalescingBuffer, GroupCommitter
from qvdc.kits import tasks
from qvdc.store.etcd import EtcdStore
from tests.fixtures.etcd import FaultyStore

TIMEOUT = 10.0


@contextlib.asynccontextmanager
async def running(committer: GroupCommitter) -> AsyncIterator[GroupCommitter]:
    task = asyncio.create_task(committer.run(), name="committer")
    try:
        yield committer
    finally:
        await tasks.cancel_and_wait(task)


async def until_called(faulty: FaultyStore, name: str) -> None:
    async with asyncio.timeout(TIMEOUT):
        while name not in faulty.calls:  # noqa: ASYNC110 - polling the fault injector's log
            await asyncio.sleep(0.01)


async def values(store: EtcdStore, prefix: str) -> dict[str, bytes]:
    kvs, _ = await store.get_prefix(prefix, timeout=TIMEOUT)
    return {kv.key: kv.value for kv in kvs}


async def test_a_key_submitted_twice_is_written_once_with_its_last_value(
    store: EtcdStore,
) -> None:
    committer = GroupCommitter(
        store=store, delay=0.01, max_ops=128, timeout=TIMEOUT, flush_timeout=TIMEOUT
    )
    committer.submit("hs/a", b"1")
    committer.submit("hs/a", b"2")
    committer.submit("hs/b", b"x")
    async with running(committer):
        await committer.flushed(timeout=TIMEOUT)
    assert await values(store, "hs/") == {"hs/a": b"2", "hs/b": b"x"}
    assert (committer.ops_committed, committer.txns_committed) == (2, 1)


async def test_more_than_max_ops_go_in_several_transactions_in_submission_order(
    store: EtcdStore,
) -> None:
    buffer = CoalescingBuffer()
    committer = GroupCommitter(
        store=store, delay=0.01, max_ops=128, timeout=TIMEOUT, flush_timeout=TIMEOUT, buffer=buffer
    )
    for i in range(300):
        committer.submit(f"hs/{i:03d}", str(i).encode())
    committer.submit("hs/000", None)  # a delete of a key not yet written: still one op
    first = buffer.take(128)
    assert [key for key, _ in first] == [f"hs/{i:03d}" for i in range(128)]
    assert first[0] == ("hs/000", None)
    buffer.put_back(first)  # as after a failed commit: back at the front, in order
    assert buffer.take(128) == first
    buffer.put_back(first)
    async with running(committer):
        await committer.flushed(timeout=TIMEOUT)
    stored = await values(store, "hs/")
    assert stored == {f"hs/{i:03d}": str(i).encode() for i in range(1, 300)}
    assert (committer.ops_committed, committer.txns_committed) == (300, 3)


async def test_a_failed_commit_is_retried_and_a_newer_value_wins(store: EtcdStore) -> None:
    faulty = FaultyStore(store)
    faulty.fail("txn", times=2)
    buffer = CoalescingBuffer()
    committer = GroupCommitter(
        store=faulty, delay=0.01, max_ops=128, timeout=TIMEOUT, flush_timeout=TIMEOUT, buffer=buffer
    )
    committer.submit("hs/a", b"old")
    in_flight = buffer.take(128)  # as a commit attempt takes it
    committer.submit("hs/a", b"new")  # submitted while that attempt is in flight
    buffer.put_back(in_flight)  # the attempt failed
    async with running(committer):  # two more attempts fail, the third succeeds
        await committer.flushed(timeout=TIMEOUT)
    assert await values(store, "hs/") == {"hs/a": b"new"}
    assert faulty.calls.count("txn") == 3


async def test_the_pending_table_does_not_keep_a_bursts_size(store: EtcdStore) -> None:
    """A dict never shrinks as keys are popped, and iterating it walks every slot it ever
    filled: batches taken by iterating one long-lived dict made every commit after a
    fleet's first full reports walk that burst's table again (about a millisecond each)."""
    buffer = CoalescingBuffer()
    for i in range(50_000):
        buffer.add(f"hs/{i}", b"v")
    while buffer:
        buffer.take(128)
    buffer.add("hs/late", b"v")
    assert sys.getsizeof(buffer._pending) == sys.getsizeof({"hs/late": b"v"})  # not 2.6 MB
    assert buffer.take(128) == [("hs/late", b"v")]


# ---------------------------------------------------------------- shutdown


async def test_cancelled_with_1000_pending_it_writes_all_of_them(store: EtcdStore) -> None:
    committer = GroupCommitter(
        store=store, delay=1.0, max_ops=128, timeout=TIMEOUT, flush_timeout=TIMEOUT
    )
    task = asyncio.create_task(committer.run(), name="committer")
    for i in range(1000):
        committer.submit(f"hs/{i:04d}", str(i).encode())
    await asyncio.sleep(0.05)  # the committer is waiting out its delay
    assert committer.backlog == 1000 and committer.ops_committed == 0
    await tasks.cancel_and_wait(task)
    assert task.cancelled()  # the cancellation was not swallowed
    assert await values(store, "hs/") == {f"hs/{i:04d}": str(i).encode() for i in range(1000)}
    assert (committer.ops_committed, committer.txns_committed) == (1000, 8)  # 7 x 128 + 104


async def test_a_batch_in_flight_when_cancelled_is_written_by_the_flush(store: EtcdStore) -> None:
    faulty = FaultyStore(store)
    faulty.hang("txn")
    committer = GroupCommitter(
        store=faulty, delay=0, max_ops=128, timeout=TIMEOUT, flush_timeout=TIMEOUT
    )
    task = asyncio.create_task(committer.run(), name="committer")
    for i in range(200):
        committer.submit(f"hs/{i:03d}", b"v")
    await until_called(faulty, "txn")  # the first batch of 128 is in flight, hung
    assert committer.backlog == 72
    task.cancel()
    faulty.heal()
    await tasks.cancel_and_wait(task)
    assert len(await values(store, "hs/")) == 200


async def test_what_the_flush_bound_leaves_is_logged_with_its_count(
    store: EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = FaultyStore(store)
    committer = GroupCommitter(store=faulty, delay=1.0, max_ops=128, timeout=0.2, flush_timeout=0.5)
    task = asyncio.create_task(committer.run(), name="committer")
    for i in range(1000):
        committer.submit(f"hs/{i:04d}", b"v")
    await asyncio.sleep(0.05)
    faulty.hang("txn")  # etcd stalls: every commit times out
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="qvdc.engines.committer"):
        await tasks.cancel_and_wait(task)
    assert loop.time() - started < 0.5 + 2.0  # the bound and slack (wall clock: real etcd)
    assert task.cancelled()
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert "1000 host-status writes lost" in lost[0].getMessage()
    assert committer.backlog == 1000
    assert await values(store, "hs/") == {}


async def test_a_second_cancellation_stops_the_flush_and_logs_what_is_left(
    store: EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    faulty = FaultyStore(store)
    committer = GroupCommitter(
        store=faulty, delay=1.0, max_ops=128, timeout=TIMEOUT, flush_timeout=60
    )
    task = asyncio.create_task(committer.run(), name="committer")
    for i in range(300):
        committer.submit(f"hs/{i:03d}", b"v")
    await asyncio.sleep(0.05)
    faulty.hang("txn")
    task.cancel()  # the flush starts, and hangs in its first commit
    await until_called(faulty, "txn")
    with caplog.at_level(logging.WARNING, logger="qvdc.engines.committer"):
        task.cancel()  # forced: give up the flush at once
        await asyncio.wait({task}, timeout=2.0)
    assert task.cancelled()
    assert any(
        "300 host-status writes lost" in r.getMessage() and "forced" in r.getMessage()
        for r in caplog.records
    )


# ---------------------------------------------------------------- refused writes


async def test_an_op_etcd_refuses_is_isolated_and_the_rest_of_the_batch_lands(
    store: EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A poison pill: one write over etcd's request limit (1.5 MiB) among 100. Retried
    whole, it would hold every other host's write for ever."""
    refused: list[tuple[str, str]] = []

    def on_refused(key: str, reason: str) -> bytes:
        refused.append((key, reason))
        return b"ERROR row"

    committer = GroupCommitter(
        store=store,
        delay=0.01,
        max_ops=128,
        timeout=TIMEOUT,
        flush_timeout=TIMEOUT,
        max_txn_bytes=8 * 1024 * 1024,  # let the big one reach etcd
        max_op_bytes=8 * 1024 * 1024,
        on_refused=on_refused,
    )
    for i in range(100):
        big = i == 37
        committer.submit(f"pp/{i:03d}", b"x" * (2 * 1024 * 1024) if big else str(i).encode())
    with caplog.at_level(logging.WARNING, logger="qvdc.engines.committer"):
        async with running(committer):
            await committer.flushed(timeout=TIMEOUT)
    stored = await values(store, "pp/")
    assert stored == {
        f"pp/{i:03d}": (b"ERROR row" if i == 37 else str(i).encode()) for i in range(100)
    }
    assert [key for key, _ in refused] == ["pp/037"]
    assert "refused by etcd" in refused[0][1]
    assert committer.ops_refused == 1
    assert any("pp/037" in r.getMessage() and r.exc_info is None for r in caplog.records)


async def test_a_transaction_stays_under_max_txn_bytes(store: EtcdStore) -> None:
    committer = GroupCommitter(
        store=store,
        delay=0.01,
        max_ops=128,
        timeout=TIMEOUT,
        flush_timeout=TIMEOUT,
        max_txn_bytes=1024 * 1024,
        max_op_bytes=400 * 1024,
    )
    row = b"y" * (300 * 1024)
    for i in range(10):
        committer.submit(f"tb/{i}", row)
    async with running(committer):
        await committer.flushed(timeout=TIMEOUT)
    assert await values(store, "tb/") == {f"tb/{i}": row for i in range(10)}
    assert committer.ops_refused == 0
    assert committer.txns_committed == 4  # 3 + 3 + 3 + 1 rows of 300 KiB under 1 MiB


async def test_etcd_unreachable_is_retried_not_refused(store: EtcdStore) -> None:
    faulty = FaultyStore(store)
    faulty.fail("txn", times=3)
    committer = GroupCommitter(
        store=faulty,
        delay=0.01,
        max_ops=128,
        timeout=TIMEOUT,
        flush_timeout=TIMEOUT,
        on_refused=lambda key, reason: pytest.fail(f"{key} refused: {reason}"),
    )
    for i in range(10):
        committer.submit(f"ur/{i}", b"v")
    async with running(committer):
        await committer.flushed(timeout=TIMEOUT)
    assert await values(store, "ur/") == {f"ur/{i}": b"v" for i in range(10)}
    assert committer.ops_refused == 0


async def test_a_write_over_max_op_bytes_is_refused_at_submit(
    store: EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    refused: list[str] = []

    def on_refused(key: str, reason: str) -> bytes:
        refused.append(reason)
        return b"ERROR row"

    committer = GroupCommitter(
        store=store,
        delay=0.01,
        max_ops=128,
        timeout=TIMEOUT,
        flush_timeout=TIMEOUT,
        max_op_bytes=1024,
        on_refused=on_refused,
    )
    with caplog.at_level(logging.WARNING, logger="qvdc.engines.committer"):
        committer.submit("sb/big", b"z" * 2000)
        committer.submit("sb/small", b"ok")
    assert committer.ops_refused == 1
    assert refused and "2006 bytes is over 1024" in refused[0]
    assert len([r for r in caplog.records if "sb/big" in r.getMessage()]) == 1
    async with running(committer):
        await committer.flushed(timeout=TIMEOUT)
    assert await values(store, "sb/") == {"sb/big": b"ERROR row", "sb/small": b"ok"}
