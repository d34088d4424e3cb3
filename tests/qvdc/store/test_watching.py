"""follow_prefix and WatchCache against a real etcd (restarts, compaction, cut streams)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
from collections.abc import AsyncIterator

import pytest

from qvdc.kits import tasks
from qvdc.settings import EtcdSettings
from qvdc.store import embedded, etcd, watching
from tests.fixtures.etcd import FaultyStore

Change = tuple[str, etcd.KeyValue | None, etcd.KeyValue | None]


async def _next(stream: AsyncIterator[watching.Listed | watching.Changed]) -> object:
    async with asyncio.timeout(10):
        return await anext(stream)


# ---------------------------------------------------------------- follow_prefix


async def test_follow_prefix_lists_then_streams_changes(store: etcd.EtcdStore) -> None:
    await store.put("pools/b", b"2")
    await store.put("pools/a", b"1")
    await store.put("poolsx", b"outside")

    stream = watching.follow_prefix(store, "pools/")
    async with contextlib.aclosing(stream):
        listed = await _next(stream)
        assert isinstance(listed, watching.Listed)
        assert [kv.key for kv in listed.items] == ["pools/a", "pools/b"]
        assert listed.revision == await store.revision()

        put_at = await store.put("pools/c", b"3")
        await store.delete("pools/a")
        first, second = await _next(stream), await _next(stream)

    assert first == watching.Changed(
        etcd.WatchEvent("put", "pools/c", b"3", put_at, create_revision=put_at, version=1)
    )
    assert isinstance(second, watching.Changed)
    assert (second.event.kind, second.event.key) == ("delete", "pools/a")


async def test_a_listing_of_several_pages_then_the_watch_loses_no_event(
    etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    paged = await etcd.EtcdStore.connect(settings=etcd_settings, page_size=3, page_bytes=4096)
    writer = await etcd.EtcdStore.connect(settings=etcd_settings)
    try:
        before = {f"hs/{i:02}": f"v{i}".encode() * 100 for i in range(12)}
        for key, value in before.items():
            await writer.put(key, value)
        real_call = paged._call
        pages = 0
        written: list[int] = []

        async def call_then_write(what: str, call_timeout: float | None, invoke: object) -> object:
            nonlocal pages
            result: object = await real_call(what, call_timeout, invoke)  # type: ignore[arg-type]
            if what.startswith("list"):
                pages += 1
                # between pages: ahead of the cursor, behind it, and a delete
                written.append(await writer.put(f"hs/{pages:02}x", b"during"))
                written.append(await writer.put("hs/99", str(pages).encode()))
                if pages == 2:
                    written.append(await writer.put("hs/00", b"changed"))
                    assert await writer.delete("hs/11")
                    written.append(await writer.revision())
            return result

        monkeypatch.setattr(paged, "_call", call_then_write)
        stream = watching.follow_prefix(paged, "hs/")
        async with contextlib.aclosing(stream):
            listed = await _next(stream)
            assert isinstance(listed, watching.Listed)
            assert pages >= 3
            monkeypatch.undo()  # the watch sees the writes made while listing
            assert {kv.key: kv.value for kv in listed.items} == before
            assert listed.revision < written[0]
            cache = {kv.key: kv.value for kv in listed.items}
            after = await writer.revision()
            while True:
                changed = await _next(stream)
                assert isinstance(changed, watching.Changed)
                event = changed.event
                if event.kind == "put":
                    cache[event.key] = event.value
                else:
                    cache.pop(event.key)
                if event.mod_revision == after:
                    break
        items, _ = await writer.get_prefix("hs/")
        assert cache == {kv.key: kv.value for kv in items}
    finally:
        monkeypatch.undo()
        await writer.delete_prefix("")
        await writer.close()
        await paged.close()


async def test_follow_prefix_relists_after_compaction(
    store: etcd.EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.put("pools/a", b"1")
    stream = watching.follow_prefix(store, "pools/")
    async with contextlib.aclosing(stream):
        first = await _next(stream)
        assert isinstance(first, watching.Listed)
        # While the consumer sits on the listing, history moves on and is compacted.
        await store.put("pools/a", b"2")
        await store.put("pools/b", b"3")
        await store.compact(await store.revision())

        with caplog.at_level(logging.INFO, logger="qvdc.store.watching"):
            relisted = await _next(stream)

    assert isinstance(relisted, watching.Listed)
    assert [(kv.key, kv.value) for kv in relisted.items] == [("pools/a", b"2"), ("pools/b", b"3")]
    assert relisted.revision > first.revision
    assert "listing again" in caplog.text


async def test_follow_prefix_resumes_after_etcd_restart_without_loss_or_duplicates(
    private_etcd: embedded.EmbeddedEtcd, caplog: pytest.LogCaptureFixture
) -> None:
    """Events seen before the break are not repeated; events written before the
    stop but not yet seen, and events written after the restart, all arrive."""
    settings = EtcdSettings(endpoints=(private_etcd.endpoint,), timeout=2)
    store = await etcd.EtcdStore.connect(settings=settings)
    items: list[watching.Listed | watching.Changed] = []
    reached = {count: asyncio.Event() for count in (0, 5, 15)}

    async def follow() -> None:
        stream = watching.follow_prefix(store, "k/", backoff_initial=0.05, backoff_max=0.5)
        async with contextlib.aclosing(stream):
            async for item in stream:
                items.append(item)
                changed = sum(isinstance(i, watching.Changed) for i in items)
                if changed in reached:
                    reached[changed].set()

    async def put(key: str, value: bytes) -> None:
        while True:  # right after the restart the store may need a moment to reconnect
            try:
                await store.put(key, value)
                return
            except etcd.StoreUnavailable:
                await asyncio.sleep(0.1)

    follower = asyncio.create_task(follow(), name="follower")
    try:
        with caplog.at_level(logging.WARNING, logger="qvdc.store.watching"):
            async with asyncio.timeout(30):
                await reached[0].wait()
                for i in range(5):
                    await put(f"k/{i:02}", b"seen before the stop")
                await reached[5].wait()
                for i in range(5, 10):
                    await put(f"k/{i:02}", b"written before the stop")
                await private_etcd.restart()
                for i in range(10, 15):
                    await put(f"k/{i:02}", b"written after the restart")
                await reached[15].wait()
    finally:
        await tasks.cancel_and_wait(follower)
        await store.close()

    assert isinstance(items[0], watching.Listed)
    assert len(items) == 16  # one listing (no re-list), fifteen changes
    changes = [item.event for item in items[1:] if isinstance(item, watching.Changed)]
    assert [e.key for e in changes] == [f"k/{i:02}" for i in range(15)]
    assert "resuming after" in caplog.text  # the stream really broke and was resumed


# ---------------------------------------------------------------- WatchCache


@contextlib.asynccontextmanager
async def running(cache: watching.WatchCache) -> AsyncIterator[watching.WatchCache]:
    task = asyncio.create_task(cache.run(), name=f"watch-cache {cache.prefix}")
    try:
        await cache.wait_ready(timeout=10)
        yield cache
    finally:
        await tasks.cancel_and_wait(task)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise AssertionError("cache.run() crashed") from task.exception()


async def test_cache_get_scan_and_on_change(store: etcd.EtcdStore) -> None:
    await store.put("hoststatus/p1/n2", b"a")
    await store.put("hoststatus/p1/n1", b"b")
    await store.put("hoststatus/p10/n1", b"c")
    await store.put("pools/p1", b"not cached")
    changes: list[Change] = []
    cache = watching.WatchCache(
        store, "hoststatus/", on_change=lambda k, old, new: changes.append((k, old, new))
    )

    async with running(cache):
        assert [kv.key for kv in cache.scan("hoststatus/p1/")] == [
            "hoststatus/p1/n1",
            "hoststatus/p1/n2",
        ]
        assert len(cache.scan("")) == 3 and len(cache) == 3
        assert cache.get("pools/p1") is None
        assert [c[0] for c in changes] == [
            "hoststatus/p1/n1",
            "hoststatus/p1/n2",
            "hoststatus/p10/n1",
        ]
        assert all(old is None for _, old, _ in changes)
        changes.clear()
        before = cache.get("hoststatus/p1/n1")

        updated = await store.put("hoststatus/p1/n1", b"b2")
        await store.put("hoststatus/p1/n0", b"new")
        deleted = (
            await store.txn(compares=[], success=[etcd.Op.delete("hoststatus/p1/n2")])
        ).revision
        await cache.wait_for_revision(deleted, timeout=10)

        # The etcd server is shared by the session: a later write elsewhere may move it on.
        assert cache.revision >= deleted
        after = cache.get("hoststatus/p1/n1")
        assert after is not None and after.value == b"b2" and after.mod_revision == updated
        assert after == await store.get("hoststatus/p1/n1")
        assert cache.get("hoststatus/p1/n2") is None
        assert [kv.key for kv in cache.scan("hoststatus/p1/")] == [
            "hoststatus/p1/n0",
            "hoststatus/p1/n1",
        ]
        assert [(k, old is None, new is None) for k, old, new in changes] == [
            ("hoststatus/p1/n1", False, False),
            ("hoststatus/p1/n0", True, False),
            ("hoststatus/p1/n2", False, True),
        ]
        assert changes[0][1] == before


async def test_cache_without_values_hands_them_to_on_change(store: etcd.EtcdStore) -> None:
    await store.put("k/listed", b"at listing")
    await store.put("k/kept", b"kept")
    changes: list[Change] = []
    cache = watching.WatchCache(
        store,
        "k/",
        on_change=lambda k, old, new: changes.append((k, old, new)),
        keep_value=lambda key: key == "k/kept",
    )
    async with running(cache):
        put_at = await store.put("k/listed", b"changed")
        await cache.wait_for_revision(put_at, timeout=10)

        stored = cache.get("k/listed")
        assert stored is not None and stored.value == b"" and stored.mod_revision == put_at
        assert [kv.value for kv in cache.scan("k/")] == [b"kept", b""]
        kept = cache.get("k/kept")
        assert kept is not None and kept.value == b"kept"
    # on_change saw every value, from the listing and from the watch; "old" is what was kept.
    assert [(k, old and old.value, new and new.value) for k, old, new in changes] == [
        ("k/kept", None, b"kept"),
        ("k/listed", None, b"at listing"),
        ("k/listed", b"", b"changed"),
    ]


async def test_cache_relist_reports_every_difference(
    store: etcd.EtcdStore, caplog: pytest.LogCaptureFixture
) -> None:
    for key in ("k/changed", "k/deleted", "k/same"):
        await store.put(key, b"v1")
    faulty = FaultyStore(store)
    changes: list[Change] = []
    cache = watching.WatchCache(
        faulty,
        "k/",
        on_change=lambda k, old, new: changes.append((k, old, new)),
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    try:
        with caplog.at_level(logging.INFO, logger="qvdc.store.watching"):
            # Partition the cache's watch from etcd before it can open one (cutting an
            # open watch races with the cache opening it), so the cache lists, then
            # waits; meanwhile change things and compact the history it would resume at.
            faulty.hang("watch_prefix")
            async with running(cache):
                changes.clear()
                await store.put("k/changed", b"v2")
                await store.delete("k/deleted")
                added = await store.put("k/added", b"v1")
                await store.compact(added)
                faulty.heal()

                await cache.wait_for_revision(added, timeout=10)
                truth, _ = await store.get_prefix("k/")
                data = [kv for kv in truth if not watching.is_barrier_key(kv.key)]
                assert cache.scan("k/") == data
    finally:
        await faulty.close()

    assert "listing again" in caplog.text
    assert [(k, old and old.value, new and new.value) for k, old, new in changes] == [
        ("k/added", None, b"v1"),
        ("k/changed", b"v1", b"v2"),
        ("k/deleted", b"v1", None),
    ]


async def test_cache_catches_up_to_a_revision_written_outside_its_prefix(
    store: etcd.EtcdStore,
) -> None:
    changes: list[Change] = []
    everything = watching.WatchCache(
        store, "", on_change=lambda k, old, new: changes.append((k, old, new))
    )
    narrow = watching.WatchCache(store, "k")
    async with running(everything), running(narrow):
        await store.put("k/a", b"1")
        outside = await store.put("other/x", b"2")  # no event under "k" carries this revision

        await narrow.wait_for_revision(outside, timeout=10)
        assert narrow.revision > outside  # it applied its barrier, written after `outside`
        assert [kv.key for kv in narrow.scan("")] == ["k/a"]

        await everything.wait_for_revision(narrow.revision, timeout=10)
        barrier = await store.get(watching.barrier_key("k"))
        assert barrier is not None and barrier.key == "k/"  # in etcd, but never data:
        assert everything.get("k/") is None and narrow.get("k/") is None
        assert [kv.key for kv in everything.scan("")] == ["k/a", "other/x"]
        assert [key for key, _, _ in changes] == ["k/a", "other/x"]


async def test_cache_waits_are_bounded(store: etcd.EtcdStore) -> None:
    faulty = FaultyStore(store)
    faulty.hang("get_prefix")
    cache = watching.WatchCache(faulty, "")
    task = asyncio.create_task(cache.run(), name="hung cache")
    try:
        with pytest.raises(etcd.StoreTimeout):
            await cache.wait_ready(timeout=0.2)
        assert not cache.ready
        faulty.heal()
        await cache.wait_ready(timeout=10)
        with pytest.raises(etcd.StoreTimeout):
            await cache.wait_for_revision(cache.revision + 1000, timeout=0.2)
        await cache.wait_for_revision(cache.revision, timeout=0.2)  # already there
    finally:
        await tasks.cancel_and_wait(task)


def test_sorted_keys_match_a_plain_sorted_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watching._SortedKeys, "_LOAD", 4)  # many chunk splits and merges
    rng = random.Random(7)
    alphabet = ["a", "b", "a/", "b/", "ab", "a/b/", "z"]
    reference: list[str] = []
    keys = watching._SortedKeys()
    for _ in range(3000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
        index = bisect.bisect_left(reference, key)
        if index < len(reference) and reference[index] == key:
            keys.remove(key)
            del reference[index]
        else:
            keys.add(key)
            reference.insert(index, key)
        prefix = rng.choice(["", *alphabet])
        assert list(keys.with_prefix(prefix)) == [k for k in reference if k.startswith(prefix)]
    assert len(keys) == len(reference)
    with pytest.raises(KeyError):
        keys.remove("not there")
