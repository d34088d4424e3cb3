"""EtcdStore against a real etcd: key/value, transactions, leases, watches, faults."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from qvdc.settings import EtcdSettings
from qvdc.store import embedded, etcd
from qvdc.store.etcd import connections
from tests.fixtures import procs
from tests.fixtures.etcd import EtcdServer, FaultyStore

# ---------------------------------------------------------------- key/value


async def test_put_get_delete(store: etcd.EtcdStore) -> None:
    first = await store.put("pools/p1", b"one")
    second = await store.put("pools/p1", b"two")
    assert second > first

    kv = await store.get("pools/p1")
    assert kv == etcd.KeyValue(
        key="pools/p1", value=b"two", mod_revision=second, create_revision=first, version=2
    )
    assert await store.get("pools/missing") is None

    assert await store.delete("pools/p1") is True
    assert await store.delete("pools/p1") is False
    assert await store.get("pools/p1") is None


async def test_keys_live_under_the_prefix_and_come_back_relative(
    store: etcd.EtcdStore, etcd_settings: EtcdSettings
) -> None:
    await store.put("a/b", b"x")
    root_settings = EtcdSettings(endpoints=etcd_settings.endpoints, prefix="/", timeout=5)
    other_settings = EtcdSettings(
        endpoints=etcd_settings.endpoints, prefix=etcd_settings.prefix[:-1] + "-other/"
    )
    root = await etcd.EtcdStore.connect(settings=root_settings)
    other = await etcd.EtcdStore.connect(settings=other_settings)
    try:
        raw = await root.get(etcd_settings.prefix[1:] + "a/b")
        assert raw is not None and raw.value == b"x"
        assert await other.get("a/b") is None
        assert (await other.get_prefix(""))[0] == []
    finally:
        await root.close()
        await other.close()


async def test_get_prefix_is_sorted_complete_and_paged(etcd_settings: EtcdSettings) -> None:
    paged = await etcd.EtcdStore.connect(settings=etcd_settings, page_size=3)
    try:
        keys = [f"hoststatus/p1/n{i:02}" for i in range(10)]
        for key in random.sample(keys, len(keys)):
            await paged.put(key, key.encode())
        await paged.put("hoststatus/p10/n00", b"other pool")  # shares the text prefix "p1"
        await paged.put("hoststatus/p0", b"before")

        items, revision = await paged.get_prefix("hoststatus/p1/")

        assert [kv.key for kv in items] == keys
        assert all(kv.value == kv.key.encode() for kv in items)
        assert revision == await paged.revision()
    finally:
        await paged.delete_prefix("")
        await paged.close()


async def test_paged_listing_is_one_snapshot(
    etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    paged = await etcd.EtcdStore.connect(settings=etcd_settings, page_size=2)
    writer = await etcd.EtcdStore.connect(settings=etcd_settings)
    try:
        for i in range(6):
            await paged.put(f"k/{i}", b"old")
        real_call: Callable[..., Awaitable[Any]] = paged._call
        pages = 0

        async def call_then_write(what: str, call_timeout: float | None, invoke: Any) -> Any:
            nonlocal pages
            result = await real_call(what, call_timeout, invoke)
            pages += 1
            if pages == 1:  # between the first and second page, change the range
                await writer.put("k/5", b"new")
                await writer.put("k/9", b"added")
                await writer.delete("k/4")
            return result

        monkeypatch.setattr(paged, "_call", call_then_write)
        items, revision = await paged.get_prefix("k/")

        assert pages == 3
        assert [(kv.key, kv.value) for kv in items] == [(f"k/{i}", b"old") for i in range(6)]
        assert revision < await writer.revision()
    finally:
        monkeypatch.undo()
        await writer.delete_prefix("")
        await writer.close()
        await paged.close()


async def test_pages_are_bounded_by_bytes_as_well_as_keys(
    etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    page_bytes = 3 * 1024
    paged = await etcd.EtcdStore.connect(
        settings=etcd_settings, page_size=1_000, page_bytes=page_bytes
    )
    try:
        values = {f"big/{i:02}": bytes([65 + i % 26]) * 1000 for i in range(20)}
        for key, value in values.items():
            await paged.put(key, value)
        real_call: Callable[..., Awaitable[Any]] = paged._call
        page_sizes: list[int] = []

        async def counting(what: str, call_timeout: float | None, invoke: Any) -> Any:
            response = await real_call(what, call_timeout, invoke)
            page_sizes.append(sum(len(kv.key) + len(kv.value) for kv in response.kvs))
            return response

        monkeypatch.setattr(paged, "_call", counting)
        items, _revision = await paged.get_prefix("big/")

        assert {kv.key: kv.value for kv in items} == values
        assert len(page_sizes) >= 20_000 // page_bytes  # not one page of 1,000 keys
        assert max(page_sizes) <= page_bytes
    finally:
        monkeypatch.undo()
        await paged.delete_prefix("")
        await paged.close()


async def test_a_page_over_the_clients_receive_limit_is_asked_again_smaller(
    etcd_settings: EtcdSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prefix holding more than the client may receive in one message still lists."""
    receive_limit = 64 * 1024
    options = dict(connections._GRPC_OPTIONS)
    options["grpc.max_receive_message_length"] = receive_limit
    monkeypatch.setattr(connections, "_GRPC_OPTIONS", tuple(options.items()))
    # page_bytes far above the receive limit: the first pages are refused by the client
    small = await etcd.EtcdStore.connect(settings=etcd_settings, page_bytes=1 << 30)
    try:
        values = {f"huge/{i:02}": bytes([97 + i % 26]) * (20 * 1024) for i in range(30)}
        for key, value in values.items():
            await small.put(key, value)
        assert sum(map(len, values.values())) > 5 * receive_limit

        items, revision = await small.get_prefix("huge/")

        assert {kv.key: kv.value for kv in items} == values
        assert revision == await small.revision()
    finally:
        await small.delete_prefix("")
        await small.close()


