"""Proto3 JSON for betterproto2 messages: strict on types, silent on unknown fields.

betterproto2's ``from_dict`` is lenient where a server cannot be: it keeps ``5`` in a
string field (``len()`` then fails in the limits check), takes ``-1`` or ``2**70`` as a
``uint64``, and raises ``AttributeError`` or ``TypeError`` on a wrong shape. It also
does not read a ``FieldMask`` in its JSON form (``"description,spec.qos"``).
:func:`parse` walks the decoded JSON against the message class's field metadata and
builds the message itself, so a request decodes to well-typed values or raises
:class:`~qvdc.transport.wire.Malformed` naming the proto field path
(``storage_pools[0].health: ...``), never anything else.

The rules are protobuf's JSON mapping, as connect-go's ``protojson`` with
``DiscardUnknown`` reads it:

* a field is named by its JSON name (lowerCamelCase) or its proto name; an unknown
  key is ignored (upstream's agent sends fields a strict parser rejects); the same
  field twice, or two members of one oneof, is an error; ``null`` is the default;
* 64-bit integers may be numbers or decimal strings, every integer is range-checked
  for its type, and a float is accepted only with an integral value;
* an enum is its value name or its number (an unknown number is kept, as on the binary
  path, and the limits check refuses it with the same message; an unknown name is an
  error: there is no number to keep);
* ``bytes`` are base64, ``Timestamp`` an RFC 3339 string, ``FieldMask`` a
  comma-separated string of lowerCamelCase paths.

Repeated fields and maps are bounded as on the binary path
(:data:`qvdc.transport.wire.MAX_ENTRIES` per field, :data:`~qvdc.transport.wire.MAX_TOTAL_ENTRIES`
per request), and nesting by :data:`~qvdc.transport.wire.MAX_DEPTH`.

:func:`serialize` is betterproto2's ``to_dict`` (proto3 JSON: lowerCamelCase, 64-bit
integers as strings, enums by name, default values omitted, as connect-go writes them).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import math
import re
import typing
from typing import Any, TypeVar

import betterproto2

from protos.google import protobuf as pb
from qvdc.domain.limits import quote
from qvdc.transport import wire

_M = TypeVar("_M", bound=betterproto2.Message)

_INT_RANGES = {
    "int32": (-(1 << 31), (1 << 31) - 1),
    "sint32": (-(1 << 31), (1 << 31) - 1),
    "sfixed32": (-(1 << 31), (1 << 31) - 1),
    "uint32": (0, (1 << 32) - 1),
    "fixed32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
    "sint64": (-(1 << 63), (1 << 63) - 1),
    "sfixed64": (-(1 << 63), (1 << 63) - 1),
    "uint64": (0, (1 << 64) - 1),
    "fixed64": (0, (1 << 64) - 1),
}
_FLOATS = frozenset({"float", "double"})
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")
_NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TIMESTAMP_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def json_name(name: str) -> str:
    """protoc's JSON name of a field: ``storage_pools`` -> ``storagePools``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def snake_name(name: str) -> str:
    """The inverse, for a ``FieldMask`` path: ``assignedNodeIds`` -> ``assigned_node_ids``."""
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    meta: betterproto2.FieldMetadata
    hint: Any  # the element's type: a message or enum class, or a scalar type


_FIELDS: dict[type[Any], dict[str, _Field]] = {}


def _fields(cls: type[Any]) -> dict[str, _Field]:
    """JSON name and proto name -> field, of a message class."""
    table = _FIELDS.get(cls)
    if table is None:
        hints = typing.get_type_hints(cls)
        table = {}
        for f in dataclasses.fields(cls):
            meta = betterproto2.FieldMetadata.get(f)
            hint = hints[f.name]
            field = _Field(f.name, meta, _element(hint))
            table[json_name(f.name)] = field
            table[f.name] = field
        _FIELDS[cls] = table
    return table


def _element(hint: Any) -> Any:
    """The class inside ``X | None``, ``list[X]``; a map's ``dict[K, V]`` is kept."""
    if typing.get_origin(hint) is dict:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list or (args and len(args) == 1):
        return _element(args[0])
    return hint


class _Budget:
    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries = wire.MAX_TOTAL_ENTRIES


