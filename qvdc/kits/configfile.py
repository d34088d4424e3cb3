"""Settings from one TOML file, the environment and flags, derived from settings dataclasses.

A :class:`Schema` walks frozen settings dataclasses: a field whose type is itself a
dataclass is a TOML table, every other field is one setting, and each setting's three
names come from its path, so a field added to a settings dataclass is configurable in all
three places (and listed by ``--help``) without touching this module::

    [heartbeat]                 QVDC_HEARTBEAT_INTERVAL=15      --heartbeat-interval 15
    interval = 15

Precedence: flag > environment > file > the dataclass's default. A higher layer replaces a
list or table setting whole. Unknown keys in the file are refused naming the key and the
file (with the closest known key); a value of the wrong type names where it came from.
Range and cross-field checks stay in the dataclasses' ``__post_init__``: building them is
the validation, so a program that builds settings itself gets the same refusals.

Field types understood: ``str``, ``int``, ``float``, ``bool``, ``Path``, ``Literal`` of
strings (matched case-insensitively), ``X | None`` of those, ``tuple[str, ...]`` (flags
repeat, text is comma-separated, TOML is an array), ``Mapping[str, str]`` (``KEY=VALUE``)
and ``Mapping[str, Mapping[str, str]]`` (``GROUP.KEY=VALUE``). A field of another type
fails when the schema is built (tests build every schema).

Help text is each field's docstring (read from the source with ``ast``; the docstrings say
the unit), cut to its first sentence when long, then the default and the variable's name.
Errors name the option as typed (an alias such as ``--etcd`` included).
"""

from __future__ import annotations

import argparse
import ast
import collections.abc
import dataclasses
import difflib
import inspect
import itertools
import json
import re
import textwrap
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: ``argparse`` dest prefix of the settings' flags (their dest is ``cfg:<key>``).
_DEST = "cfg:"
#: Namespace attribute prefix of the option string a setting was given with (an alias
#: such as ``--etcd`` or the setting's own flag), so errors name what was typed.
_SOURCE = "cfg-source:"


class _StoreRecording(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, _SOURCE + self.dest[len(_DEST) :], option_string)


class _AppendRecording(argparse.Action):
    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.append(values)
        setattr(namespace, self.dest, items)
        key = _SOURCE + self.dest[len(_DEST) :]
        seen = getattr(namespace, key, None)
        setattr(
            namespace,
            key,
            option_string if seen in (None, option_string) else f"{seen}/{option_string}",
        )


class ConfigError(ValueError):
    """The configuration cannot be used: the message names the setting and its source."""


# ---------------------------------------------------------------- kinds of values


@dataclass(frozen=True, slots=True)
class Kind:
    """How one field's value is read from text (flag, environment) and from TOML."""

    name: str
    """What the value is, for error messages: ``a number``, ``true or false``, ..."""

    metavar: str
    parse: Callable[[str], object]
    """Text -> value; raises ValueError."""

    from_toml: Callable[[object], object]
    """A TOML value -> value; raises ValueError or TypeError."""

    repeat: bool = False
    """Flags repeat and accumulate (lists and tables)."""

    parse_flag: Callable[[str], object] | None = None
    """Text of one repeated flag -> value (default ``parse``): one ``KEY=VALUE`` pair per
    flag, commas included, where the environment's text is a comma-separated list."""

    join: Callable[[list[object]], object] | None = None
    """Combine repeated flag values (each already parsed)."""

    choices: tuple[str, ...] = ()
    takes_table: bool = False
    """A TOML table is this setting's value, not a section."""


