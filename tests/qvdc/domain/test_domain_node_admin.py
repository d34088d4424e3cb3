"""qvdc.domain.node_admin: the node administration rules, as tables and properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qvdc.domain import errors, staleness
from qvdc.domain.model import NodePhase
from qvdc.domain.node_admin import (
    MAX_TAINTS,
    OPERATOR_SET_KEY,
    OperatorAction,
    Taint,
    TaintEffect,
    add_taint,
    assignment_refusal,
    fields_to_update,
    mark_operator_set,
    merge_registration,
    operator_phase,
    remove_taint,
    role_matches,
    update_labels,
    validate_taints,
)

SCHED = frozenset({"scheduling.schedulable", "scheduling.taints"})


@pytest.mark.parametrize(
    ("paths", "scheduling", "role", "expected"),
    [
        (["scheduling"], False, False, SCHED),
        (["scheduling.schedulable"], True, True, {"scheduling.schedulable"}),
        (["scheduling.taints"], True, False, {"scheduling.taints"}),
        (["role"], True, True, {"role"}),
        (["role", "scheduling.taints", "role"], False, False, {"role", "scheduling.taints"}),
        ([], True, False, SCHED),
        ([], False, True, {"role"}),
        ([], True, True, SCHED | {"role"}),
    ],
)
def test_fields_to_update(
    paths: list[str], scheduling: bool, role: bool, expected: frozenset[str]
) -> None:
    assert fields_to_update(paths, scheduling_given=scheduling, role_given=role) == expected


@pytest.mark.parametrize(
    ("paths", "field"),
    [
        (["labels"], "update_mask.paths[0]"),
        (["role", "spec.role"], "update_mask.paths[1]"),
        (["Scheduling"], "update_mask.paths[0]"),
        ([], "update_mask"),
    ],
)
def test_fields_to_update_refusals(paths: list[str], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        fields_to_update(paths, scheduling_given=False, role_given=False)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("taints", "field"),
    [
        ([Taint("")], "t[0].key"),
        ([Taint("a b")], "t[0].key"),
        ([Taint("k" * 64)], "t[0].key"),
        ([Taint("ok", "v" * 254)], "t[0].value"),
        ([Taint("ok", effect=7)], "t[0].effect"),
        ([Taint("a"), Taint("b"), Taint("a", "x")], "t[2].key"),
        ([Taint(f"k{i}") for i in range(MAX_TAINTS + 1)], "t"),
    ],
)
def test_taint_refusals(taints: list[Taint], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_taints(taints, field="t")
    assert caught.value.field == field


def test_add_taint_replaces_in_place_and_is_bounded() -> None:
    taints = [Taint("a", "1"), Taint("b", "2")]
    assert add_taint(taints, Taint("a", "3", TaintEffect.NO_EXECUTE)) == [
        Taint("a", "3", TaintEffect.NO_EXECUTE),
        Taint("b", "2"),
    ]
    assert add_taint(taints, Taint("c")) == [*taints, Taint("c")]
    full = [Taint(f"k{i}") for i in range(MAX_TAINTS)]
    assert add_taint(full, Taint("k0", "new"))[0] == Taint("k0", "new")  # replacing is fine
    with pytest.raises(errors.InvalidArgument):
        add_taint(full, Taint("more"))


def test_remove_taint() -> None:
    assert remove_taint([Taint("a"), Taint("b")], "a") == [Taint("b")]
    with pytest.raises(errors.NotFound) as caught:
        remove_taint([Taint("b")], "a")
    assert caught.value.field == "taint_key" and "'a'" in caught.value.message
    with pytest.raises(errors.InvalidArgument):
        remove_taint([Taint("b")], "")


@pytest.mark.parametrize(
    ("labels", "add", "remove", "expected"),
    [
        ({"a": "1"}, {"b": "2"}, [], {"a": "1", "b": "2"}),
        ({"a": "1"}, {"a": "9"}, [], {"a": "9"}),
        ({"a": "1", "b": "2"}, {}, ["a", "zzz"], {"b": "2"}),
        ({}, {}, ["absent"], {}),
    ],
)
def test_update_labels(
    labels: dict[str, str], add: dict[str, str], remove: list[str], expected: dict[str, str]
) -> None:
    assert update_labels(labels, add=add, remove=remove, max_labels=64) == expected


@pytest.mark.parametrize(
    ("add", "remove", "field"),
    [
        ({"k": "v"}, ["k"], "remove_labels[0]"),
        ({"bad key": "v"}, [], "add_labels"),
        ({"k": "v" * 254}, [], "add_labels"),
        ({}, ["ok", "bad key"], "remove_labels[1]"),
        ({}, [], "add_labels"),
        ({f"k{i}": "v" for i in range(3)}, [], "add_labels"),  # over max_labels=2
    ],
)
def test_update_labels_refusals(add: dict[str, str], remove: list[str], field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        update_labels({}, add=add, remove=remove, max_labels=2)
    assert caught.value.field == field


label_keys = st.from_regex(r"[A-Za-z0-9._/-]{1,8}", fullmatch=True)
label_maps = st.dictionaries(label_keys, st.text(max_size=5), max_size=8)


@given(labels=label_maps, add=label_maps, remove=st.lists(label_keys, max_size=8))
def test_update_labels_properties(
    labels: dict[str, str], add: dict[str, str], remove: list[str]
) -> None:
    remove = [k for k in remove if k not in add]
    if not add and not remove:
        return
    out = update_labels(labels, add=add, remove=remove, max_labels=64)
    assert all(out[k] == v for k, v in add.items())  # every added label is there
    assert not set(remove) & set(out)  # no removed one is
    untouched = set(labels) - set(add) - set(remove)
    assert all(out[k] == labels[k] for k in untouched)  # the rest is kept
    assert set(out) <= set(labels) | set(add)  # nothing else appears
    assert update_labels(out, add=add, remove=remove, max_labels=64) == out  # idempotent


taints_st = st.lists(
    st.builds(Taint, label_keys, st.text(max_size=3), st.sampled_from(list(TaintEffect))),
    max_size=10,
    unique_by=lambda t: t.key,
)


@given(taints=taints_st, new=st.builds(Taint, label_keys, st.text(max_size=3)))
def test_add_then_remove_taint_properties(taints: list[Taint], new: Taint) -> None:
    added = add_taint(taints, new)
    assert [t for t in added if t.key == new.key] == [new]  # one taint per key
    assert len(added) == len(taints) + (new.key not in {t.key for t in taints})
    validate_taints(added, field="t")
    removed = remove_taint(added, new.key)
    assert new.key not in {t.key for t in removed}
    assert removed == [t for t in taints if t.key != new.key]  # order of the rest kept


@pytest.mark.parametrize(
    ("action", "live", "expected"),
    [
        (OperatorAction.DRAIN, True, NodePhase.DRAINING),
        (OperatorAction.DRAIN, False, NodePhase.DRAINING),
        (OperatorAction.DISABLE, True, NodePhase.MAINTENANCE),
        (OperatorAction.DISABLE, False, NodePhase.MAINTENANCE),
        (OperatorAction.ENABLE, True, NodePhase.READY),
        (OperatorAction.ENABLE, False, NodePhase.OFFLINE),
    ],
)
def test_operator_phase(action: OperatorAction, live: bool, expected: NodePhase) -> None:
    assert operator_phase(action, live=live) == expected


@given(
    action=st.sampled_from([OperatorAction.DRAIN, OperatorAction.DISABLE]),
    heartbeats=st.lists(st.booleans(), max_size=20),
    live=st.booleans(),
)
def test_heartbeats_and_silence_never_end_an_operator_phase(
    action: OperatorAction, heartbeats: list[bool], live: bool
) -> None:
    phase = operator_phase(action, live=live)
    for heard in heartbeats:
        phase = staleness.next_node_phase(current=phase, live=heard)
    assert phase == operator_phase(action, live=live)


@pytest.mark.parametrize(
    ("phase", "refused"),
    [
        (NodePhase.DRAINING, True),
        (NodePhase.MAINTENANCE, True),
        (NodePhase.READY, False),
        (NodePhase.OFFLINE, False),  # a silent node keeps its assignments and may get more
        (NodePhase.PENDING, False),
        (None, False),
    ],
)
def test_assignment_refusal(phase: NodePhase | None, refused: bool) -> None:
    why = assignment_refusal("'h1' (n1)", phase)
    assert (why is not None) == refused
    if why is not None:
        assert "'h1' (n1)" in why and phase is not None and phase.name in why


@pytest.mark.parametrize(
    ("role", "flags", "matches"),
    [
        ({"compute": True}, (False, False, False), True),
        (None, (False, False, False), True),
        (None, (True, False, False), False),
        ({"compute": True}, (True, False, False), True),
        ({"compute": True}, (False, True, False), False),
        ({"compute": True, "storage": True}, (True, True, False), True),
        ({"controlPlane": True}, (False, False, True), True),
        ({"compute": True, "storage": True}, (True, True, True), False),
    ],
)
def test_role_matches(
    role: dict[str, bool] | None, flags: tuple[bool, bool, bool], matches: bool
) -> None:
    c, s, p = flags
    assert role_matches(role, compute_only=c, storage_only=s, control_plane_only=p) is matches


def test_merge_registration_keeps_operator_fields_only() -> None:
    new = {"spec": {"role": {"compute": True}, "scheduling": {"schedulable": True}, "cpu": 1}}
    assert merge_registration(None, new) == new
    plain_old = {"spec": {"role": {"storage": True}}}
    assert merge_registration(plain_old, new) == new  # not operator-set: the node's say
    old = mark_operator_set(
        {"spec": {"role": {"storage": True}, "scheduling": {"taints": [{"key": "t"}]}}},
        ["role"],
    )
    assert old[OPERATOR_SET_KEY] == ["role"]
    merged = merge_registration(old, new)
    assert merged["spec"] == {
        "role": {"storage": True},
        "scheduling": {"schedulable": True},
        "cpu": 1,
    }
    old = mark_operator_set(old, ["scheduling"])
    merged = merge_registration(old, new)
    assert merged["spec"]["scheduling"] == {"taints": [{"key": "t"}]}
    assert merged[OPERATOR_SET_KEY] == ["role", "scheduling"]
    # An operator-set field the old spec lacks (all defaults) stays at its defaults.
    bare = mark_operator_set({"spec": {}}, ["role"])
    assert "role" not in merge_registration(bare, new)["spec"]


def test_merge_registration_keeps_operator_labels() -> None:
    new = {"labels": {"zone": "from-agent"}, "spec": {}}
    old = mark_operator_set({"labels": {"rack": "r9"}, "spec": {}}, ["labels"])
    merged = merge_registration(old, new)
    assert merged["labels"] == {"rack": "r9"}
    assert merged[OPERATOR_SET_KEY] == ["labels"]
    assert merge_registration({"labels": {"rack": "r9"}}, new)["labels"] == {"zone": "from-agent"}


small = st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2)
spec_docs = st.fixed_dictionaries({}, optional={"role": small, "scheduling": small, "cpu": small})
node_docs = st.fixed_dictionaries(
    {"spec": spec_docs}, optional={"labels": st.dictionaries(label_keys, st.text(max_size=2))}
)


@given(
    old=node_docs,
    new=node_docs,
    owned=st.sets(st.sampled_from(["role", "scheduling", "labels", "cpu"])),
)
def test_merge_registration_properties(
    old: dict[str, Any], new: dict[str, Any], owned: set[str]
) -> None:
    old = mark_operator_set(old, owned)
    merged = merge_registration(old, new)
    kept = owned & {"role", "scheduling"}
    for name in ("role", "scheduling", "cpu"):
        source = old if name in kept else new  # "cpu" is never operator-owned
        assert merged["spec"].get(name) == source["spec"].get(name)
    labels_from = old if "labels" in owned else new
    assert merged.get("labels", {}) == labels_from.get("labels", {})
    assert merge_registration(old, merged) == merged  # registering again changes nothing
