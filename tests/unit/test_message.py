"""Messages: validation, the wire encoding and its round trip, and as_message."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mqctl import InvalidMessage, Message
from mqctl.core.message import MAX_TYPE_LENGTH, as_message, decode, encode, encode_any

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
messages = st.builds(
    Message,
    type=st.text(min_size=1, max_size=MAX_TYPE_LENGTH).filter(str.strip),
    content=json_values,
    headers=st.dictionaries(st.text(), st.text(), max_size=4),
)


@given(messages)
def test_decode_inverts_encode(message: Message) -> None:
    """decode(encode(m)) == m for any valid message."""
    assert decode(encode(message)) == message


@pytest.mark.parametrize(
    "content", [2**64, -(2**63) - 1, [1, {"n": 10**30}], 2**64 - 1, "12345678901234567890", {"1234567890123456789": 1}]
)
def test_integers_beyond_64_bits_survive_decode(content: object) -> None:
    """An integer too wide for orjson comes back as the same integer, not as a float; long digit
    runs in strings and keys pass unchanged."""
    data = encode(Message("t", content))
    assert decode(data).content == content
    assert decode(data.decode()).content == content


def test_deep_nesting_in_a_stored_message_is_invalid_not_a_crash() -> None:
    """A stored payload nested deeper than the exact parser goes is reported as not mqctl's format."""
    data = b'{"type":"t","n":12345678901234567890,"content":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidMessage):
        decode(data)


@given(messages)
def test_encoding_is_compact_utf8_json(message: Message) -> None:
    """The wire form is one compact JSON object with type, content and headers."""
    data = encode(message)

    assert data == json.dumps(message.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
    assert json.loads(data) == message.to_dict()


def test_encoding_keeps_non_ascii_as_utf8() -> None:
    """Non-ASCII text is sent as UTF-8, not as \\u escapes."""
    data = encode(Message("grüße", "日本"))

    assert data == '{"type":"grüße","content":"日本","headers":{}}'.encode()


def test_decode_accepts_str() -> None:
    """decode() takes text as well as bytes."""
    assert decode('{"type":"a","content":1,"headers":{}}') == Message("a", 1)


def test_decode_fills_in_missing_content_and_headers() -> None:
    """A stored object with only a type decodes to content None and no headers."""
    assert decode(b'{"type":"a"}') == Message("a", None, {})


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[1, 2]", b'"text"', b'{"content": 1}', b"\xff\xfe", b'{"type": ""}', b'{"type":"a","headers":[1]}'],
    ids=["not-json", "array", "string", "no-type", "not-utf8", "empty-type", "bad-headers"],
)
def test_decode_refuses_what_encode_never_writes(data: bytes) -> None:
    """decode() raises InvalidMessage for anything that is not a mqctl message."""
    with pytest.raises(InvalidMessage):
        decode(data)


@pytest.mark.parametrize(
    "content",
    [{1, 2}, float("nan"), float("inf"), [float("-inf")], object(), b"bytes", {1: {2, 3}}],
    ids=["set", "nan", "inf", "nested-inf", "object", "bytes", "nested-set"],
)
def test_encode_refuses_content_that_is_not_json(content: Any) -> None:
    """Content that JSON cannot carry (sets, NaN, infinities, bytes, objects) raises InvalidMessage."""
    with pytest.raises(InvalidMessage, match="not JSON"):
        encode(Message("a", content))


def test_encode_refuses_lone_surrogates() -> None:
    """Text that is not valid Unicode raises InvalidMessage, not UnicodeEncodeError."""
    with pytest.raises(InvalidMessage):
        encode(Message("a", "\ud800"))


@pytest.mark.parametrize(
    "kind",
    [None, 5, b"bytes", "", "   ", "x" * (MAX_TYPE_LENGTH + 1)],
    ids=["none", "int", "bytes", "empty", "blank", "too-long"],
)
def test_message_type_must_be_a_non_empty_string_within_the_limit(kind: Any) -> None:
    """A type that is not a string, blank or over MAX_TYPE_LENGTH raises InvalidMessage."""
    with pytest.raises(InvalidMessage):
        Message(kind)


