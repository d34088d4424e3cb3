"""Node administration rules (UpdateNode, labels, taints, drain, decommission), pure.

Plain data in, plain data or a domain error out: the API (:mod:`qvdc.api.node_admin`)
converts the wire messages, the catalog stores the result. Documents are a node's stored
``Node`` JSON (camelCase, defaults omitted, as ``betterproto2``'s ``to_dict`` writes it).

Decisions (docs/upstream.md, "Node administration"):

* **UpdateNode's mask.** Paths ``scheduling`` (both of its fields), ``scheduling.schedulable``,
  ``scheduling.taints`` and ``role``; any other path is INVALID_ARGUMENT naming
  ``update_mask.paths``. An empty mask updates every field the request *sets* (a message
  present on the wire), like upstream, which ignores the mask; a request setting nothing
  is INVALID_ARGUMENT (nothing to update).
* **Operator-owned fields.** Once an operator changed a node's role, scheduling or labels
  (UpdateNode, AddTaint/RemoveTaint, UpdateLabels), a re-registration (every agent
  restart) keeps the operator's values (:func:`merge_registration`); upstream's
  re-registration overwrote them.
* **Taints.** Keys follow the label key rule, values the label value rule; one taint per
  key (AddTaint with a known key replaces it); at most :data:`MAX_TAINTS`. RemoveTaint of
  a key the node does not carry is NOT_FOUND naming it (a typo is never a silent success).
* **Labels.** UpdateLabels adds (or overwrites) ``add_labels`` and removes ``remove_labels``;
  a key in both is INVALID_ARGUMENT; removing an absent key is a no-op; the result keeps at
  most ``Limits.max_labels`` labels.
* **Operator phases.** DrainNode sets DRAINING, DisableNode MAINTENANCE, EnableNode READY
  (OFFLINE when silent), each from any phase; heartbeats never override the first two
  (:func:`qvdc.domain.staleness.next_node_phase`). A node in either takes no new pool
  assignment (:func:`assignment_refusal`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qvdc.domain.errors import InvalidArgument, NotFound
from qvdc.domain.limits import quote
from qvdc.domain.model import OPERATOR_PHASES, NodePhase
from qvdc.domain.validation import LABEL_KEY_RE, LABEL_VALUE_MAX, validate_labels

#: Taints one node may carry.
MAX_TAINTS = 64

#: UpdateNode's mask paths -> the leaf fields each one updates.
UPDATE_PATHS: Mapping[str, frozenset[str]] = {
    "scheduling": frozenset({"scheduling.schedulable", "scheduling.taints"}),
    "scheduling.schedulable": frozenset({"scheduling.schedulable"}),
    "scheduling.taints": frozenset({"scheduling.taints"}),
    "role": frozenset({"role"}),
}

#: Key of the node document listing the fields an operator set (``role``, ``scheduling``,
#: ``labels``).
OPERATOR_SET_KEY = "operatorSet"
_SPEC_OWNED = ("role", "scheduling")


class TaintEffect(enum.IntEnum):
    """``Taint.Effect`` (wire values)."""

    NO_SCHEDULE = 0
    PREFER_NO_SCHEDULE = 1
    NO_EXECUTE = 2


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str = ""
    effect: int = TaintEffect.NO_SCHEDULE


class OperatorAction(enum.Enum):
    ENABLE = "enable"
    DISABLE = "disable"
    DRAIN = "drain"


# -- UpdateNode ----------------------------------------------------------------------------


def fields_to_update(
    paths: Sequence[str], *, scheduling_given: bool, role_given: bool
) -> frozenset[str]:
    """The leaf fields an UpdateNode changes (``scheduling.schedulable``,
    ``scheduling.taints``, ``role``), from its mask or, when the mask is empty, from the
    fields it sets. InvalidArgument for an unknown path or nothing to update."""
    leaves: set[str] = set()
    for i, path in enumerate(paths):
        known = UPDATE_PATHS.get(path)
        if known is None:
            raise InvalidArgument(
                f"unknown path {quote(path)}; known: {', '.join(sorted(UPDATE_PATHS))}",
                field=f"update_mask.paths[{i}]",
            )
        leaves |= known
    if not paths:
        if scheduling_given:
            leaves |= UPDATE_PATHS["scheduling"]
        if role_given:
            leaves.add("role")
    if not leaves:
        raise InvalidArgument(
            "nothing to update: set scheduling or role, or name them in update_mask.paths",
            field="update_mask",
        )
    return frozenset(leaves)


def validate_taint(taint: Taint, *, field: str) -> None:
    if not LABEL_KEY_RE.fullmatch(taint.key):
        raise InvalidArgument(
            f"key {quote(taint.key)} must be 1-63 characters of [A-Za-z0-9._/-]",
            field=f"{field}.key",
        )
    if len(taint.value) > LABEL_VALUE_MAX:
        raise InvalidArgument(
            f"at most {LABEL_VALUE_MAX} characters, got {len(taint.value)}",
            field=f"{field}.value",
        )
    if taint.effect not in TaintEffect._value2member_map_:
        raise InvalidArgument(f"unknown value {taint.effect!r}", field=f"{field}.effect")


def validate_taints(taints: Sequence[Taint], *, field: str) -> None:
    """Each taint valid, one per key, at most :data:`MAX_TAINTS`."""
    if len(taints) > MAX_TAINTS:
        raise InvalidArgument(f"at most {MAX_TAINTS} taints, got {len(taints)}", field=field)
    seen: set[str] = set()
    for i, taint in enumerate(taints):
        validate_taint(taint, field=f"{field}[{i}]")
        if taint.key in seen:
            raise InvalidArgument(
                f"key {quote(taint.key)} appears twice (one taint per key)",
                field=f"{field}[{i}].key",
            )
        seen.add(taint.key)


def add_taint(taints: Sequence[Taint], taint: Taint, *, field: str = "taint") -> list[Taint]:
    """``taints`` with ``taint`` in it: a taint with the same key is replaced in place."""
    validate_taint(taint, field=field)
    out = [taint if t.key == taint.key else t for t in taints]
    if taint not in out:
        if len(out) >= MAX_TAINTS:
            raise InvalidArgument(
                f"the node already carries {MAX_TAINTS} taints, the most it may", field=field
            )
        out.append(taint)
    return out


def remove_taint(taints: Sequence[Taint], key: str, *, field: str = "taint_key") -> list[Taint]:
    """``taints`` without the one keyed ``key``; NotFound when there is none."""
    if not key:
        raise InvalidArgument("required", field=field)
    out = [t for t in taints if t.key != key]
    if len(out) == len(taints):
        raise NotFound(f"the node has no taint {quote(key)}", field=field)
    return out


# -- labels ----------------------------------------------------------------------------------


def update_labels(
    labels: Mapping[str, str],
    *,
    add: Mapping[str, str],
    remove: Sequence[str],
    max_labels: int,
) -> dict[str, str]:
    """``labels`` with ``add`` set and ``remove`` deleted (see the module docstring)."""
    validate_labels(add, field="add_labels")
    for i, key in enumerate(remove):
        if not LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"key {quote(key)} must be 1-63 characters of [A-Za-z0-9._/-]",
                field=f"remove_labels[{i}]",
            )
        if key in add:
            raise InvalidArgument(
                f"key {quote(key)} is in add_labels too; say one or the other",
                field=f"remove_labels[{i}]",
            )
    if not add and not remove:
        raise InvalidArgument(
            "nothing to update: set add_labels or remove_labels", field="add_labels"
        )
    out = {k: v for k, v in labels.items() if k not in set(remove)}
    out.update(add)
    if len(out) > max_labels:
        raise InvalidArgument(
            f"the node would carry {len(out)} labels, over the limit of {max_labels}",
            field="add_labels",
        )
    return out


# -- phases ----------------------------------------------------------------------------------


def operator_phase(action: OperatorAction, *, live: bool) -> NodePhase:
    """The phase an operator action leaves a node in (from any phase)."""
    if action is OperatorAction.DRAIN:
        return NodePhase.DRAINING
    if action is OperatorAction.DISABLE:
        return NodePhase.MAINTENANCE
    return NodePhase.READY if live else NodePhase.OFFLINE


def assignment_refusal(node: str, phase: NodePhase | None) -> str | None:
    """Why a pool may not be newly assigned to a node in ``phase`` (None: it may)."""
    if phase in OPERATOR_PHASES:
        assert phase is not None
        how = "drained" if phase is NodePhase.DRAINING else "in maintenance"
        return (
            f"node {node} is {phase.name} ({how}): it takes no new pool assignments; "
            "EnableNode it first"
        )
    return None


# -- roles and registration --------------------------------------------------------------


def role_matches(
    role: Mapping[str, Any] | None,
    *,
    compute_only: bool,
    storage_only: bool,
    control_plane_only: bool,
) -> bool:
    """ListNodes' role filters: every flag set must be a role of the node (AND); no flag
    set matches every node."""
    role = role or {}
    wanted = (
        ("compute", compute_only),
        ("storage", storage_only),
        ("controlPlane", control_plane_only),
    )
    return all(bool(role.get(name)) for name, on in wanted if on)


def mark_operator_set(document: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """``document`` noting that an operator set ``fields`` (``role``, ``scheduling``)."""
    marked = set(document.get(OPERATOR_SET_KEY) or ()) | set(fields)
    return {**document, OPERATOR_SET_KEY: sorted(marked)}


def merge_registration(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A re-registration's document ``new``, keeping the role, scheduling and labels an
    operator set on the ``old`` one (and the mark saying so)."""
    out = dict(new)
    if old is None:
        return out
    owned = sorted(f for f in old.get(OPERATOR_SET_KEY) or () if f in (*_SPEC_OWNED, "labels"))
    if not owned:
        return out
    spec = dict(out.get("spec") or {})
    old_spec = old.get("spec") or {}
    for name in owned:
        if name == "labels":
            out["labels"] = dict(old.get("labels") or {})
        elif name in old_spec:
            spec[name] = old_spec[name]
        else:
            spec.pop(name, None)
    out["spec"] = spec
    out[OPERATOR_SET_KEY] = owned
    return out
