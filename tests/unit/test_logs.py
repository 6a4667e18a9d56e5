"""Log lines as text or JSON, carrying the request and message ids."""

from __future__ import annotations

import io
import json
import logging

import pytest

from mqctl.logs import JsonFormatter, TextFormatter, formatter, request_id, setup_logging


def _record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("mqctl.test", logging.WARNING, __file__, 1, message, args or ("world",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_line_has_time_level_logger_and_message() -> None:
    """A JSON line is one object with time (UTC ISO 8601), level, logger and the formatted message."""
    line = JsonFormatter().format(_record())
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "mqctl.test"
    assert entry["message"] == "hello world"
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    assert "request_id" not in entry and "message_id" not in entry


def test_json_line_carries_the_request_id_of_the_context() -> None:
    """A record logged while a request is handled carries that request's id."""
    token = request_id.set("req-42")
    try:
        entry = json.loads(JsonFormatter().format(_record()))
    finally:
        request_id.reset(token)
    assert entry["request_id"] == "req-42"


def test_json_line_carries_a_message_id_given_as_extra() -> None:
    """``extra={"message_id": ...}`` shows up as the line's message_id."""
    entry = json.loads(JsonFormatter().format(_record(message_id="1700000000000-0")))
    assert entry["message_id"] == "1700000000000-0"


def test_json_line_keeps_a_traceback_and_odd_text_on_one_line() -> None:
    """An exception's traceback and newlines in the message stay inside the one JSON line."""
    try:
        raise ValueError("boom")
    except ValueError:
        logger = logging.getLogger("mqctl.test.json")
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.exception("failed:\n%s", "ünïcode")
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["message"] == "failed:\nünïcode"
    assert "ValueError: boom" in entry["exception"]


def test_text_line_appends_the_ids_before_any_traceback() -> None:
    """The text format shows the ids in brackets at the end of the message line."""
    token = request_id.set("abc")
    try:
        line = TextFormatter().format(_record(message_id="1-0"))
    finally:
        request_id.reset(token)
    assert line.endswith("WARNING mqctl.test: hello world [request_id=abc message_id=1-0]")


def test_text_line_without_ids_is_unchanged() -> None:
    """With no id, a text line is just time, level, logger and message."""
    assert TextFormatter().format(_record()).endswith("WARNING mqctl.test: hello world")


def test_unknown_format_is_refused() -> None:
    """Only text and json are log formats."""
    with pytest.raises(ValueError, match="Unknown log format 'xml'"):
        formatter("xml")  # type: ignore[arg-type]


def test_setup_logging_installs_the_chosen_format(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup_logging sends records to the stream in the format asked for."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    setup_logging("info", "json", stream)
    logging.getLogger("mqctl.test.setup").info("ready")
    logging.getLogger("mqctl.test.setup").debug("not shown")
    assert [json.loads(line)["message"] for line in stream.getvalue().splitlines()] == ["ready"]
