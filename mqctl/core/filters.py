"""Filters: composable predicates over a message.

    by_type("order", "refund") & ~by_header("env", "test") | where(lambda m: m.content == 1)

A filter is any callable ``Message -> bool``; the classes here add ``&``, ``|`` and
``~`` so that filters compose, and a readable ``repr`` for logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from mqctl.core.errors import ConfigError
from mqctl.core.message import Message


@runtime_checkable
class Predicate(Protocol):
    def __call__(self, message: Message, /) -> bool: ...


class Filter:
    """Base of the composable filters: subclasses implement ``__call__``."""

    def __call__(self, message: Message, /) -> bool:
        raise NotImplementedError

    def __and__(self, other: Predicate) -> Filter:
        return All((self, as_filter(other)))

    def __or__(self, other: Predicate) -> Filter:
        return Any_((self, as_filter(other)))

    def __invert__(self) -> Filter:
        return Not(self)


@dataclass(frozen=True, slots=True)
class ByType(Filter):
    """Matches messages whose type is one of ``types``."""

    types: frozenset[str]

    def __call__(self, message: Message, /) -> bool:
        return message.type in self.types

    def __repr__(self) -> str:
        return f"by_type({', '.join(repr(t) for t in sorted(self.types))})"


@dataclass(frozen=True, slots=True)
class ByHeader(Filter):
    """Matches messages whose header ``name`` is present (and equals one of ``values``, if given)."""

    name: str
    values: frozenset[str] | None = None

    def __call__(self, message: Message, /) -> bool:
        value = message.headers.get(self.name)
        if value is None:
            return False
        return self.values is None or value in self.values

    def __repr__(self) -> str:
        if self.values is None:
            return f"by_header({self.name!r})"
        return f"by_header({self.name!r}, {', '.join(repr(v) for v in sorted(self.values))})"


@dataclass(frozen=True, slots=True)
class Where(Filter):
    """Matches messages for which ``predicate`` returns true."""

    predicate: Callable[[Message], bool]

    def __call__(self, message: Message, /) -> bool:
        return bool(self.predicate(message))

    def __repr__(self) -> str:
        return f"where({getattr(self.predicate, '__name__', self.predicate)!r})"


@dataclass(frozen=True, slots=True)
class All(Filter):
    parts: tuple[Filter, ...]

    def __call__(self, message: Message, /) -> bool:
        return all(part(message) for part in self.parts)

    def __repr__(self) -> str:
        return "(" + " & ".join(map(repr, self.parts)) + ")"


@dataclass(frozen=True, slots=True)
class Any_(Filter):
    parts: tuple[Filter, ...]

    def __call__(self, message: Message, /) -> bool:
        return any(part(message) for part in self.parts)

    def __repr__(self) -> str:
        return "(" + " | ".join(map(repr, self.parts)) + ")"


@dataclass(frozen=True, slots=True)
class Not(Filter):
    part: Filter

    def __call__(self, message: Message, /) -> bool:
        return not self.part(message)

    def __repr__(self) -> str:
        return f"~{self.part!r}"


def by_type(*types: str) -> Filter:
    """A filter that keeps messages of any of the given ``types``."""
    if not types or not all(isinstance(t, str) and t for t in types):
        raise ConfigError(f"by_type() needs one or more non-empty type names, got {types!r}.")
    return ByType(frozenset(types))


def by_header(name: str, *values: str) -> Filter:
    """A filter that keeps messages carrying header ``name`` (with one of ``values``, if given)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"by_header() needs a non-empty header name, got {name!r}.")
    return ByHeader(name, frozenset(values) if values else None)


def where(predicate: Callable[[Message], bool]) -> Filter:
    """A filter from any callable that takes a ``Message`` and returns a bool."""
    if not callable(predicate):
        raise ConfigError(f"where() needs a callable, got {predicate!r}.")
    return Where(predicate)


def as_filter(value: Predicate | None) -> Filter:
    """``value`` as a composable ``Filter`` (``None`` keeps everything)."""
    if value is None:
        return Where(_keep_all)
    if isinstance(value, Filter):
        return value
    return where(value)


def _keep_all(message: Message) -> bool:
    return True