async def test_delete_prefix_counts(store: etcd.EtcdStore) -> None:
    for i in range(4):
        await store.put(f"hoststatus/p1/n{i}", b"")
    await store.put("hoststatus/p2/n0", b"")

    assert await store.delete_prefix("hoststatus/p1/") == 4
    assert await store.delete_prefix("hoststatus/p1/") == 0
    assert [kv.key for kv in (await store.get_prefix(""))[0]] == ["hoststatus/p2/n0"]


async def test_revision_follows_writes(store: etcd.EtcdStore) -> None:
    written = await store.put("k", b"v")
    assert await store.revision() == written
    assert await store.put("k", b"w") == written + 1


# ---------------------------------------------------------------- transactions


async def test_txn_create_if_absent_succeeds_once(store: etcd.EtcdStore) -> None:
    compares = [etcd.Compare.absent("poolnames/gold")]
    success = [etcd.Op.put("poolnames/gold", b"p1"), etcd.Op.put("pools/p1", b"{}")]
    first = await store.txn(compares=compares, success=success)
    second = await store.txn(compares=compares, success=success)

    assert first.succeeded and not second.succeeded
    assert second.revision == first.revision  # nothing written
    names = await store.get("poolnames/gold")
    assert names is not None and names.mod_revision == first.revision


async def test_txn_cas_on_mod_revision(store: etcd.EtcdStore) -> None:
    revision = await store.put("pools/p1", b"v1")

    ok = await store.txn(
        compares=[etcd.Compare.mod_revision("pools/p1", revision)],
        success=[etcd.Op.put("pools/p1", b"v2")],
    )
    stale = await store.txn(
        compares=[etcd.Compare.mod_revision("pools/p1", revision)],
        success=[etcd.Op.put("pools/p1", b"v3")],
        failure=[etcd.Op.put("conflicts/p1", b"seen")],
    )

    assert ok.succeeded and not stale.succeeded
    current = await store.get("pools/p1")
    assert current is not None and current.value == b"v2" and current.mod_revision == ok.revision
    assert await store.get("conflicts/p1") is not None  # the failure branch ran
    absent = await store.txn(
        compares=[etcd.Compare.mod_revision("pools/none", 0)],
        success=[etcd.Op.put("pools/none", b"created")],
    )
    assert absent.succeeded


