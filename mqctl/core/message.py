"""The message: what a publisher sends and a consumer receives.

A message is ``{type, content, headers}``: ``type`` names what it is (a non-empty
string), ``content`` is any JSON value, ``headers`` maps strings to strings. On the
wire it is one compact JSON object; ``encode`` and ``decode`` are the only places
that know that.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any

from mqctl.core.errors import InvalidMessage

MAX_TYPE_LENGTH = 256

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _c_encoder() -> Any:
    """``_encoder``'s C core, made once rather than on every call as ``JSONEncoder.encode`` does.

    Its cycle markers empty themselves on success; after an error, make a fresh one."""
    if c_make_encoder is None:  # pragma: no cover
        return None
    return c_make_encoder({}, _encoder.default, c_encode_basestring, None, ":", ",", False, False, False)


_fast_encoder = _c_encoder()
_FIELDS = frozenset({"type", "content", "headers"})

_fast_loads: Callable[[bytes | str], Any]
try:  # orjson parses several times faster; the standard library is the fallback
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = json.loads

# orjson reads an integer beyond 64 bits as a float, which would change the content. Such an
# integer has 19 digits in a row (every digit translated to "0", everything else to " "); the
# rare payload with a run that long takes the standard library's exact parser.
_DIGITS = bytes(48 if 48 <= i <= 57 else 32 for i in range(256))
_NINETEEN = b"0" * 19


def _loads(data: bytes | str) -> Any:
    raw = data if type(data) is bytes else str(data).encode("utf-8", "surrogatepass")
    if _NINETEEN in raw.translate(_DIGITS):
        return json.loads(data)
    return _fast_loads(data)


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
    return _encode_fields(message.type, message.content, dict(message.headers))


def encode_any(value: Message | Mapping[str, Any]) -> bytes:
    """``encode(as_message(value))``, without building a ``Message`` for a plain dict that is valid."""
    if type(value) is dict and value.keys() <= _FIELDS:
        kind = value.get("type")
        headers = value.get("headers")
        if (
            type(kind) is str
            and len(kind) <= MAX_TYPE_LENGTH
            and kind.strip()
            and (
                headers is None
                or (type(headers) is dict and all(type(k) is str and type(v) is str for k, v in headers.items()))
            )
        ):
            return _encode_fields(kind, value.get("content"), {} if headers is None else headers)
    return encode(as_message(value))  # anything else: the full checks, and their errors


def _encode_fields(kind: str, content: Any, headers: dict[str, str]) -> bytes:
    global _fast_encoder
    fields = {"type": kind, "content": content, "headers": headers}
    try:
        text = "".join(_fast_encoder(fields, 0)) if _fast_encoder is not None else _encoder.encode(fields)
    except (TypeError, ValueError) as exc:
        _fast_encoder = _c_encoder()
        raise InvalidMessage(f"Message content is not JSON: {exc}.") from exc
    except BaseException:
        _fast_encoder = _c_encoder()
        raise
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidMessage(f"Message is not valid Unicode: {exc.reason}.") from exc


_new_message = object.__new__
# The slots' own setters: "frozen" refuses a user's assignment, not the decoder's first one.
_set_type, _set_content, _set_headers = (Message.__dict__[name].__set__ for name in ("type", "content", "headers"))


def decode(data: bytes | str) -> Message:
    """The message in ``data``, as written by ``encode``. Raises ``InvalidMessage``."""
    return decode_verbatim(data)[0]


def decode_verbatim(data: bytes | str) -> tuple[Message, bool]:
    """``decode(data)``, and whether ``data`` is laid out as ``encode`` writes it: one JSON object
    of exactly ``type``, ``content`` and ``headers`` (an object), opening with ``"type":`` and
    closing with its brace, so that a frame can be spliced from its bytes. (``encode`` of the same
    message may still differ byte for byte, e.g. in how a float is written: splicing sends the
    content exactly as it was stored.)"""
    try:
        raw = _loads(data)
        kind, headers = raw["type"], raw.get("headers") or {}
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidMessage(f"Stored message is not in mqctl's format: {data[:80]!r}.") from exc
    if (
        type(kind) is not str
        or not kind
        or type(headers) is not dict
        or (headers and not all(type(k) is str and type(v) is str for k, v in headers.items()))
    ):
        return Message(kind, raw.get("content"), headers), False  # the full checks say what is wrong
    # Written by encode(), so already valid: skip the per-field checks on this hot path.
    message: Message = _new_message(Message)
    _set_type(message, kind)
    _set_content(message, raw.get("content"))
    _set_headers(message, headers)
    return message, (
        len(raw) == 3  # type, content, headers and nothing else
        and type(data) is bytes
        and data[-1] == 125  # "}"
        and data.startswith(b'{"type":')
        and "content" in raw
        and type(raw.get("headers")) is dict
    )
