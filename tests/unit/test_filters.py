"""Filters: by_type, by_header, where, their composition with & | ~, and their repr."""

from __future__ import annotations

import pytest

from mqctl import ConfigError, Filter, Message, by_header, by_type, where
from mqctl.core.filters import as_filter

ORDER = Message("order", {"total": 120}, {"env": "prod", "region": "eu"})
REFUND = Message("refund", {"total": 5}, {"env": "test"})
PING = Message("ping")


def kept(keep: Filter, *messages: Message) -> list[str]:
    return [m.type for m in messages if keep(m)]


def big(message: Message) -> bool:
    return isinstance(message.content, dict) and message.content.get("total", 0) > 100


def test_by_type_keeps_listed_types() -> None:
    """by_type(...) keeps messages whose type is one of those given."""
    assert kept(by_type("order"), ORDER, REFUND, PING) == ["order"]
    assert kept(by_type("order", "ping"), ORDER, REFUND, PING) == ["order", "ping"]


@pytest.mark.parametrize("types", [(), ("",), ("a", ""), (5,)], ids=["none", "empty", "one-empty", "not-str"])
def test_by_type_needs_non_empty_names(types: tuple[object, ...]) -> None:
    """by_type() with no names, an empty name or a non-string raises ConfigError."""
    with pytest.raises(ConfigError):
        by_type(*types)  # type: ignore[arg-type]


def test_by_header_without_values_keeps_messages_carrying_it() -> None:
    """by_header(name) keeps any message that has the header, whatever its value."""
    assert kept(by_header("env"), ORDER, REFUND, PING) == ["order", "refund"]
    assert kept(by_header("region"), ORDER, REFUND, PING) == ["order"]


def test_by_header_with_values_keeps_matching_values() -> None:
    """by_header(name, *values) keeps messages whose header equals one of the values."""
    assert kept(by_header("env", "prod"), ORDER, REFUND, PING) == ["order"]
    assert kept(by_header("env", "prod", "test"), ORDER, REFUND, PING) == ["order", "refund"]
    assert kept(by_header("env", "staging"), ORDER, REFUND, PING) == []


def test_by_header_with_empty_string_value_matches_present_empty_header() -> None:
    """An empty header value is a value: by_header(name, "") matches it, and by_header(name) too."""
    blank = Message("x", None, {"env": ""})

    assert by_header("env", "")(blank)
    assert by_header("env")(blank)


@pytest.mark.parametrize("name", ["", None, 3])
def test_by_header_needs_a_name(name: object) -> None:
    """by_header() without a non-empty string name raises ConfigError."""
    with pytest.raises(ConfigError):
        by_header(name)  # type: ignore[arg-type]


def test_where_wraps_any_predicate() -> None:
    """where(callable) keeps messages for which the callable is truthy."""
    assert kept(where(big), ORDER, REFUND, PING) == ["order"]
    assert kept(where(lambda m: m.content), ORDER, REFUND, PING) == ["order", "refund"]


def test_where_needs_a_callable() -> None:
    """where() of something that is not callable raises ConfigError."""
    with pytest.raises(ConfigError):
        where("type == order")  # type: ignore[arg-type]


def test_and_needs_both() -> None:
    """a & b keeps what both keep."""
    assert kept(by_header("env") & where(big), ORDER, REFUND, PING) == ["order"]


def test_or_needs_either() -> None:
    """a | b keeps what either keeps."""
    assert kept(by_type("ping") | by_header("env", "test"), ORDER, REFUND, PING) == ["refund", "ping"]


def test_not_inverts() -> None:
    """~a keeps what a drops."""
    assert kept(~by_type("order"), ORDER, REFUND, PING) == ["refund", "ping"]
    assert kept(~~by_type("order"), ORDER, REFUND, PING) == ["order"]


def test_composition_follows_python_precedence() -> None:
    """a & b | c is (a & b) | c, as for Python's own operators."""
    keep = by_type("order") & by_header("env", "test") | by_type("ping")

    assert kept(keep, ORDER, REFUND, PING) == ["ping"]


def test_plain_callable_composes_on_the_right() -> None:
    """A plain function can stand on the right of & and |."""
    assert kept(by_header("env") & big, ORDER, REFUND, PING) == ["order"]
    assert kept(by_type("ping") | big, ORDER, REFUND, PING) == ["order", "ping"]


def test_as_filter_of_none_keeps_everything() -> None:
    """No filter keeps every message."""
    assert kept(as_filter(None), ORDER, REFUND, PING) == ["order", "refund", "ping"]


def test_as_filter_passes_filters_through_and_wraps_callables() -> None:
    """as_filter returns a Filter unchanged and wraps a plain callable in where()."""
    keep = by_type("order")

    assert as_filter(keep) is keep
    assert isinstance(as_filter(big), Filter)
    assert as_filter(big)(ORDER)


@pytest.mark.parametrize(
    ("keep", "text"),
    [
        (by_type("b", "a"), "by_type('a', 'b')"),
        (by_header("env"), "by_header('env')"),
        (by_header("env", "test", "prod"), "by_header('env', 'prod', 'test')"),
        (where(big), "where('big')"),
        (~by_type("a"), "~by_type('a')"),
        (by_type("a") & by_header("env"), "(by_type('a') & by_header('env'))"),
        (by_type("a") | by_type("b"), "(by_type('a') | by_type('b'))"),
        (
            by_type("a") & ~by_header("env", "test") | where(big),
            "((by_type('a') & ~by_header('env', 'test')) | where('big'))",
        ),
    ],
)
def test_repr_reads_like_the_code_that_built_it(keep: Filter, text: str) -> None:
    """A filter's repr is the expression that builds it, with sorted values, for logs."""
    assert repr(keep) == text


def test_filters_are_values() -> None:
    """Two filters built the same way are equal (and usable as dict keys)."""
    assert by_type("a", "b") == by_type("b", "a")
    assert by_header("env", "prod") == by_header("env", "prod")
    assert len({by_type("a"), by_type("a")}) == 1