class _Bad(Exception):
    """Malformed at ``path`` (the path is built only on the way out)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = path, reason


def parse(data: bytes | bytearray, message_type: type[_M]) -> _M:
    """``data`` (UTF-8 JSON) as a ``message_type``, or :class:`~qvdc.transport.wire.Malformed`."""
    if not data.strip():
        return message_type()  # an empty body is the empty message
    try:
        tree = json.loads(data)
    except RecursionError:
        raise wire.Malformed("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise wire.Malformed(f"not valid JSON ({_short(exc)})") from None
    try:
        return typing.cast(_M, _message(tree, message_type, depth=0, budget=_Budget()))
    except _Bad as bad:
        raise wire.Malformed(bad.reason, field=bad.path.lstrip(".")) from None


def serialize(message: betterproto2.Message) -> bytes:
    """``message`` as proto3 JSON (UTF-8)."""
    doc = message.to_dict()
    if _renames(type(message)) is not None:
        _rename(doc, type(message))
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


# betterproto2's to_dict names a field whose part after "_" starts with a digit its own
# way (load_1m -> "load1M"); protoc's JSON name, which clients read, is "load1m". Per
# message class: (its keys to rename, its message fields that may need renames inside),
# or None when nothing in it or below needs any (nearly every class: one dict look-up).
_Renames = tuple[dict[str, str], list[tuple[str, type[Any]]]]
_RENAMES: dict[type[Any], _Renames | None] = {}


def _renames(cls: type[Any]) -> _Renames | None:
    if cls in _RENAMES:
        return _RENAMES[cls]
    _RENAMES[cls] = None  # a recursive type needs nothing through itself
    keys: dict[str, str] = {}
    nested: list[tuple[str, type[Any]]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        theirs = betterproto2.Casing.CAMEL(f.name).rstrip("_")
        ours = json_name(f.name)
        if theirs != ours:
            keys[theirs] = ours
        inner = _element(hints[f.name])
        message = isinstance(inner, type) and issubclass(inner, betterproto2.Message)
        if message and _renames(inner) is not None:
            nested.append((ours, inner))
    found = (keys, nested) if keys or nested else None
    _RENAMES[cls] = found
    return found


def _rename(doc: Any, cls: type[Any]) -> None:
    found = _RENAMES.get(cls)
    if found is None or not isinstance(doc, dict):
        return
    keys, nested = found
    for theirs, ours in keys.items():
        if theirs in doc:
            doc[ours] = doc.pop(theirs)
    for key, inner in nested:
        value = doc.get(key)
        for item in value if isinstance(value, list) else [value]:
            _rename(item, inner)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 80 else text[:80] + "…"


def _message(value: Any, cls: type[Any], *, depth: int, budget: _Budget) -> Any:
    if depth > wire.MAX_DEPTH:
        raise _Bad("", f"nested deeper than {wire.MAX_DEPTH} messages")
    if cls is pb.FieldMask:
        return _field_mask(value)
    if cls is pb.Timestamp:
        return _timestamp(value)
    if not isinstance(value, dict):
        raise _Bad("", "a JSON object is expected")
    fields = _fields(cls)
    values: dict[str, Any] = {}
    seen: set[str] = set()
    groups: set[str] = set()
    for key, item in value.items():
        field = fields.get(key)
        if field is None:
            continue  # unknown: ignored (module docstring)
        name = field.name
        if name in seen:
            raise _Bad(f".{name}", "the field is given twice")
        seen.add(name)
        if item is None:
            continue
        group = field.meta.group
        if group is not None:
            if group in groups:
                raise _Bad(f".{name}", f"only one of the {group!r} fields may be set")
            groups.add(group)
        try:
            values[name] = _value(item, field, depth=depth, budget=budget)
        except _Bad as bad:
            raise _Bad(f".{name}{bad.path}", bad.reason) from None
    return cls(**values)


def _value(item: Any, field: _Field, *, depth: int, budget: _Budget) -> Any:
    meta = field.meta
    if meta.proto_type == "map":
        return _map(item, field, depth=depth, budget=budget)
    if meta.repeated:
        if not isinstance(item, list):
            raise _Bad("", "a JSON array is expected")
        _spend(budget, len(item))
        out = []
        for i, one in enumerate(item):
            try:
                out.append(_single(one, meta, field.hint, depth=depth, budget=budget))
            except _Bad as bad:
                raise _Bad(f"[{i}]{bad.path}", bad.reason) from None
        return out
    return _single(item, meta, field.hint, depth=depth, budget=budget)


def _spend(budget: _Budget, count: int) -> None:
    if count > wire.MAX_ENTRIES:
        raise _Bad("", f"at most {wire.MAX_ENTRIES} entries, got {count}")
    budget.entries -= count
    if budget.entries < 0:
        raise _Bad("", f"at most {wire.MAX_TOTAL_ENTRIES} entries in all repeated fields")


def _map(item: Any, field: _Field, *, depth: int, budget: _Budget) -> dict[Any, Any]:
    if not isinstance(item, dict):
        raise _Bad("", "a JSON object is expected")
    _spend(budget, len(item))
    assert field.meta.map_meta is not None
    key_meta, value_meta = field.meta.map_meta
    value_hint = (typing.get_args(field.hint) or (str, str))[1]
    out: dict[Any, Any] = {}
    for key, one in item.items():
        try:
            parsed_key = _map_key(key, key_meta.proto_type)
            if one is None:
                raise _Bad("", "a map value must not be null")
            out[parsed_key] = _single(
                one, value_meta, _element(value_hint), depth=depth, budget=budget
            )
        except _Bad as bad:
            raise _Bad(f"[{quote(key)}]{bad.path}", bad.reason) from None
    return out


def _map_key(key: str, kind: str) -> Any:
    if kind == "string":
        return key
    if kind == "bool":
        if key not in ("true", "false"):
            raise _Bad("", f"a bool key must be true or false, got {quote(key)}")
        return key == "true"
    return _integer(key, kind)


def _single(item: Any, meta: betterproto2.FieldMetadata, hint: Any, **walk: Any) -> Any:
    """One value (an item of a repeated field) of proto type ``meta.proto_type``."""
    kind = meta.proto_type
    if kind == "string":
        if not isinstance(item, str):
            raise _Bad("", f"a string is expected, got {_kind(item)}")
        return item
    if kind == "bool":
        if not isinstance(item, bool):
            raise _Bad("", f"true or false is expected, got {_kind(item)}")
        return item
    if kind in _INT_RANGES:
        return _integer(item, kind)
    if kind in _FLOATS:
        return _float(item)
    if kind == "enum":
        return _enum(item, hint)
    if kind == "bytes":
        return _bytes(item)
    if kind == "message":
        cls = meta.unwrap() if meta.unwrap else hint
        try:
            return _message(item, cls, depth=walk["depth"] + 1, budget=walk["budget"])
        except RecursionError:
            raise _Bad("", "nested too deeply") from None
    raise _Bad("", f"unsupported proto type {kind}")


def _kind(item: Any) -> str:
    if item is None:
        return "null"
    return {bool: "a bool", str: "a string", list: "an array", dict: "an object"}.get(
        type(item), "a number"
    )


def _integer(item: Any, kind: str) -> int:
    low, high = _INT_RANGES[kind]
    value: int
    if isinstance(item, bool):
        raise _Bad("", f"an integer is expected, got {_kind(item)}")
    if isinstance(item, int):
        value = item
    elif isinstance(item, float):
        if not item.is_integer():
            raise _Bad("", f"an integer is expected, got {item!r}")
        value = int(item)
    elif isinstance(item, str):
        if _INTEGER_TEXT.fullmatch(item):
            value = int(item)
        elif len(item) <= 64 and _NUMBER_TEXT.fullmatch(item) and float(item).is_integer():
            value = int(float(item))
        else:
            raise _Bad("", f"an integer is expected, got {quote(item)}")
    else:
        raise _Bad("", f"an integer is expected, got {_kind(item)}")
    if not low <= value <= high:
        raise _Bad("", f"{kind} out of range: {quote(str(value))}")
    return value


def _float(item: Any) -> float:
    if isinstance(item, bool):
        raise _Bad("", f"a number is expected, got {_kind(item)}")
    if isinstance(item, int | float):
        return float(item)
    if isinstance(item, str):
        if item in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[item]
        if len(item) <= 64 and _NUMBER_TEXT.fullmatch(item):
            return float(item)
        raise _Bad("", f"a number is expected, got {quote(item)}")
    raise _Bad("", f"a number is expected, got {_kind(item)}")


def _enum(item: Any, enum_type: Any) -> Any:
    if isinstance(item, str):
        number = enum_type.betterproto_renamed_proto_names_to_value().get(item)
        if number is not None:
            return enum_type(number)
        try:
            return enum_type[item]
        except KeyError:
            raise _Bad("", f"unknown value {quote(item)}") from None
    if isinstance(item, int) and not isinstance(item, bool):
        return enum_type(_integer(item, "int32"))  # an unknown number: the limits check
    raise _Bad("", f"an enum name or number is expected, got {_kind(item)}")


def _bytes(item: Any) -> bytes:
    if not isinstance(item, str):
        raise _Bad("", f"a base64 string is expected, got {_kind(item)}")
    text = item.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Bad("", "not valid base64") from None


def _timestamp(item: Any) -> datetime.datetime:
    if not isinstance(item, str) or not _TIMESTAMP_TEXT.fullmatch(item):
        raise _Bad("", "an RFC 3339 timestamp is expected (2006-01-02T15:04:05Z)")
    try:
        wrapped: datetime.datetime = pb.Timestamp.from_dict(item).to_wrapped()
    except (ValueError, OverflowError):
        raise _Bad("", f"not a valid timestamp: {quote(item)}") from None
    return wrapped


def _field_mask(item: Any) -> pb.FieldMask:
    if not isinstance(item, str):
        raise _Bad("", "a comma-separated string of paths is expected")
    paths = [p for p in item.split(",") if p]
    if len(paths) > wire.MAX_ENTRIES:
        raise _Bad(".paths", f"at most {wire.MAX_ENTRIES} entries, got {len(paths)}")
    return pb.FieldMask(paths=[".".join(snake_name(s) for s in p.split(".")) for p in paths])