async def test_txn_compare_operators_and_targets(store: etcd.EtcdStore) -> None:
    await store.put("k", b"b")
    await store.put("k", b"b")  # version 2

    async def holds(compare: etcd.Compare) -> bool:
        return (await store.txn(compares=[compare], success=[])).succeeded

    assert await holds(etcd.Compare("k", "version", "==", 2))
    assert await holds(etcd.Compare("k", "version", ">", 1))
    assert await holds(etcd.Compare("k", "version", "<", 3))
    assert await holds(etcd.Compare("k", "version", "!=", 1))
    assert not await holds(etcd.Compare("k", "version", ">", 2))
    assert await holds(etcd.Compare("k", "value", "==", b"b"))
    assert await holds(etcd.Compare("k", "value", ">", b"a"))
    assert not await holds(etcd.Compare("k", "value", "<", b"a"))
    assert await holds(etcd.Compare.present("k"))
    assert not await holds(etcd.Compare.absent("k"))
    with pytest.raises(TypeError):
        await holds(etcd.Compare("k", "value", "==", 1))
    with pytest.raises(TypeError):
        await holds(etcd.Compare("k", "version", "==", b"1"))


async def test_txn_deletes_and_rejects_invalid(store: etcd.EtcdStore) -> None:
    await store.put("a", b"1")
    result = await store.txn(compares=[], success=[etcd.Op.delete("a"), etcd.Op.put("b", b"2")])
    assert result.succeeded
    assert await store.get("a") is None

    with pytest.raises(etcd.StoreError) as caught:  # etcd rejects a key written twice
        await store.txn(compares=[], success=[etcd.Op.put("c", b""), etcd.Op.put("c", b"")])
    assert not isinstance(caught.value, etcd.StoreUnavailable)


# ---------------------------------------------------------------- leases


async def test_lease_keys_expire_and_refresh_reports_expiry(store: etcd.EtcdStore) -> None:
    lease = await store.grant_lease(1)
    assert lease.id > 0 and lease.ttl >= 1
    written = await store.put("replicas/r1", b"alive", lease=lease.id)
    await store.refresh_lease(lease)

    events = store.watch_prefix("replicas/", start_revision=written + 1)
    async with contextlib.aclosing(events), asyncio.timeout(20):
        expired = await anext(events)  # etcd deletes the key when the lease runs out
    assert (expired.kind, expired.key) == ("delete", "replicas/r1")
    assert await store.get("replicas/r1") is None

    with pytest.raises(etcd.LeaseExpired):
        await store.refresh_lease(lease)
    with pytest.raises(etcd.LeaseExpired):
        await store.put("replicas/r1", b"again", lease=lease.id)
    with pytest.raises(etcd.LeaseExpired):
        await store.txn(compares=[], success=[etcd.Op.put("replicas/r1", b"", lease=lease.id)])


async def test_revoke_deletes_keys_and_is_idempotent(store: etcd.EtcdStore) -> None:
    lease = await store.grant_lease(30)
    await store.txn(compares=[], success=[etcd.Op.put("election/x", b"me", lease=lease.id)])
    assert await store.get("election/x") is not None

    await store.revoke_lease(lease)
    await store.revoke_lease(lease)

    assert await store.get("election/x") is None


# ---------------------------------------------------------------- watches


async def test_watch_delivers_every_event_of_concurrent_writers(store: etcd.EtcdStore) -> None:
    writers, puts_each = 50, 40
    start = await store.revision() + 1
    received: list[etcd.WatchEvent] = []

    async def consume() -> None:
        async with contextlib.aclosing(store.watch_prefix("w/", start_revision=start)) as events:
            async for event in events:
                received.append(event)
                if len(received) == writers * puts_each:
                    return

    async def write(writer: int) -> None:
        for n in range(puts_each):
            await store.put(f"w/{writer:02}", str(n).encode())

    async with asyncio.timeout(60):
        consumer = asyncio.create_task(consume())
        await asyncio.gather(*(write(w) for w in range(writers)))
        await consumer

    revisions = [event.mod_revision for event in received]
    assert len(received) == writers * puts_each
    assert revisions == sorted(set(revisions))  # unique and in order
    for w in range(writers):
        values = [e.value for e in received if e.key == f"w/{w:02}"]
        assert values == [str(n).encode() for n in range(puts_each)]
    assert all(e.kind == "put" and e.version >= 1 for e in received)


