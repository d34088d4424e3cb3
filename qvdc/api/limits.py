"""Every field of every request bounded, before a handler sees it.

:func:`check` walks a decoded request by its betterproto2 field metadata and refuses,
with ``InvalidArgument`` naming the field path and the bound (docs/configuration.md,
"Limits"):

* a string longer than its bound: which bound is chosen by the field's name
  (:func:`string_limit`: ids 128, host names 253, paths 4096, a report's error message
  4096, anything else 1024 characters);
* a repeated field or map with more entries than its bound (reports per heartbeat 1024,
  labels and other maps 64, anything else 1024);
* an enum value the proto does not define (betterproto2 decodes one as a pseudo-member
  named ``~UNKNOWN``).

The walk is compiled once per message class into a plan of the fields that can carry
unbounded input (strings, repeated fields, maps, messages, enums); scalars are skipped,
so a delta heartbeat costs a few attribute reads. A test enumerates every field of every
request message and checks that the plan covers it, so a field added to the protos is
bounded from the start.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable
from typing import Any

import betterproto2

from qvdc.domain import errors
from qvdc.domain.limits import Limits

_ID_SUFFIXES = ("_id", "_ids")
_HOST_NAMES = frozenset({"hostname", "server", "host", "portal", "target_portal", "monitors"})
_PATH_NAMES = frozenset({"path", "mount_path", "export_path", "mount_point", "directory"})
_PATH_SUFFIXES = ("_path", "_dir")


def string_limit(name: str, limits: Limits) -> int:
    """The length bound of string field ``name`` (the rules in the module docstring)."""
    if name == "id" or name.endswith(_ID_SUFFIXES):
        return limits.max_id_length
    if name in _HOST_NAMES:
        return limits.max_hostname_length
    if name in _PATH_NAMES or name.endswith(_PATH_SUFFIXES):
        return limits.max_path_length
    if name == "error_message":
        return limits.max_report_message_length
    return limits.max_text_length


def count_limit(name: str, *, is_map: bool, limits: Limits) -> int:
    """The entry bound of repeated field or map ``name``."""
    if name == "storage_pools":
        return limits.max_reports_per_heartbeat
    if is_map:
        return limits.max_labels
    return limits.max_repeated


class _Over(Exception):
    """A bound broken at ``path`` (below the field being checked). Each level prepends its
    part only then, so a request within its bounds builds no path strings."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason


def check(message: Any, limits: Limits) -> None:
    """Raise ``InvalidArgument`` naming the first field of ``message`` over its bound."""
    try:
        _walk(message, _plan(type(message), limits))
    except _Over as over:
        raise errors.InvalidArgument(over.reason, field=over.path) from None


def covered_fields(message_type: type[Any]) -> frozenset[str]:
    """The names of ``message_type``'s fields the plan checks (for the coverage test)."""
    plan = _plan(message_type, Limits())
    return frozenset(name for part in plan for name, _ in part)


# A compiled plan, per message class and limits: its string fields with their bounds, its
# enum fields with their defined members, and the rest (messages, repeated fields, maps)
# with a checker each. This runs for every heartbeat, so the common fields cost a getattr
# and a comparison each.
_Step = Callable[[Any], None]
_Plan = tuple[
    tuple[tuple[str, int], ...],
    tuple[tuple[str, frozenset[Any]], ...],
    tuple[tuple[str, _Step], ...],
]
_PLANS: dict[tuple[type[Any], Limits], _Plan] = {}


def _plan(message_type: type[Any], limits: Limits) -> _Plan:
    plan = _PLANS.get((message_type, limits))
    if plan is None:
        plan = _PLANS[message_type, limits] = _compile(message_type, limits)
    return plan


def _walk(message: Any, plan: _Plan) -> None:
    strings, enums, others = plan
    for name, limit in strings:
        if len(getattr(message, name)) > limit:
            got = len(getattr(message, name))
            raise _Over(name, f"at most {limit} characters, got {got}")
    for name, members in enums:
        value = getattr(message, name)
        if value not in members:
            raise _Over(name, _unknown(value).reason)
    for name, step in others:
        try:
            step(getattr(message, name))
        except _Over as over:
            raise _Over(f"{name}{over.path}", over.reason) from None