def _bool_text(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _strict(
    expected: type | tuple[type, ...], convert: Callable[[Any], object]
) -> Callable[[object], object]:
    """A TOML reader taking only ``expected`` (a bool is no number here)."""
    allowed = expected if isinstance(expected, tuple) else (expected,)

    def check(value: object) -> object:
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            raise TypeError(type(value).__name__)
        return convert(value)

    return check


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _toml_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError(type(value).__name__)
    return tuple(value)


def _toml_scalar_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise TypeError(type(value).__name__)


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _split_list(text):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(item)
        out[key.strip()] = value
    return out


def _toml_table(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(type(value).__name__)
    return {str(k): _toml_scalar_text(v) for k, v in value.items()}


def _pair(text: str) -> dict[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(text)
    return {key.strip(): value}


def _grouped(pairs: dict[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in pairs.items():
        group, dot, key = name.partition(".")
        if not dot or not group or not key:
            raise ValueError(name)
        out.setdefault(group, {})[key] = value
    return out


def _grouped_pairs(text: str) -> dict[str, dict[str, str]]:
    return _grouped(_pairs(text))


def _grouped_pair(text: str) -> dict[str, dict[str, str]]:
    return _grouped(_pair(text))


def _toml_grouped(value: object) -> dict[str, dict[str, str]]:
    if not isinstance(value, dict):
        raise TypeError(type(value).__name__)
    return {str(k): _toml_table(v) for k, v in value.items()}


def _merge_tables(values: list[object]) -> object:
    out: dict[str, Any] = {}
    for value in values:
        assert isinstance(value, dict)
        for key, item in value.items():
            if isinstance(item, dict):
                out.setdefault(key, {}).update(item)
            else:
                out[key] = item
    return out


def _concat(values: list[object]) -> object:
    return tuple(item for value in values for item in typing.cast(tuple[str, ...], value))


def _literal(choices: tuple[str, ...]) -> Kind:
    def parse(text: str) -> str:
        for choice in choices:
            if choice.lower() == text.strip().lower():
                return choice
        raise ValueError(text)

    return Kind(
        name="one of " + ", ".join(choices),
        metavar="{" + ",".join(choices) + "}",
        parse=parse,
        from_toml=_strict(str, parse),
        choices=choices,
    )


_SCALARS: dict[object, Kind] = {
    str: Kind(name="a string", metavar="TEXT", parse=str, from_toml=_strict(str, str)),
    Path: Kind(name="a path", metavar="PATH", parse=Path, from_toml=_strict(str, Path)),
    int: Kind(name="an integer", metavar="N", parse=int, from_toml=_strict(int, int)),
    float: Kind(
        name="a number", metavar="NUMBER", parse=float, from_toml=_strict((int, float), float)
    ),
    bool: Kind(
        name="true or false",
        metavar="true|false",
        parse=_bool_text,
        from_toml=_strict(bool, bool),
    ),
}


def _optional(kind: Kind) -> Kind:
    def parse(text: str) -> object:
        return None if text.strip().lower() in ("", "none") else kind.parse(text)

    return dataclasses.replace(kind, name=kind.name + " (or none)", parse=parse)


def kind_of(hint: object) -> Kind:
    """The :class:`Kind` of a resolved type hint; TypeError for a type it cannot read."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal and args and all(isinstance(a, str) for a in args):
        return _literal(tuple(args))
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _optional(kind_of(inner))
    if origin is tuple and args == (str, Ellipsis):
        return Kind(
            name="a list of strings",
            metavar="VALUE",
            parse=_split_list,
            from_toml=_toml_list,
            repeat=True,
            join=_concat,
        )
    if origin in (collections.abc.Mapping, dict) and len(args) == 2 and args[0] is str:
        if args[1] is str:
            return Kind(
                name="KEY=VALUE pairs",
                metavar="KEY=VALUE",
                parse=_pairs,
                parse_flag=_pair,
                from_toml=_toml_table,
                repeat=True,
                join=_merge_tables,
                takes_table=True,
            )
        inner_origin, inner_args = typing.get_origin(args[1]), typing.get_args(args[1])
        if inner_origin in (collections.abc.Mapping, dict) and inner_args == (str, str):
            return Kind(
                name="GROUP.KEY=VALUE pairs",
                metavar="GROUP.KEY=VALUE",
                parse=_grouped_pairs,
                parse_flag=_grouped_pair,
                from_toml=_toml_grouped,
                repeat=True,
                join=_merge_tables,
                takes_table=True,
            )
    raise TypeError(f"no configuration kind for the type {hint!r}")


# ---------------------------------------------------------------- docstrings


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a class whose fields are followed by string literals."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    (node,) = ast.parse(source).body
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, str] = {}
    body = node.body
    for stmt, after in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


_SENTENCE_END = re.compile(r"(?<=[.])\s+(?=[A-Z(])")


def _sentences(doc: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(doc.replace("``", "")) if s]


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True, slots=True)
class Setting:
    """One configurable field, with its three names."""

    path: tuple[str, ...]
    """``("heartbeat", "interval")``: TOML table(s), then the field."""

    kind: Kind
    default: object
    """The default value, or ``dataclasses.MISSING`` for a required field."""

    doc: str
    flag: str
    env: str
    aliases: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The dotted name (``heartbeat.interval``), as the docs and errors write it."""
        return ".".join(self.path)

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING

    @property
    def metavar(self) -> str:
        """The value's unit where the type and docstring tell it, else its kind."""
        if self.kind.metavar == "NUMBER" and self.doc.startswith("Seconds"):
            return "SECONDS"
        if self.kind.metavar == "N" and self.path[-1].endswith("_bytes"):
            return "BYTES"
        return self.kind.metavar

    def help(self) -> str:
        """The docstring's first paragraph (its first sentence if long), then the default."""
        sentences = _sentences(self.doc) or [""]
        text = " ".join(sentences) if len(self.doc) <= _SHORT_DOC else sentences[0]
        if not _STATES_DEFAULT.search(text):
            stated = next((s for s in sentences[1:] if s.lower().startswith("default")), None)
            if stated is not None:
                text = f"{text} {stated}"
            elif self.required:
                text = text if "required" in text.lower() else f"{text} (required)"
            else:
                text = f"{text} (default: {self.default_text()})"
        return f"{text} [{self.env}]".replace("%", "%%")

    def default_text(self) -> str:
        text = render(self.default)
        value = self.default
        if self.metavar == "BYTES" and isinstance(value, int) and value >= 1024:
            for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
                if value % size == 0:
                    return f"{text} = {value // size} {unit}"
        return text


#: A docstring this short is shown whole; a longer one by its first sentence.
_SHORT_DOC = 160
_STATES_DEFAULT = re.compile(r"\(default\b|\bdefault:", re.IGNORECASE)


def render(value: object) -> str:
    """A default as the help and the docs write it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "none"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v}" for k, v in value.items()) if value else "none"
    return str(value)


@dataclass(frozen=True, slots=True)
class Resolved:
    """Values set by a layer (not defaults), by key, and where each came from."""

    values: dict[str, object] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: object, source: str) -> None:
        self.values[key] = value
        self.sources[key] = source


class Schema:
    """Every setting of some root dataclasses, e.g. ``{(): ControllerSettings, ("log",):
    LogSettings}``; ``env_prefix`` names the environment variables (``QVDC_``)."""

    def __init__(
        self,
        *,
        roots: Sequence[tuple[tuple[str, ...], type]],
        env_prefix: str,
        aliases: Mapping[str, Sequence[str]] | None = None,
        flags: Mapping[str, str] | None = None,
        metavars: Mapping[str, str] | None = None,
    ) -> None:
        """``aliases``: extra flags of a setting (by key); ``flags``: a flag other than the
        derived one; ``metavars``: the value's name in ``--help``."""
        self.roots = tuple(roots)
        self._metavars = dict(metavars or {})
        self.env_prefix = env_prefix
        aliases = aliases or {}
        flags = flags or {}
        self.settings: dict[str, Setting] = {}
        self.sections: set[tuple[str, ...]] = set()
        for prefix, cls in self.roots:
            self._walk(cls, prefix, aliases, flags)
        unknown = (set(aliases) | set(flags) | set(self._metavars)) - set(self.settings)
        if unknown:
            raise TypeError(f"aliases or flags for unknown settings: {sorted(unknown)}")

    def _walk(
        self,
        cls: type,
        prefix: tuple[str, ...],
        aliases: Mapping[str, Sequence[str]],
        flags: Mapping[str, str],
    ) -> None:
        self.sections.add(prefix)
        hints = typing.get_type_hints(cls, include_extras=False)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            path = (*prefix, f.name)
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                self._walk(hint, path, aliases, flags)
                continue
            try:
                kind = kind_of(hint)
            except TypeError as exc:
                raise TypeError(f"{cls.__name__}.{f.name}: {exc}") from None
            if f.default is not dataclasses.MISSING:
                default: object = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            key = ".".join(path)
            name = "_".join(path)
            self.settings[key] = Setting(
                path=path,
                kind=kind,
                default=default,
                doc=docs.get(f.name, ""),
                flag=flags.get(key, "--" + name.replace("_", "-")),
                env=self.env_prefix + name.upper(),
                aliases=tuple(aliases.get(key, ())),
            )

    def __iter__(self) -> Iterator[Setting]:
        return iter(self.settings.values())

    # ------------------------------------------------------------ flags

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """One option per setting, grouped by TOML table; unset options leave no attribute."""
        groups: dict[tuple[str, ...], Any] = {}
        for setting in self:
            section = setting.path[:-1]
            if section not in groups:
                title = f"[{'.'.join(section)}]" if section else "settings"
                groups[section] = parser.add_argument_group(title)
            options: dict[str, Any] = {
                "dest": _DEST + setting.key,
                "default": argparse.SUPPRESS,
                "metavar": self._metavars.get(setting.key, setting.metavar),
                "help": setting.help(),
            }
            options["action"] = _AppendRecording if setting.kind.repeat else _StoreRecording
            if setting.kind.metavar == "true|false":
                options["nargs"] = "?"
                options["const"] = "true"
            groups[section].add_argument(setting.flag, *setting.aliases, **options)

    # ------------------------------------------------------------ the layers

    def _parse_text(
        self, setting: Setting, text: str, source: str, *, flag: bool = False
    ) -> object:
        parse = (setting.kind.parse_flag if flag else None) or setting.kind.parse
        try:
            return parse(text)
        except ValueError:
            raise ConfigError(
                f"{source}: expected {setting.kind.name}, got {_quote(text)}"
            ) from None

    def from_flags(self, namespace: argparse.Namespace, resolved: Resolved) -> None:
        given = vars(namespace)
        for setting in self:
            raw = given.get(_DEST + setting.key)
            if raw is None:
                continue
            source = given.get(_SOURCE + setting.key, setting.flag)
            if setting.kind.repeat:
                parts = [self._parse_text(setting, text, source, flag=True) for text in raw]
                assert setting.kind.join is not None
                resolved.set(setting.key, setting.kind.join(parts), source)
            else:
                resolved.set(setting.key, self._parse_text(setting, raw, source), source)

    def from_environment(self, environ: Mapping[str, str], resolved: Resolved) -> None:
        for setting in self:
            if setting.env in environ:
                text = environ[setting.env]
                resolved.set(setting.key, self._parse_text(setting, text, setting.env), setting.env)

    def from_file(self, path: Path, resolved: Resolved) -> None:
        try:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        self._read_table(document, (), path, resolved)

    def _read_table(
        self, table: Mapping[str, object], prefix: tuple[str, ...], path: Path, resolved: Resolved
    ) -> None:
        for name, value in table.items():
            here = (*prefix, name)
            key = ".".join(here)
            setting = self.settings.get(key)
            if setting is None and here in self.sections and isinstance(value, dict):
                self._read_table(value, here, path, resolved)
                continue
            if setting is None:
                hint = difflib.get_close_matches(key, list(self.settings), n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(f"{path}: unknown key {key!r}{suggestion}")
            try:
                converted = setting.kind.from_toml(value)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"{path}: {key}: expected {setting.kind.name}, got {_quote(value)}"
                ) from None
            resolved.set(key, converted, f"{path}: {key}")

    def resolve(
        self,
        *,
        namespace: argparse.Namespace,
        environ: Mapping[str, str],
        config: Path | None,
    ) -> Resolved:
        """The values set by the file, then the environment, then the flags (last wins)."""
        resolved = Resolved()
        if config is not None:
            self.from_file(config, resolved)
        self.from_environment(environ, resolved)
        self.from_flags(namespace, resolved)
        return resolved

    # ------------------------------------------------------------ building

    def build(self, resolved: Resolved) -> dict[tuple[str, ...], object]:
        """Each root dataclass built from ``resolved`` (defaults elsewhere), by prefix.

        A dataclass that refuses its values (``ValueError``, its ``SettingsError``
        included) becomes a :class:`ConfigError` with the same message.
        """
        missing = [s for s in self if s.required and s.key not in resolved.values]
        if missing:
            s = missing[0]
            raise ConfigError(
                f"{s.key} is required: set {s.flag}, {s.env} or {s.key} in the configuration file"
            )
        return {prefix: self._build(cls, prefix, resolved) for prefix, cls in self.roots}

    def _build(self, cls: type, prefix: tuple[str, ...], resolved: Resolved) -> object:
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            path = (*prefix, f.name)
            if isinstance(hint, type) and dataclasses.is_dataclass(hint):
                if any(k.startswith(".".join(path) + ".") for k in resolved.values):
                    kwargs[f.name] = self._build(hint, path, resolved)
                continue
            key = ".".join(path)
            if key in resolved.values:
                kwargs[f.name] = resolved.values[key]
        try:
            return cls(**kwargs)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    # ------------------------------------------------------------ dumping

    def dump(self, built: Mapping[tuple[str, ...], object]) -> str:
        """The effective configuration (what :meth:`build` returned) as a TOML file that
        loads back to the same values: ``--print-config``. What differs from the default is a
        key; a default is a comment (so the output shows what was changed, and loading it
        back sets nothing a combination check would refuse as given)."""
        sections: dict[tuple[str, ...], list[str]] = {}
        for setting in self:
            prefix = max((p for p in built if setting.path[: len(p)] == p), key=len)
            value: object = built[prefix]
            for name in setting.path[len(prefix) :]:
                value = getattr(value, name)
            name = setting.path[-1]
            if value is None:
                line = f"# {name} = (unset)"
            elif not setting.required and value == setting.default:
                line = f"# {name} = {_toml(value)}  (default)"
            else:
                line = f"{name} = {_toml(value)}"
            sections.setdefault(setting.path[:-1], []).append(line)
        out = list(sections.pop((), []))
        for section, lines in sections.items():
            out.extend(["", f"[{'.'.join(section)}]", *lines])
        return "\n".join(out).lstrip("\n") + "\n"


def _toml(value: object) -> str:
    """``value`` in TOML's syntax (JSON's string escapes are TOML's basic-string escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{json.dumps(str(k), ensure_ascii=False)} = {_toml(v)}" for k, v in value.items()
        )
        return "{" + (f" {items} " if items else "") + "}"
    raise TypeError(f"no TOML form for {value!r}")


def _quote(value: object, limit: int = 64) -> str:
    """A value as an error message quotes it: TOML's spelling, cut to ``limit`` characters."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def add_config_argument(parser: argparse.ArgumentParser, *, env: str) -> None:
    """``--config PATH`` (also ``env``): the TOML file read under the environment and flags;
    ``--print-config``: print the effective configuration and exit."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"TOML configuration file, read under the environment and the flags [{env}]",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration (file, environment and flags applied, every "
        "default filled in) as TOML, and exit",
    )


def config_path(
    namespace: argparse.Namespace, environ: Mapping[str, str], *, env: str
) -> Path | None:
    """``--config``, else the ``env`` variable, else None."""
    given: Path | None = namespace.config
    if given is not None:
        return given
    text = environ.get(env, "")
    return Path(text) if text else None
