"""The message: what a publisher sends and a consumer receives.

A message is ``{type, content, headers}``: ``type`` names what it is (a non-empty
string), ``content`` is any JSON value, ``headers`` maps strings to strings. On the
wire it is one compact JSON object; ``encode`` and ``decode`` are the only places
that know that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mqctl.core.errors import InvalidMessage

MAX_TYPE_LENGTH = 256

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

try:  # orjson parses several times faster; the standard library is the fallback
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = json.loads

# orjson reads an integer beyond 64 bits as a float, which changes the content. Such an integer
# has at least 19 digits in a row; a payload with a run that long (rare) takes the exact parser.
_LONG_DIGITS_BYTES = re.compile(rb"[0-9]{19}")
_LONG_DIGITS_STR = re.compile(r"[0-9]{19}")


def _loads(data: bytes | str) -> Any:
    long_digits = _LONG_DIGITS_BYTES if isinstance(data, bytes) else _LONG_DIGITS_STR
    if long_digits.search(data) is None:  # type: ignore[arg-type]
        return _fast_loads(data)
    return json.loads(data)


@dataclass(frozen=True, slots=True)
class Message:
    """One message: a ``type``, a JSON ``content`` and string ``headers``."""

    type: str
    content: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_type(self.type)
        _check_headers(self.headers)

    def to_dict(self) -> dict[str, Any]:
        """The message as a plain dict, as it is sent on the wire."""
        return {"type": self.type, "content": self.content, "headers": dict(self.headers)}


def _check_type(value: object) -> None:
    if not isinstance(value, str):
        raise InvalidMessage(f"Message type must be a string, not {type(value).__name__}: {value!r}.")
    if not value.strip():
        raise InvalidMessage("Message type must be a non-empty string.")
    if len(value) > MAX_TYPE_LENGTH:
        raise InvalidMessage(f"Message type is {len(value)} characters long; the limit is {MAX_TYPE_LENGTH}.")


def _check_headers(value: object) -> None:
    if not isinstance(value, Mapping):
        raise InvalidMessage(f"Message headers must be an object of strings, not {type(value).__name__}.")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidMessage(f"Message headers must map strings to strings; got {key!r}: {item!r}.")


def as_message(value: Message | Mapping[str, Any]) -> Message:
    """Accept a ``Message`` or a plain dict of its fields; raise ``InvalidMessage`` otherwise."""
    if isinstance(value, Message):
        return value
    if not isinstance(value, Mapping):
        raise InvalidMessage(
            f"A message must be a mqctl.Message or a dict with 'type' and 'content', not {type(value).__name__}."
        )
    unknown = set(value) - {"type", "content", "headers"}
    if unknown:
        raise InvalidMessage(f"Unknown message field(s) {sorted(unknown)!r}; expected type, content and headers.")
    if "type" not in value:
        raise InvalidMessage("A message needs a 'type'.")
    headers = value.get("headers")
    return Message(value["type"], value.get("content"), {} if headers is None else headers)


def encode(message: Message) -> bytes:
    """The wire form of ``message``: compact UTF-8 JSON. Raises ``InvalidMessage``."""
    try:
        text = _encoder.encode({"type": message.type, "content": message.content, "headers": dict(message.headers)})
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"Message content is not JSON: {exc}.") from exc
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidMessage(f"Message is not valid Unicode: {exc.reason}.") from exc


def decode(data: bytes | str) -> Message:
    """The message in ``data``, as written by ``encode``. Raises ``InvalidMessage``."""
    try:
        raw = _loads(data)
        kind, headers = raw["type"], raw.get("headers") or {}
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidMessage(f"Stored message is not in mqctl's format: {data[:80]!r}.") from exc
    if (
        type(kind) is not str
        or not kind
        or type(headers) is not dict
        or not all(type(k) is str and type(v) is str for k, v in headers.items())
    ):
        return Message(kind, raw.get("content"), headers)  # the full checks say what is wrong
    # Written by encode(), so already valid: skip the per-field checks on this hot path.
    message = object.__new__(Message)
    object.__setattr__(message, "type", kind)
    object.__setattr__(message, "content", raw.get("content"))
    object.__setattr__(message, "headers", headers)
    return message