def test_message_type_at_the_limit_is_accepted() -> None:
    """A type of exactly MAX_TYPE_LENGTH characters is valid."""
    assert Message("x" * MAX_TYPE_LENGTH).type == "x" * MAX_TYPE_LENGTH


@pytest.mark.parametrize(
    "headers",
    [["a"], "a=b", {"a": 1}, {"a": None}, {1: "a"}, {"a": b"b"}],
    ids=["list", "str", "int-value", "none-value", "int-key", "bytes-value"],
)
def test_message_headers_must_map_strings_to_strings(headers: Any) -> None:
    """Headers that are not a mapping of str to str raise InvalidMessage."""
    with pytest.raises(InvalidMessage):
        Message("a", None, headers)


def test_message_is_frozen() -> None:
    """A Message cannot be changed after it is made."""
    message = Message("a", 1)

    with pytest.raises(dataclasses.FrozenInstanceError):
        message.type = "b"  # type: ignore[misc]


def test_to_dict_is_the_wire_shape() -> None:
    """to_dict() gives type, content and headers as a plain dict."""
    message = Message("a", [1], MappingProxyType({"k": "v"}))

    assert message.to_dict() == {"type": "a", "content": [1], "headers": {"k": "v"}}
    assert type(message.to_dict()["headers"]) is dict


def test_as_message_passes_a_message_through() -> None:
    """as_message() returns a Message unchanged."""
    message = Message("a")

    assert as_message(message) is message


def test_as_message_builds_from_a_dict() -> None:
    """as_message() turns a dict of type, content and headers into a Message; missing parts get defaults."""
    assert as_message({"type": "a", "content": {"x": 1}, "headers": {"k": "v"}}) == Message("a", {"x": 1}, {"k": "v"})
    assert as_message({"type": "a"}) == Message("a", None, {})
    assert as_message({"type": "a", "headers": None}) == Message("a", None, {})
    assert as_message(MappingProxyType({"type": "a", "content": 2})) == Message("a", 2)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"content": 1}, "needs a 'type'"),
        ({"type": "a", "priority": 1, "body": 2}, "['body', 'priority']"),
        (["type", "a"], "not list"),
        ("a", "not str"),
        (None, "not NoneType"),
        ({"type": ""}, "non-empty"),
        ({"type": "a", "headers": {"k": 1}}, "strings to strings"),
    ],
    ids=["missing-type", "unknown-fields", "list", "str", "none", "empty-type", "bad-header"],
)
def test_as_message_refuses_what_is_not_a_message(value: Any, words: str) -> None:
    """as_message() raises InvalidMessage with a message that says what was wrong."""
    with pytest.raises(InvalidMessage) as caught:
        as_message(value)

    assert words in str(caught.value)


@given(json_values, st.none() | st.dictionaries(st.text(), st.text(), max_size=3))
def test_encode_any_of_a_dict_is_encode_of_its_message(content: Any, headers: dict[str, str] | None) -> None:
    """The shortcut for plain dicts writes exactly what encode(as_message(...)) writes."""
    value = {"type": "t", "content": content, "headers": headers}
    assert encode_any(value) == encode(as_message(value))


@pytest.mark.parametrize(
    "value",
    [
        {"type": ""},
        {"type": " "},
        {"type": 1},
        {"type": "x" * (MAX_TYPE_LENGTH + 1)},
        {"type": "t", "headers": {"a": 1}},
        {"type": "t", "headers": []},
        {"type": "t", "extra": 1},
        {"content": 1},
        {"type": "t", "content": float("nan")},
        {"type": "t", "content": "\ud800"},
    ],
)
def test_encode_any_refuses_what_as_message_or_encode_refuses(value: dict[str, Any]) -> None:
    """Every dict the full checks refuse, the shortcut refuses with the same message."""
    with pytest.raises(InvalidMessage) as expected:
        encode(as_message(value))
    with pytest.raises(InvalidMessage) as got:
        encode_any(value)
    assert str(got.value) == str(expected.value)


def test_encode_recovers_after_a_circular_content() -> None:
    """A refused circular content leaves no trace: the next encode of the same lists succeeds."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidMessage):
        encode_any({"type": "t", "content": loop})
    inner: list[Any] = [1]
    assert encode_any({"type": "t", "content": [inner, inner]}) == b'{"type":"t","content":[[1],[1]],"headers":{}}'
