"""Names of topics, groups and consumers: what characters they may use.

Names end up inside Redis keys and URLs, so they are kept to a safe alphabet. Braces
are refused in particular: they would break the hash tag that keeps a topic's keys on
one Redis Cluster slot.
"""

from __future__ import annotations

import re

from mqctl.core.errors import ConfigError

MAX_NAME_LENGTH = 200
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]*$"
"""What a name may be, as a regular expression (also published in Service A's OpenAPI)."""
_NAME = re.compile(NAME_PATTERN)


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid ``kind`` name (topic, group, consumer), else raise."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"A {kind} name must be a non-empty string, got {value!r}.")
    if len(value) > MAX_NAME_LENGTH:
        raise ConfigError(f"The {kind} name is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}.")
    if not _NAME.fullmatch(value):
        raise ConfigError(
            f"Invalid {kind} name {value!r}: use letters, digits and . _ : @ - "
            "(starting with a letter or digit); braces and spaces are not allowed."
        )
    return value
