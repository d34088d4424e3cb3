"""Who judges a node's liveness: its live owner, else the live leader, else nobody."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qvdc.domain import staleness


@pytest.mark.parametrize(
    ("owner", "live", "leader", "judge"),
    [
        pytest.param("A", {"A", "B"}, "B", "A", id="live-owner-judges-not-the-leader"),
        pytest.param("A", {"A", "B"}, None, "A", id="live-owner-judges-without-a-leader"),
        pytest.param("A", {"A"}, "A", "A", id="owner-is-the-leader"),
        pytest.param("C", {"A", "B"}, "B", "B", id="gone-owner-leader-judges"),
        pytest.param("", {"A", "B"}, "B", "B", id="no-owner-recorded-leader-judges"),
        pytest.param("C", {"A", "B"}, None, None, id="gone-owner-no-leader-nobody"),
        pytest.param("C", {"A"}, "B", None, id="gone-owner-leader-not-present-nobody"),
        pytest.param("A", set(), None, None, id="no-replica-present-nobody"),
    ],
)
def test_judge_of(owner: str, live: set[str], leader: str | None, judge: str | None) -> None:
    assert staleness.judge_of(owner=owner, live_replicas=frozenset(live), leader=leader) == judge


@pytest.mark.parametrize(
    ("owner", "live", "me", "leader", "expected"),
    [
        pytest.param("A", {"A", "B"}, "A", None, True, id="owner"),
        pytest.param("B", {"A", "B"}, "A", "A", False, id="leader-but-owner-live"),
        pytest.param("B", {"A", "B"}, "A", None, False, id="merely-stopped-hearing"),
        pytest.param("C", {"A", "B"}, "A", "A", True, id="leader-of-an-orphan"),
        pytest.param("A", {"B"}, "A", None, False, id="own-presence-gone"),
        pytest.param("A", {"B"}, "A", "B", False, id="own-presence-gone-leader-takes-it"),
    ],
)
def test_judges(owner: str, live: set[str], me: str, leader: str | None, expected: bool) -> None:
    result = staleness.judges(owner=owner, live_replicas=frozenset(live), me=me, leader=leader)
    assert result is expected


REPLICAS = st.sampled_from(["", "A", "B", "C", "D"])


@given(
    owner=REPLICAS,
    live=st.frozensets(REPLICAS.filter(bool)),
    leader=st.none() | REPLICAS.filter(bool),
)
def test_at_most_one_judge_and_a_live_owner_always_judges(
    owner: str, live: frozenset[str], leader: str | None
) -> None:
    """Every replica asks with the same view: at most one says yes; a live owner is it; a
    replica that is neither the owner nor the leader never is; a gone owner's node goes
    to a live leader."""
    everyone = {"A", "B", "C", "D"}
    yes = {
        me
        for me in everyone
        if staleness.judges(owner=owner, live_replicas=live, me=me, leader=leader)
    }
    assert len(yes) <= 1
    if owner in live:
        assert yes == {owner}
    elif leader in live:
        assert yes == {leader}
    else:
        assert yes == set()
    assert yes <= {owner, leader} & live