async def test_watch_replays_history_and_reports_deletes(store: etcd.EtcdStore) -> None:
    created = await store.put("w/a", b"1")
    deleted_at = (await store.txn(compares=[], success=[etcd.Op.delete("w/a")])).revision
    await store.put("other", b"not watched")

    events = store.watch_prefix("w/", start_revision=created)
    async with contextlib.aclosing(events), asyncio.timeout(10):
        put, delete = await anext(events), await anext(events)

    assert put == etcd.WatchEvent(
        kind="put", key="w/a", value=b"1", mod_revision=created, create_revision=created, version=1
    )
    assert delete == etcd.WatchEvent(kind="delete", key="w/a", value=b"", mod_revision=deleted_at)


async def test_watch_of_a_compacted_revision_raises_compacted(store: etcd.EtcdStore) -> None:
    old = await store.put("w/a", b"1")
    await store.put("w/a", b"2")
    newest = await store.put("w/a", b"3")
    await store.compact(newest)
    await store.compact(old)  # already compacted: not an error

    events = store.watch_prefix("w/", start_revision=old)
    with pytest.raises(etcd.Compacted) as caught:
        async with contextlib.aclosing(events), asyncio.timeout(10):
            await anext(events)
    assert caught.value.compact_revision == newest


# ---------------------------------------------------------------- faults and endpoints


async def test_connect_skips_a_dead_endpoint(etcd_server: EtcdServer) -> None:
    (dead,) = embedded.pick_free_ports(1)
    settings = EtcdSettings(
        endpoints=(f"127.0.0.1:{dead}", etcd_server.endpoint), prefix="/t-skip/"
    )
    store = await etcd.EtcdStore.connect(settings=settings)
    try:
        await store.put("k", b"v")
        assert (await store.get("k")) is not None
    finally:
        await store.delete_prefix("")
        await store.close()


async def test_connect_fails_when_nothing_answers() -> None:
    ports = embedded.pick_free_ports(2)
    settings = EtcdSettings(endpoints=tuple(f"127.0.0.1:{p}" for p in ports), timeout=2)
    with pytest.raises(etcd.StoreUnavailable) as caught:
        await etcd.EtcdStore.connect(settings=settings)
    assert all(str(p) in str(caught.value) for p in ports)


async def test_calls_fail_over_to_the_next_endpoint(
    private_etcd: embedded.EmbeddedEtcd, etcd_server: EtcdServer
) -> None:
    settings = EtcdSettings(
        endpoints=(private_etcd.endpoint, etcd_server.endpoint), prefix="/t-failover/", timeout=3
    )
    store = await etcd.EtcdStore.connect(settings=settings)
    try:
        await store.put("where", b"private")
        await private_etcd.stop()

        with pytest.raises(etcd.StoreUnavailable):
            await store.get("where")
        await store.put("where", b"session")  # the next call moved to the session etcd

        session = await etcd.EtcdStore.connect(
            settings=EtcdSettings(endpoints=(etcd_server.endpoint,), prefix="/t-failover/")
        )
        try:
            kv = await session.get("where")
            assert kv is not None and kv.value == b"session"
        finally:
            await session.delete_prefix("")
            await session.close()
    finally:
        await store.close()


