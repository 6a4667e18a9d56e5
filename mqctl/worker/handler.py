"""A handler: an ``async def`` bound to a topic and group, and how its parameters are filled.

Parameters are filled by annotation, each once per delivery:

    mqctl.Delivery      the delivery (id, attempt, headers, message; ack and nack are the runtime's)
    mqctl.Message       the message
    anything else       the message's ``content``, validated by pydantic against the annotation
                        (a model, ``int``, ``list[str]``...; no annotation or ``Any``: as it is)

A handler takes only what it needs, and at most one content parameter. How a handler ends
decides what becomes of the message (``mqctl.worker.runner``): a return acknowledges it,
``Retry`` and any other exception give it back for another attempt, ``Reject`` and content
that fails validation send it to the dead letters at once.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mqctl.core.errors import ConfigError, Reject, Retry
from mqctl.core.filters import Predicate
from mqctl.core.message import Message
from mqctl.core.names import check_name
from mqctl.core.retry import RetryPolicy
from mqctl.core.subscription import Delivery

__all__ = ["Handler", "HandlerFunc", "InvalidContent", "Reject", "Retry"]

HandlerFunc = Callable[..., Awaitable[Any]]


class InvalidContent(Exception):
    """The message's content does not fit the handler's annotation (the reason is pydantic's)."""


_DELIVERY = object()
_MESSAGE = object()


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    source: object  # _DELIVERY, _MESSAGE or the TypeAdapter that validates the content
    keyword: bool


@dataclass(frozen=True, slots=True)
class Handler:
    """One handler and its settings; made by ``App.handler``."""

    func: HandlerFunc
    topic: str
    group: str
    name: str
    concurrency: int = 1
    max_attempts: int = 5
    ack_timeout_s: float = 30.0
    timeout_s: float | None = None
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base_s=1.0, cap_s=30.0))
    filter: Predicate | None = None
    from_start: bool = False
    _params: tuple[_Param, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, func: HandlerFunc, **settings: Any) -> Handler:
        """A handler for ``func``, its settings checked and its parameters read."""
        if not inspect.iscoroutinefunction(func):
            raise ConfigError(
                f"Handler {getattr(func, '__qualname__', func)!r} must be an 'async def' function; "
                "run blocking work inside it with 'await asyncio.to_thread(...)'."
            )
        check_name("topic", settings["topic"])
        check_name("group", settings["group"])
        for key in ("concurrency", "max_attempts"):
            value = settings.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{key} must be a whole number of at least 1, got {value!r}.")
        for key in ("ack_timeout_s", "timeout_s"):
            value = settings.get(key)
            if value is not None and not (isinstance(value, int | float) and value > 0):
                raise ConfigError(f"{key} must be a number of seconds > 0, got {value!r}.")
        return cls(func=func, _params=_read_params(func), **settings)

    def arguments(self, delivery: Delivery) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments for one call; ``InvalidContent`` if the content
        does not validate."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for param in self._params:
            source = param.source
            if source is _DELIVERY:
                value: Any = delivery
            elif source is _MESSAGE:
                value = delivery.message
            else:
                try:
                    value = typing.cast(TypeAdapter[Any], source).validate_python(delivery.message.content)
                except ValidationError as exc:
                    raise InvalidContent(_describe(exc)) from exc
            if param.keyword:
                kwargs[param.name] = value
            else:
                args.append(value)
        return args, kwargs


def _read_params(func: HandlerFunc) -> tuple[_Param, ...]:
    where = getattr(func, "__qualname__", repr(func))
    try:
        hints = typing.get_type_hints(func)
    except Exception as exc:  # a forward reference that does not resolve
        raise ConfigError(f"Cannot read the annotations of handler {where!r}: {exc}.") from exc
    params: list[_Param] = []
    content_param: str | None = None
    for p in inspect.signature(func).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigError(f"Handler {where!r}: *args and **kwargs cannot be filled; name each parameter.")
        hint = hints.get(p.name, Any)
        if hint is Delivery:
            source: object = _DELIVERY
        elif hint is Message:
            source = _MESSAGE
        else:
            if content_param is not None:
                raise ConfigError(
                    f"Handler {where!r} has two parameters for the message's content ({content_param!r} and "
                    f"{p.name!r}); annotate the others with mqctl.Delivery or mqctl.Message."
                )
            content_param = p.name
            try:
                source = TypeAdapter(hint)
            except Exception as exc:  # pydantic cannot build a validator for this type
                raise ConfigError(f"Handler {where!r}: pydantic cannot validate content as {hint!r} ({exc}).") from exc
        params.append(_Param(p.name, source, keyword=p.kind is p.KEYWORD_ONLY))
    return tuple(params)


def _describe(exc: ValidationError) -> str:
    """pydantic's errors on one line: ``id: Input should be a valid integer; amount: Field required``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'content'}: {e['msg']}" for e in exc.errors(include_url=False))
