"""Names of topics, groups and consumers: a safe alphabet, no braces."""

from __future__ import annotations

import pytest

from mqctl import ConfigError
from mqctl.core.names import MAX_NAME_LENGTH, check_name


@pytest.mark.parametrize("name", ["orders", "Orders.v2", "a:b", "user@host", "x_y-z", "7", "a" * MAX_NAME_LENGTH])
def test_valid_names_are_returned_unchanged(name: str) -> None:
    """Letters, digits and . _ : @ -, starting with a letter or digit, up to the length limit."""
    assert check_name("topic", name) == name


INVALID = {
    "empty": "",
    "braces": "a{b}",
    "hash-tag": "{a}",
    "space": "a b",
    "dash": "-a",
    "dot": ".a",
    "slash": "a/b",
    "newline": "a\nb",
    "non-ascii": "é",
    "too-long": "a" * (MAX_NAME_LENGTH + 1),
    "none": None,
    "int": 5,
}


@pytest.mark.parametrize("name", INVALID.values(), ids=INVALID.keys())
def test_invalid_names_raise_config_error(name: object) -> None:
    """Anything else raises ConfigError."""
    with pytest.raises(ConfigError):
        check_name("topic", name)


def test_error_names_the_kind_and_the_value() -> None:
    """The error says which kind of name was wrong and shows the value."""
    with pytest.raises(ConfigError, match=r"Invalid group name 'a b'"):
        check_name("group", "a b")