async def test_calls_in_flight_on_a_retired_connection_fail_unavailable(
    etcd_server: EtcdServer,
) -> None:
    """Switching endpoints closes the failed connection, and grpc.aio cancels the calls
    still open on it. Those calls must fail StoreUnavailable (their callers retry), never
    raise CancelledError: a root task ending on it read as the replica being stopped."""
    settings = EtcdSettings(
        endpoints=(etcd_server.endpoint, etcd_server.endpoint), prefix="/t-retired/", timeout=3
    )
    store = await etcd.EtcdStore.connect(settings=settings)
    try:
        revision = await store.put("k", b"v")
        events = store.watch_prefix("", start_revision=revision + 1)
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)  # the watch is open, its read waiting on the connection
        assert not pending.done()
        store._endpoints._conn.failed = True
        await store.put("other", b"x")  # switches, closing the connection the watch is on
        with pytest.raises(etcd.StoreUnavailable, match="closed"):
            await asyncio.wait_for(pending, timeout=5)
        assert asyncio.current_task().cancelling() == 0
        await events.aclose()
        # A real cancellation still propagates as one.
        events = store.watch_prefix("", start_revision=await store.revision() + 1)
        pending = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.2)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        await events.aclose()
    finally:
        await store.delete_prefix("")
        await store.close()


@contextlib.contextmanager
def paused(pid: int | None) -> Iterator[None]:
    """SIGSTOP a process (a real etcd that accepts connections but never answers)."""
    assert pid is not None
    procs.sigstop(pid)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_hung_etcd_is_bounded_by_the_timeout(private_etcd: embedded.EmbeddedEtcd) -> None:
    settings = EtcdSettings(endpoints=(private_etcd.endpoint,), timeout=0.5)
    store = await etcd.EtcdStore.connect(settings=settings)
    try:
        await store.put("k", b"v")
        events = store.watch_prefix("", start_revision=await store.revision() + 1, idle_timeout=0.5)
        async with contextlib.aclosing(events):
            with paused(private_etcd.pid):
                with pytest.raises(etcd.StoreTimeout):
                    await store.get("k")
                with pytest.raises(etcd.StoreTimeout):
                    await store.put("k", b"w", timeout=0.3)
                with pytest.raises(etcd.StoreTimeout):
                    await store.txn(compares=[], success=[], timeout=0.3)
                with pytest.raises(etcd.StoreTimeout):
                    await anext(events)
        async with asyncio.timeout(10):  # answers again once resumed
            while True:
                with contextlib.suppress(etcd.StoreUnavailable):
                    assert (await store.get("k")) is not None
                    break
                await asyncio.sleep(0.1)
    finally:
        await store.close()


async def test_watch_raises_unavailable_when_etcd_restarts(
    private_etcd: embedded.EmbeddedEtcd,
) -> None:
    settings = EtcdSettings(endpoints=(private_etcd.endpoint,))
    store = await etcd.EtcdStore.connect(settings=settings)
    try:
        start = await store.put("k", b"v")
        events = store.watch_prefix("", start_revision=start)
        async with contextlib.aclosing(events):
            assert (await anext(events)).key == "k"
            await private_etcd.stop()
            with pytest.raises(etcd.StoreUnavailable):
                async with asyncio.timeout(10):
                    await anext(events)
        with pytest.raises(etcd.StoreUnavailable):
            await store.get("k")
        await private_etcd.restart()
        async with asyncio.timeout(10):
            while True:
                with contextlib.suppress(etcd.StoreUnavailable):
                    kv = await store.get("k")
                    break
                await asyncio.sleep(0.1)
        assert kv is not None and kv.value == b"v"
    finally:
        await store.close()


async def test_faulty_store_hang_is_bounded_and_heals(store: etcd.EtcdStore) -> None:
    faulty = FaultyStore(store)
    await faulty.put("k", b"v")

    faulty.hang("get")
    with pytest.raises(etcd.StoreTimeout):
        await faulty.get("k", timeout=0.2)

    hung = asyncio.create_task(faulty.get("k"))
    await asyncio.sleep(0)
    faulty.heal()
    async with asyncio.timeout(10):
        kv = await hung
    assert kv is not None and kv.value == b"v"

    faulty.fail("put", times=2)
    for _ in range(2):
        with pytest.raises(etcd.StoreUnavailable):
            await faulty.put("k", b"w")
    await faulty.put("k", b"w")
    assert faulty.calls == ["put", "get", "get", "put", "put", "put"]


async def test_closed_store_refuses_calls(etcd_settings: EtcdSettings) -> None:
    store = await etcd.EtcdStore.connect(settings=etcd_settings)
    await store.close()
    await store.close()
    with pytest.raises(etcd.StoreError):
        await store.get("k")
