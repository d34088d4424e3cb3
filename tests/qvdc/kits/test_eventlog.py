"""Log formats (human text, one JSON object per line) and transition events with ids."""

from __future__ import annotations

import enum
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from qvdc.kits import eventlog


class Phase(enum.Enum):
    READY = 1
    DEGRADED = 2


@pytest.fixture
def capture() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """The root logger configured as a process would be, writing to a string."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream, logging.getLogger("qvdc.engines.test")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_parse_and_carry_the_base_fields_and_an_events_fields(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = capture
    eventlog.configure(eventlog.LogSettings(level="INFO", format="json"), stream=stream)
    log.debug("not shown")
    log.info("replica %s serving on %s:%d", "r1", "127.0.0.1", 7443)
    event_id = eventlog.event(
        log, "pool.phase", "pool %s: %s -> %s", "p1", "READY", "DEGRADED",
        level=logging.WARNING, pool_id="p1", **{"from": Phase.READY, "to": Phase.DEGRADED},
    )  # fmt: skip
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("task crashed")
    docs = [json.loads(line) for line in lines(stream)]  # each line is one whole object
    assert len(docs) == 3
    plain, event, crash = docs
    assert plain["msg"] == "replica r1 serving on 127.0.0.1:7443"
    assert (plain["level"], plain["logger"]) == ("INFO", "qvdc.engines.test")
    assert plain["ts"].endswith("Z") and plain["ts"][10] == "T"
    assert "event" not in plain
    assert event == {
        "ts": event["ts"],
        "level": "WARNING",
        "logger": "qvdc.engines.test",
        "msg": "pool p1: READY -> DEGRADED",
        "event": "pool.phase",
        "event_id": event_id,
        "pool_id": "p1",
        "from": "READY",
        "to": "DEGRADED",
    }
    assert len(event_id) == 32 and int(event_id, 16) >= 0
    assert crash["level"] == "ERROR" and "RuntimeError: boom\nsecond line" in crash["exc"]


def test_event_fields_never_overwrite_the_base_keys(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = capture
    eventlog.configure(eventlog.LogSettings(format="json"), stream=stream)
    eventlog.event(log, "node.offline", "node n1 silent", node_id="n1", msg="x", level_="y")
    (doc,) = [json.loads(line) for line in lines(stream)]
    assert doc["msg"] == "node n1 silent" and doc["node_id"] == "n1"


def test_text_lines_are_human_with_the_event_appended(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = capture
    eventlog.configure(eventlog.LogSettings(level="DEBUG"), stream=stream)
    log.debug("plain line")
    event_id = eventlog.event(
        log, "host.health", "pool p1 on n1: %s", "ERROR",
        pool_id="p1", node_id="n1", error="mount failed: no such export",
    )  # fmt: skip
    first, second = lines(stream)
    assert first.endswith(" DEBUG qvdc.engines.test: plain line")
    assert second.endswith(
        f"INFO qvdc.engines.test: pool p1 on n1: ERROR [event=host.health event_id={event_id} "
        'pool_id=p1 node_id=n1 error="mount failed: no such export"]'
    )


def test_an_unknown_event_name_is_flagged_once_and_still_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(3):
            eventlog.event(logging.getLogger("t"), "node.gone", "x")
    flagged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in flagged] == [
        "unknown event name 'node.gone': add it to qvdc.kits.eventlog.EVENTS"
    ]
    assert [getattr(r, eventlog.EVENT_ATTR, None) for r in caplog.records].count("node.gone") == 3


def test_every_event_is_documented_in_operations_md() -> None:
    text = (Path(__file__).resolve().parents[3] / "docs" / "operations.md").read_text()
    missing = [name for name in eventlog.EVENTS if f"`{name}`" not in text]
    assert missing == []


def test_transitions_are_reported_once_each() -> None:
    seen = eventlog.Transitions()
    assert seen.changed("p1", "READY") == (False, None)  # first sight: no transition
    assert seen.changed("p1", "READY") == (False, "READY")
    assert seen.changed("p1", "DEGRADED") == (True, "READY")
    assert seen.changed("p1", "DEGRADED") == (False, "DEGRADED")  # a retried write: nothing
    assert seen.changed("p2", "FAILED") == (False, None)
    seen.forget("p1")
    assert seen.changed("p1", "READY") == (False, None)
    assert len(seen) == 2


def test_transitions_from_an_initial_state() -> None:
    seen = eventlog.Transitions(initial="READY")
    assert seen.changed("n1", "READY") == (False, "READY")
    assert seen.changed("n2", "OFFLINE") == (True, "READY")


def test_log_settings_refuse_unknown_levels_and_formats() -> None:
    with pytest.raises(ValueError, match="log level"):
        eventlog.LogSettings(level="LOUD")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log format"):
        eventlog.LogSettings(format="xml")  # type: ignore[arg-type]


def test_event_to_hands_the_logged_event_to_its_sink_and_survives_a_failing_one(
    capture: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = capture
    eventlog.configure(eventlog.LogSettings(level="INFO", format="json"), stream=stream)
    kept: list[eventlog.Event] = []
    event_id = eventlog.event_to(
        kept.append, log, "node.offline", "node %s OFFLINE", "n1",
        level=logging.WARNING, node_id="n1", silent_s=31.0,
    )  # fmt: skip
    [event] = kept
    assert (event.id, event.name, event.level) == (event_id, "node.offline", logging.WARNING)
    assert event.message == "node n1 OFFLINE"
    assert dict(event.fields) == {"node_id": "n1", "silent_s": 31.0}

    def broken(_: eventlog.Event) -> None:
        raise RuntimeError("sink down")

    second = eventlog.event_to(broken, log, "node.recovered", "node n1 recovered", node_id="n1")
    assert second != event_id  # logged, and the caller carries on
    docs = [json.loads(line) for line in lines(stream)]
    assert [d.get("event") for d in docs[:2]] == ["node.offline", "node.recovered"]
    assert "sink failed" in docs[2]["msg"] and "sink down" in docs[2]["exc"]
    assert eventlog.event_to(None, log, "node.recovered", "again", node_id="n1")
