"""Log lines for people or for machines, and transitions logged once each as events.

``configure()`` installs one handler on the root logger: human lines by default
(``2026-12-03 17:25:21,123 INFO qvdc.engines.liveness: node n1: OFFLINE``), or with
``format="json"`` one JSON object per line with ``ts`` (UTC, ISO 8601), ``level``,
``logger``, ``msg``, ``exc`` (a traceback, when there is one) and an event's fields.

An *event* is a state transition an operator may alert on or search for: a node going
OFFLINE, a pool's phase changing, a host row's health changing. :func:`event` logs one
with a stable name (``node.offline``; the catalogue is :data:`EVENTS`, documented in
docs/operations.md), a fresh ``event_id`` and its fields (``node_id=...``); a text line
shows them as ``key=value`` after the message. :class:`Transitions` remembers the last
state logged per subject, so a writer that sees the same state again (a retried write, a
capacity-only change) logs nothing: each transition is logged once, by the one code path
that made it.

Standard library only (qvdc.kits), so the node daemon uses the same formats.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import IO, Any, Literal

#: Every event name, with what it means. Add a name here (and to docs/operations.md)
#: before logging it; :func:`event` flags a name it does not know (once per name, as an
#: ERROR line), but never fails its caller: a log call must not crash a liveness pass.
EVENTS: dict[str, str] = {
    "node.offline": "a node silent for longer than the grace (node_id, silent_s, grace_s)",
    "node.recovered": "an OFFLINE node heartbeats again (node_id, offline_s)",
    "node.phase": "a node's phase changed: READY, MAINTENANCE, DRAINING, ... (node_id, from, to)",
    "liveness.frozen": "every live node went silent at once: nobody is marked (nodes, grace_s)",
    "liveness.unfrozen": "heartbeats resumed after a freeze (frozen_s, heard, frozen)",
    "pool.phase": "a pool's aggregate phase changed (pool_id, from, to)",
    "host.health": "one host's row of a pool changed health (pool_id, node_id, from, to, error)",
    "leader.acquired": "this replica became the aggregation leader (replica_id)",
    "leader.lost": "this replica stopped being the aggregation leader (replica_id)",
    "pool.deleted": "a DELETING pool's keys were removed (pool_id, waited_s, unconfirmed)",
}

#: Unknown event names already flagged (bounded by the names in the code).
_flagged: set[str] = set()

#: Attributes of a ``LogRecord`` that :func:`event` sets (read by the formatters).
EVENT_ATTR = "event"
EVENT_ID_ATTR = "event_id"
FIELDS_ATTR = "event_fields"


@dataclass(frozen=True, slots=True)
class LogSettings:
    """How a process logs (``[log]`` in its configuration file)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged: DEBUG, INFO, WARNING or ERROR."""

    format: Literal["text", "json"] = "text"
    """``text``: one human line per record; ``json``: one JSON object per line (ts, level,
    logger, msg, and an event's event, event_id and fields)."""

    def __post_init__(self) -> None:
        if self.level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log level must be DEBUG, INFO, WARNING or ERROR: {self.level!r}")
        if self.format not in ("text", "json"):
            raise ValueError(f"log format must be text or json: {self.format!r}")


@dataclass(frozen=True, slots=True)
class Event:
    """One event as :func:`event` logged it, for a sink that keeps it (the controller's
    event history in etcd: ``qvdc.engines.eventstore``)."""

    id: str
    name: str
    level: int
    message: str
    fields: Mapping[str, object]


Sink = Callable[[Event], None]
"""Takes each event logged with :func:`event_to`; must not block (queue it) and should not raise."""


def new_event_id() -> str:
    """A fresh event id (a UUID4's 32 hex digits): unique across replicas and restarts."""
    return uuid.uuid4().hex


def event(
    logger: logging.Logger,
    name: str,
    message: str,
    *args: object,
    level: int = logging.INFO,
    **fields: object,
) -> str:
    """Log the event ``name`` (one of :data:`EVENTS`) with ``fields``; return its id.

    ``message % args`` is the human text, as in ``logger.info``; ``fields`` are the
    machine-readable facts (ids, states, durations), shown as ``key=value`` in text lines.
    """
    if name not in EVENTS and name not in _flagged:
        _flagged.add(name)
        logger.error("unknown event name %r: add it to qvdc.kits.eventlog.EVENTS", name)
    event_id = new_event_id()
    logger.log(
        level,
        message,
        *args,
        extra={EVENT_ATTR: name, EVENT_ID_ATTR: event_id, FIELDS_ATTR: fields},
    )
    return event_id


def event_to(
    sink: Sink | None,
    logger: logging.Logger,
    name: str,
    message: str,
    *args: object,
    level: int = logging.INFO,
    **fields: object,
) -> str:
    """:func:`event`, and ``sink`` (when not None) receives it as an :class:`Event`. A sink
    that raises is logged and ignored: keeping an event never fails the transition."""
    event_id = event(logger, name, message, *args, level=level, **fields)
    if sink is not None:
        try:
            sink(Event(event_id, name, level, message % args if args else message, fields))
        except Exception:
            logger.exception("event %s %s: its sink failed", name, event_id)
    return event_id


class Transitions:
    """The last state logged per subject: ``changed()`` says whether a new one is a transition.

    The first state seen for a subject is a transition only if ``initial`` is given and
    differs from it (a pool first seen READY at start-up is not news; one first seen FAILED
    may be). Bounded by the subjects alive: call :meth:`forget` when one is deleted.
    """

    __slots__ = ("_initial", "_last")

    def __init__(self, *, initial: Hashable | None = None) -> None:
        self._last: dict[Hashable, Hashable] = {}
        self._initial = initial

    def changed(self, subject: Hashable, state: Hashable) -> tuple[bool, Hashable | None]:
        """Record ``state`` for ``subject``; return (is it a transition?, the previous state)."""
        previous = self._last.get(subject, self._initial)
        self._last[subject] = state
        if previous is None:
            return False, None
        return previous != state, previous

    def forget(self, subject: Hashable) -> None:
        self._last.pop(subject, None)

    def __len__(self) -> int:
        return len(self._last)


# ---------------------------------------------------------------- formatters


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    name = getattr(value, "name", None)  # enums: their member name, as the protos print them
    if isinstance(name, str):
        return name
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (``json.dumps`` escapes newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        doc: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        name = getattr(record, EVENT_ATTR, None)
        if name is not None:
            doc["event"] = name
            doc["event_id"] = getattr(record, EVENT_ID_ATTR, None)
            fields = getattr(record, FIELDS_ATTR, None) or {}
            for key, value in fields.items():
                doc.setdefault(key, _jsonable(value))  # never overwrite the base keys
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """``ts LEVEL logger: message``, then an event's ``event=... event_id=... key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        name = getattr(record, EVENT_ATTR, None)
        if name is None:
            return line
        parts = [f"event={name}", f"event_id={getattr(record, EVENT_ID_ATTR, '')}"]
        fields = getattr(record, FIELDS_ATTR, None) or {}
        parts.extend(f"{key}={_text(value)}" for key, value in fields.items())
        return f"{line} [{' '.join(parts)}]"


def _text(value: object) -> str:
    value = _jsonable(value)
    text = value if isinstance(value, str) else json.dumps(value)
    return json.dumps(text) if (not text or any(c in text for c in ' ="[]')) else text


def formatter(format: str) -> logging.Formatter:
    """The formatter of a ``LogSettings.format``."""
    return JsonFormatter() if format == "json" else TextFormatter()


def configure(settings: LogSettings, *, stream: IO[str] | None = None) -> logging.Handler:
    """Make ``settings`` the root logger's only handler and level; return the handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(settings.format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    return handler