def _compile(message_type: type[Any], limits: Limits) -> _Plan:
    hints = typing.get_type_hints(message_type)
    strings: list[tuple[str, int]] = []
    enums: list[tuple[str, frozenset[Any]]] = []
    others: list[tuple[str, _Step]] = []
    for f in dataclasses.fields(message_type):
        meta = betterproto2.FieldMetadata.get(f)
        kind, name = meta.proto_type, f.name
        if kind == "map":
            others.append((name, _map_step(count_limit(name, is_map=True, limits=limits), limits)))
            continue
        one = _one_step(name, kind, hints[name], limits)
        if meta.repeated:
            bound = count_limit(name, is_map=False, limits=limits)
            others.append((name, _repeated_step(bound, one)))
        elif kind == "string":
            strings.append((name, string_limit(name, limits)))
        elif kind == "enum":
            enums.append((name, _members(hints[name])))
        elif one is not None:
            others.append((name, one))
    return tuple(strings), tuple(enums), tuple(others)


def _class_in(hint: Any, base: type[Any]) -> type[Any]:
    """The subclass of ``base`` a field's type hint names (``X | None``, ``list[X]``, X)."""
    for candidate in (*typing.get_args(hint), hint):
        for inner in (*typing.get_args(candidate), candidate):
            if isinstance(inner, type) and issubclass(inner, base):
                return inner
    raise TypeError(f"no {base.__name__} in field type {hint!r}")


def _members(hint: Any) -> frozenset[Any]:
    """The defined members of the enum a field's type hint names."""
    enum_type: type[enum.Enum] = _class_in(hint, enum.Enum)
    return frozenset(enum_type)


def _unknown(value: Any) -> _Over:
    raw = value.value if isinstance(value, enum.Enum) else value
    return _Over("", f"unknown value {raw!r}")


def _walk_nested(value: Any, plan: _Plan) -> None:
    """:func:`_walk` of a message inside a field, its path below the field's."""
    try:
        _walk(value, plan)
    except _Over as over:
        raise _Over(f".{over.path}", over.reason) from None


def _one_step(name: str, kind: str, hint: Any, limits: Limits) -> _Step | None:
    """The checker of one value of a field (an item, for a repeated one)."""
    if kind == "string":
        bound = string_limit(name, limits)

        def check_string(value: Any) -> None:
            if len(value) > bound:
                raise _Over("", f"at most {bound} characters, got {len(value)}")

        return check_string
    if kind == "bytes":
        size = limits.max_text_length

        def check_bytes(value: Any) -> None:
            if len(value) > size:
                raise _Over("", f"at most {size} bytes, got {len(value)}")

        return check_bytes
    if kind == "message":
        message_type = _class_in(hint, betterproto2.Message)

        def check_message(value: Any) -> None:
            if value is not None:
                _walk_nested(value, _plan(message_type, limits))

        return check_message
    if kind == "enum":
        members = _members(hint)

        def check_enum(value: Any) -> None:
            if value not in members:
                raise _unknown(value)

        return check_enum
    return None  # numbers and bools: bounded by their wire type


def _repeated_step(bound: int, one: _Step | None) -> _Step:
    def check_repeated(value: Any) -> None:
        if len(value) > bound:
            raise _Over("", f"at most {bound} entries, got {len(value)}")
        if one is not None:
            for i, item in enumerate(value):
                try:
                    one(item)
                except _Over as over:
                    raise _Over(f"[{i}]{over.path}", over.reason) from None

    return check_repeated


def _map_step(bound: int, limits: Limits) -> _Step:
    text = limits.max_text_length

    def check_map(value: Any) -> None:
        if len(value) > bound:
            raise _Over("", f"at most {bound} entries, got {len(value)}")
        for key, item in value.items():
            if isinstance(key, str) and len(key) > text:
                raise _Over("", f"a key of {len(key)} characters; at most {text}")
            if isinstance(item, str) and len(item) > text:
                raise _Over("", f"the value of a key is {len(item)} characters; at most {text}")
            if isinstance(item, betterproto2.Message):
                _walk_nested(item, _plan(type(item), limits))

    return check_map
