"""Log lines for people (text) or for machines (one JSON object a line), with their ids.

Library code only logs; the CLI calls ``setup_logging``. A line carries the id of the
HTTP request it was logged in (the ``request_id`` context variable, set by the services'
middleware, which also echoes it as ``X-Request-ID``) and of the message it is about
(``log.warning(..., extra={"message_id": id})``), where there is one.

    text:  12:00:01 WARNING mqctl.services.ingest.app: Publish failed ... [request_id=4f1c...]
    json:  {"time": "2024-06-10T12:00:01.123+00:00", "level": "WARNING", "logger": "mqctl.services.ingest.app",
            "message": "Publish failed ...", "request_id": "4f1c..."}
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

request_id: ContextVar[str | None] = ContextVar("mqctl_request_id", default=None)
"""The id of the HTTP request being handled, if any."""


def _ids(record: logging.LogRecord) -> dict[str, str]:
    ids: dict[str, str] = {}
    current = getattr(record, "request_id", None) or request_id.get()
    if current:
        ids["request_id"] = str(current)
    message = getattr(record, "message_id", None)
    if message:
        ids["message_id"] = str(message)
    return ids


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message [request_id=... message_id=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        ids = _ids(record)
        if ids:
            line += " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the ids, and the
    traceback as ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_ids(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter for ``"text"`` or ``"json"``."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"Unknown log format {log_format!r}; expected one of: {', '.join(LOG_FORMATS)}.")


def setup_logging(level: str, log_format: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``log_format``.

    Like ``logging.basicConfig``, does nothing if the root logger has handlers already.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
