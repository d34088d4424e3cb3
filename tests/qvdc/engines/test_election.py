"""Election on real etcd: our own election key on an older lease never blocks re-election,
another replica's key does, and a campaign that fails at once leaves no unawaited coroutine."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import warnings

import pytest

from qvdc.engines.election import Election
from qvdc.engines.view import ClusterView
from qvdc.kits import tasks
from qvdc.store import keys
from qvdc.store.etcd import EtcdStore, StoreError

OLD_LEASE_TTL = 60


async def _lead_forever() -> None:
    await asyncio.Event().wait()


async def _leads_within(election: Election, seconds: float) -> bool:
    task = tasks.create_guarded_task(
        election.run(lead=_lead_forever), name="election", logger=logging.getLogger(__name__)
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while loop.time() < deadline:
            if election.is_leader:
                return True
            await asyncio.sleep(0.05)
        return False
    finally:
        await tasks.cancel_and_wait(task)


async def test_own_key_on_an_old_lease_is_taken_over_at_once(store: EtcdStore) -> None:
    # What an etcd restart leaves: our key, on a lease of ours that is still counting down.
    old = await store.grant_lease(OLD_LEASE_TTL, timeout=5.0)
    await store.put(keys.ELECTION_AGGREGATOR, b"r1", lease=old.id, timeout=5.0)
    election = Election(store=store, view=ClusterView(store=store), replica_id="r1", ttl=3)
    assert await _leads_within(election, 3.0)  # the TTL, far below the old lease's 60 s
    await store.revoke_lease(old, timeout=5.0)


async def test_another_replicas_key_still_blocks(store: EtcdStore) -> None:
    other = await store.grant_lease(OLD_LEASE_TTL, timeout=5.0)
    await store.put(keys.ELECTION_AGGREGATOR, b"r2", lease=other.id, timeout=5.0)
    election = Election(store=store, view=ClusterView(store=store), replica_id="r1", ttl=3)
    assert not await _leads_within(election, 1.5)
    kv = await store.get(keys.ELECTION_AGGREGATOR, timeout=5.0)
    assert kv is not None and kv.value == b"r2"
    await store.revoke_lease(other, timeout=5.0)


class _FailingTxnStore:
    """Delegates to a real store, but every txn fails at once (the first campaign fails)."""

    def __init__(self, inner: EtcdStore) -> None:
        self._inner = inner
        self.txns = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def txn(self, **_: object) -> object:
        self.txns += 1
        raise StoreError("txn refused (test)")


async def test_campaign_failing_at_once_leaves_no_unawaited_keepalive(store: EtcdStore) -> None:
    failing = _FailingTxnStore(store)
    election = Election(
        store=failing,  # type: ignore[arg-type]
        view=ClusterView(store=store),
        replica_id="r1",
        ttl=3,
    )
    seen: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: seen.append(str(unraisable.exc_value))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not await _leads_within(election, 0.5)
            await asyncio.sleep(0.05)
            gc.collect()
            gc.collect()
        seen.extend(str(w.message) for w in caught)
    finally:
        sys.unraisablehook = previous
    assert failing.txns >= 1
    unawaited = [text for text in seen if "never awaited" in text]
    assert unawaited == [], unawaited


@pytest.mark.parametrize("ttl", [2])
async def test_lost_lease_is_one_warning_without_traceback(
    store: EtcdStore, ttl: int, caplog: pytest.LogCaptureFixture
) -> None:
    election = Election(store=store, view=ClusterView(store=store), replica_id="r1", ttl=ttl)
    task = tasks.create_guarded_task(
        election.run(lead=_lead_forever), name="election", logger=logging.getLogger(__name__)
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not election.is_leader and loop.time() < deadline:  # noqa: ASYNC110 - polling
            await asyncio.sleep(0.05)
        assert election.is_leader

        async def refuse(*_: object, **__: object) -> None:
            raise StoreError("etcd unreachable (test)")

        election._store.refresh_lease = refuse  # type: ignore[method-assign]
        with caplog.at_level("WARNING"):
            deadline = loop.time() + ttl * 3
            while election.is_leader and loop.time() < deadline:  # noqa: ASYNC110 - polling
                await asyncio.sleep(0.05)
            assert not election.is_leader
            await asyncio.sleep(0.1)
    finally:
        await tasks.cancel_and_wait(task)
    records = [r for r in caplog.records if r.name == "qvdc.engines.election"]
    assert not [r for r in records if r.levelname in ("ERROR", "CRITICAL") or r.exc_info]
    assert any("not refreshed" in r.getMessage() for r in records if r.levelname == "WARNING")
