"""Registering handlers: what ``App.handler`` accepts and the clear errors for what it cannot fill."""

from __future__ import annotations

from typing import Any

import pytest

import mqctl
from mqctl.worker.handler import Handler


async def _noop(content: Any) -> None:
    return None


def test_a_plain_function_is_refused_with_what_to_do() -> None:
    """A handler must be ``async def``; the error says how to run blocking work."""
    app = mqctl.App("memory://")

    def blocking(content: Any) -> None:
        return None

    with pytest.raises(mqctl.ConfigError, match=r"must be an 'async def' function.*asyncio.to_thread"):
        app.handler("t")(blocking)  # type: ignore[arg-type]


def test_two_content_parameters_are_refused() -> None:
    """Only one parameter can take the content; the error names both."""
    app = mqctl.App("memory://")

    async def two(a: int, b: str) -> None:
        return None

    with pytest.raises(mqctl.ConfigError, match=r"two parameters for the message's content \('a' and 'b'\)"):
        app.handler("t")(two)


def test_star_parameters_are_refused() -> None:
    """``*args``/``**kwargs`` cannot be filled by annotation."""
    app = mqctl.App("memory://")

    async def star(*args: Any) -> None:
        return None

    with pytest.raises(mqctl.ConfigError, match=r"\*args and \*\*kwargs"):
        app.handler("t")(star)


def test_names_are_unique_and_the_group_defaults_to_the_name() -> None:
    """A second handler of the same name is refused; a handler's group is its name unless given."""
    app = mqctl.App("memory://")
    with pytest.raises(mqctl.ConfigError, match=r"Invalid group name '_noop'.*pass group=\.\.\."):
        app.handler("t")(_noop)
    app.handler("t", name="noop")(_noop)
    assert app.handlers["noop"].group == "noop"
    with pytest.raises(mqctl.ConfigError, match=r"'noop' is taken"):
        app.handler("u", name="noop")(_noop)
    app.handler("u", name="other", group="billing")(_noop)
    assert app.handlers["other"].group == "billing"


@pytest.mark.parametrize(
    ("setting", "value"),
    [("concurrency", 0), ("max_attempts", 0), ("concurrency", 1.5), ("timeout_s", 0), ("ack_timeout_s", -1)],
)
def test_bad_settings_are_refused(setting: str, value: Any) -> None:
    """Counts are whole numbers of at least 1 and times are > 0; the error quotes the value."""
    with pytest.raises(mqctl.ConfigError, match=rf"{setting} must be .*{value!r}"):
        Handler.of(_noop, topic="t", group="g", name="n", **{setting: value})


def test_bad_topic_and_group_names_are_refused() -> None:
    """Topic and group names follow the broker's rules."""
    app = mqctl.App("memory://")
    with pytest.raises(mqctl.ConfigError):
        app.handler("bad topic")(_noop)
    with pytest.raises(mqctl.ConfigError):
        app.handler("t", group="a b")(_noop)


def test_select_names_the_handlers_there_are() -> None:
    """Asking for an unknown handler says which ones exist; an app without handlers says how to add one."""
    app = mqctl.App("memory://")
    with pytest.raises(mqctl.ConfigError, match=r"no handlers: register one"):
        app.select(None)
    app.handler("t", name="bill")(_noop)
    with pytest.raises(mqctl.ConfigError, match=r"No handler named 'ship'; this app has: bill"):
        app.select(["ship"])


def test_url_and_broker_together_are_refused() -> None:
    """An app takes a URL or a broker object, not both."""
    with pytest.raises(mqctl.ConfigError, match="not both"):
        mqctl.App("memory://", broker=mqctl.open_broker("memory://"))


def test_retry_refuses_a_negative_delay() -> None:
    """``Retry(delay_s=-1)`` is a mistake, said at once."""
    with pytest.raises(mqctl.ConfigError, match=r"delay_s must be >= 0, got -1"):
        mqctl.Retry(delay_s=-1)


async def test_app_test_runs_the_handlers_in_process() -> None:
    """``app.test()`` runs handlers on memory://; ``idle()`` returns once they are done."""
    app = mqctl.App("redis://192.0.2.1:1/0")  # never contacted: the test harness brings memory://
    got: list[int] = []

    @app.handler("numbers", concurrency=2)
    async def add(n: int) -> None:
        got.append(n)

    @app.handler("numbers", name="reject_odd")
    async def reject_odd(n: int) -> None:
        if n % 2:
            raise mqctl.Reject("odd")

    async with app.test() as t:
        for n in range(5):
            await t.publish("numbers", n)
        await t.idle()
        letters = await t.dead_letters("numbers")
    assert sorted(got) == [0, 1, 2, 3, 4]
    assert sorted((letter.group, letter.reason) for letter in letters) == [("reject_odd", "odd")] * 2
