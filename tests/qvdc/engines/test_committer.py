"""GroupCommitter over a real etcd: coalescing, batch limits, retries, and a table that
does not keep a burst's size."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

from qvdc.engines.committer import GroupCommitter
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


async def values(store: EtcdStore, prefix: str) -> dict[str, bytes]:
    kvs, _ = await store.get_prefix(prefix, timeout=TIMEOUT)
    return {kv.key: kv.value for kv in kvs}


async def test_a_key_submitted_twice_is_written_once_with_its_last_value(
    store: EtcdStore,
) -> None:
    committer = GroupCommitter(store=store, delay=0.01, max_ops=128, timeout=TIMEOUT)
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
    committer = GroupCommitter(store=store, delay=0.01, max_ops=128, timeout=TIMEOUT)
    for i in range(300):
        committer.submit(f"hs/{i:03d}", str(i).encode())
    committer.submit("hs/000", None)  # a delete of a key not yet written: still one op
    first = committer._take_batch()
    assert [key for key, _ in first] == [f"hs/{i:03d}" for i in range(128)]
    assert first[0] == ("hs/000", None)
    committer._put_back(first)  # as after a failed commit: back at the front, in order
    assert committer._take_batch() == first
    committer._put_back(first)
    async with running(committer):
        await committer.flushed(timeout=TIMEOUT)
    stored = await values(store, "hs/")
    assert stored == {f"hs/{i:03d}": str(i).encode() for i in range(1, 300)}
    assert (committer.ops_committed, committer.txns_committed) == (300, 3)


async def test_a_failed_commit_is_retried_and_a_newer_value_wins(store: EtcdStore) -> None:
    faulty = FaultyStore(store)
    faulty.fail("txn", times=2)
    committer = GroupCommitter(store=faulty, delay=0.01, max_ops=128, timeout=TIMEOUT)
    committer.submit("hs/a", b"old")
    in_flight = committer._take_batch()  # as a commit attempt takes it
    committer.submit("hs/a", b"new")  # submitted while that attempt is in flight
    committer._put_back(in_flight)  # the attempt failed
    async with running(committer):  # two more attempts fail, the third succeeds
        await committer.flushed(timeout=TIMEOUT)
    assert await values(store, "hs/") == {"hs/a": b"new"}
    assert faulty.calls.count("txn") == 3


async def test_the_pending_table_does_not_keep_a_bursts_size(store: EtcdStore) -> None:
    """A dict never shrinks as keys are popped, and iterating it walks every slot it ever
    filled: batches taken by iterating one long-lived dict made every commit after a
    fleet's first full reports walk that burst's table again (about a millisecond each)."""
    committer = GroupCommitter(store=store, delay=0, max_ops=128, timeout=TIMEOUT)
    for i in range(50_000):
        committer.submit(f"hs/{i}", b"v")
    while committer.backlog:
        committer._take_batch()
    committer.submit("hs/late", b"v")
    assert sys.getsizeof(committer._pending) == sys.getsizeof({"hs/late": b"v"})  # not 2.6 MB
    assert committer._take_batch() == [("hs/late", b"v")]
