"""The collector policy: survivors of a full collection are frozen, long pauses reported."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator

import pytest

from qvdc.runtime.collector import CollectorPolicy


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()  # leave the test session as it was


def test_a_full_collection_freezes_its_survivors_and_only_those(unfrozen: None) -> None:
    policy = CollectorPolicy()
    policy.install()
    try:
        survivor = _Cycle()
        _Cycle()  # garbage: collected, not frozen
        gc.collect(1)
        assert policy.full_collections == 0 and gc.get_freeze_count() == 0
        gc.collect()
        assert policy.full_collections == 1
        assert gc.is_tracked(survivor) and gc.get_freeze_count() > 0
        frozen = gc.get_freeze_count()
        # Frozen objects are still freed by reference counting ...
        plain = [object() for _ in range(10)]
        gc.collect()
        frozen_with_plain = gc.get_freeze_count()
        assert frozen_with_plain > frozen
        del plain
        assert gc.get_freeze_count() == frozen_with_plain - 1  # the list; objects untracked
        # ... and the next full collection finds new cycles as before.
        _Cycle()
        assert gc.collect() >= 1
    finally:
        policy.uninstall()
    assert policy._on_collection not in gc.callbacks


def test_freezing_can_be_turned_off(unfrozen: None) -> None:
    policy = CollectorPolicy(freeze_survivors=False)
    policy.install()
    try:
        gc.collect()
    finally:
        policy.uninstall()
    assert policy.full_collections == 1 and gc.get_freeze_count() == 0


def test_a_long_pause_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    ticks = iter([10.0, 10.5, 20.0, 20.01])
    policy = CollectorPolicy(freeze_survivors=False, slow_pause=0.2, clock=lambda: next(ticks))
    with caplog.at_level(logging.WARNING, logger="qvdc.runtime.collector"):
        policy._on_collection("start", {"generation": 1})
        policy._on_collection("stop", {"generation": 1})  # 0.5 s: reported
        policy._on_collection("start", {"generation": 0})
        policy._on_collection("stop", {"generation": 0})  # 10 ms: not
    assert [r.getMessage().split(" stopped")[0] for r in caplog.records] == [
        "garbage collection of generation 1"
    ]
    assert "0.50 s" in caplog.records[0].getMessage()
    assert policy.longest_pause == pytest.approx(0.5)


async def test_old_objects_over_budget_get_a_full_collection_on_the_loop(unfrozen: None) -> None:
    """A fleet connecting piles up old objects faster than CPython's own rule starts a
    full collection (one took 7.3 s at 100,000 hosts); past the budget, the policy
    schedules one, so each visits about the budget's worth of objects."""
    policy = CollectorPolicy(full_budget=1_000)
    policy.install()
    try:
        gc.collect()  # a frozen heap to start from
        kept = [_Cycle() for _ in range(5_000)]
        gc.collect(1)  # a middle-generation collection promotes them to the old one
        assert policy.scheduled_full_collections == 0  # scheduled, not run inside it
        assert len(gc.get_objects(generation=2)) >= 5_000
        await asyncio.sleep(0)  # the loop runs it
        assert policy.scheduled_full_collections == 1
        assert len(gc.get_objects(generation=2)) == 0  # all frozen again
        assert all(gc.is_tracked(obj) for obj in kept)

        few = [_Cycle() for _ in range(10)]  # under the budget: left to CPython
        gc.collect(1)
        await asyncio.sleep(0)
        assert policy.scheduled_full_collections == 1
        assert len(few) == 10
    finally:
        policy.uninstall()
