"""``mqctl.App``: handlers registered with a decorator, run together on one broker.

    app = mqctl.App()                      # the broker from MQCTL_BROKER_URL, at run time

    @app.handler("orders", group="billing", concurrency=8, max_attempts=5)
    async def bill(order: Order, delivery: mqctl.Delivery) -> None: ...

    await app.run()                        # until app.stop(), or cancelled
    async with app.test() as t: ...        # the handlers in-process on memory://, for tests

``mqctl worker MODULE:app`` runs an app as a process (``mqctl.cli.worker``). Creating an
app connects to nothing; ``run`` opens the broker and closes it when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from mqctl.config import DEFAULT_BROKER_URL
from mqctl.connect import open_broker
from mqctl.core.backend import DeadLetter
from mqctl.core.broker import Broker
from mqctl.core.errors import ConfigError
from mqctl.core.filters import Predicate
from mqctl.core.message import Message
from mqctl.core.names import check_name
from mqctl.core.retry import RetryPolicy
from mqctl.worker.handler import Handler, HandlerFunc
from mqctl.worker.runner import HandlerRunner


class App:
    """A set of handlers and the broker they run on.

    ``App(url)`` or ``App(broker=...)``; with neither, the URL is read from
    ``MQCTL_BROKER_URL`` when the app runs (default ``redis://127.0.0.1:6379/0``).
    ``options`` go to ``mqctl.open_broker`` (``max_backlog``, ``redelivery``...).
    """

    def __init__(self, url: str | None = None, *, broker: Broker | None = None, **options: Any) -> None:
        if url is not None and broker is not None:
            raise ConfigError("Give App a URL or a broker, not both.")
        self.url = url
        self.broker = broker
        self.options = options
        self.handlers: dict[str, Handler] = {}
        self.runners: list[HandlerRunner] = []
        """The handlers at work while ``run`` runs (their ``counts`` say what they did)."""
        self.on_call: Callable[[str, float], None] | None = None
        """Called with a handler's name and each call's duration, seconds (the worker's metrics)."""
        self._stop: asyncio.Event | None = None
        self._force: asyncio.Event | None = None
        self._started: asyncio.Event | None = None

    def handler(
        self,
        topic: str,
        *,
        group: str | None = None,
        name: str | None = None,
        concurrency: int = 1,
        max_attempts: int = 5,
        ack_timeout_s: float = 30.0,
        timeout_s: float | None = None,
        retry: RetryPolicy | None = None,
        filter: Predicate | None = None,
        from_start: bool = False,
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register an ``async def`` to handle each message of ``topic`` as a consumer of ``group``.

        ``group`` defaults to the handler's ``name`` (the function's name): each handler gets
        every message of its topic, and the workers running one handler share them.
        ``concurrency`` handlers run at once (and as many messages are fetched ahead);
        ``max_attempts`` deliveries before the dead letters; ``ack_timeout_s`` before a delivery
        whose worker died comes back; ``timeout_s`` cancels a call that runs longer (it is then
        retried); ``retry`` is the backoff between attempts (default 1 s doubling to 30 s,
        at most ``ack_timeout_s``); ``filter`` as in ``Broker.subscribe``. A new group starts
        with the messages published from then on (``from_start=True``: every retained one).
        The function is returned unchanged, so it can still be called directly.
        """

        def register(func: HandlerFunc) -> HandlerFunc:
            handler_name = name or getattr(func, "__name__", "")
            if not handler_name or handler_name in self.handlers:
                raise ConfigError(
                    f"Handler names must be unique and non-empty; {handler_name!r} is taken. Pass name=... to tell "
                    "them apart."
                )
            settings: dict[str, Any] = {
                "topic": topic,
                "group": group or handler_name,
                "name": handler_name,
                "concurrency": concurrency,
                "max_attempts": max_attempts,
                "ack_timeout_s": ack_timeout_s,
                "timeout_s": timeout_s,
                "filter": filter,
                "from_start": from_start,
            }
            if retry is not None:
                settings["retry"] = retry
            if group is None:
                try:
                    check_name("group", handler_name)
                except ConfigError as exc:
                    raise ConfigError(f"{exc} A handler's group is its name unless given: pass group=...") from exc
            self.handlers[handler_name] = Handler.of(func, **settings)
            return func

        return register

    def select(self, names: Iterable[str] | None) -> list[Handler]:
        """The handlers named (all when ``names`` is None); ``ConfigError`` for an unknown name."""
        if not self.handlers:
            raise ConfigError("This app has no handlers: register one with @app.handler(topic).")
        if names is None:
            return list(self.handlers.values())
        chosen = []
        for n in names:
            if n not in self.handlers:
                known = ", ".join(sorted(self.handlers))
                raise ConfigError(f"No handler named {n!r}; this app has: {known}.")
            chosen.append(self.handlers[n])
        return chosen

    async def run(
        self,
        *,
        handlers: Sequence[str] | None = None,
        graceful_timeout_s: float = 30.0,
        poll_interval_s: float = 2.0,
        consumer: str | None = None,
    ) -> None:
        """Run the handlers until ``stop()``, then drain: read no more, hand back what was read
        and not started, let running handlers finish within ``graceful_timeout_s`` and cancel
        the rest (their messages go back to their groups). Cancelling ``run`` cancels at once,
        with the same hand-back."""
        chosen = self.select(handlers)
        self._prepare()
        owned = self.broker is None
        url = self.url or os.environ.get("MQCTL_BROKER_URL") or DEFAULT_BROKER_URL
        broker = self.broker or open_broker(url, **self.options)
        try:
            await self._run_on(broker, chosen, graceful_timeout_s, poll_interval_s, consumer)
        finally:
            if owned:
                await broker.aclose()

    async def _run_on(
        self,
        broker: Broker,
        chosen: list[Handler],
        graceful_timeout_s: float,
        poll_interval_s: float,
        consumer: str | None,
    ) -> None:
        assert self._stop is not None and self._force is not None and self._started is not None  # _prepare
        runners = [HandlerRunner(h, broker, poll_interval_s=poll_interval_s, consumer=consumer) for h in chosen]
        if self.on_call is not None:
            for runner in runners:
                runner.on_call = functools.partial(self.on_call, runner.handler.name)
        self.runners = runners
        try:
            for runner in runners:
                await runner.start()
            self._started.set()
            await self._stop.wait()
            await asyncio.gather(*(r.stop() for r in runners))
            drained: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*(r.wait() for r in runners)))
            forced: asyncio.Future[Any] = asyncio.ensure_future(self._force.wait())
            try:
                await asyncio.wait({drained, forced}, timeout=graceful_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in (forced, drained):
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
        finally:
            await asyncio.gather(*(r.aclose() for r in runners), return_exceptions=True)

    def _prepare(self) -> None:
        self._stop, self._force, self._started = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def started(self) -> None:
        """Return once ``run`` has joined every group and its handlers are reading."""
        while self._started is None:
            await asyncio.sleep(0.001)
        await self._started.wait()

    def stop(self, *, force: bool = False) -> None:
        """Ask ``run`` to drain and return; ``force=True`` (a second signal) cancels running
        handlers at once. Safe to call from a signal handler on the loop, and more than once."""
        if self._stop is not None:
            self._stop.set()
        if force and self._force is not None:
            self._force.set()

    @contextlib.asynccontextmanager
    async def test(self, *, handlers: Sequence[str] | None = None, **options: Any) -> AsyncIterator[AppTest]:
        """Run the handlers in-process on a fresh ``memory://`` broker for a test:

            async with app.test() as t:
                await t.publish("orders", {"id": 1, "amount": 9.5})
                await t.idle()
                assert (await t.dead_letters("orders")) == []

        ``options`` go to the broker (``max_backlog``...). On exit the handlers are cancelled.
        """
        chosen = self.select(handlers)
        broker = open_broker("memory://", **options)
        self._prepare()
        task = asyncio.ensure_future(self._run_on(broker, chosen, 0.0, 0.05, None))
        try:
            started = asyncio.ensure_future(self.started())
            await asyncio.wait({started, task}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                started.cancel()
                task.result()  # it failed to start: say why
            yield AppTest(broker, self.runners)
        finally:
            self.stop(force=True)
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await broker.aclose()


class AppTest:
    """An app's handlers running in-process on ``memory://`` (``App.test``)."""

    def __init__(self, broker: Broker, runners: list[HandlerRunner]) -> None:
        self.broker = broker
        self.runners = {r.handler.name: r for r in runners}

    async def publish(
        self, topic: str, content: Any = None, *, type: str = "message", headers: Mapping[str, str] | None = None
    ) -> str:
        """Publish ``content`` (or a ``mqctl.Message``) to ``topic``; returns its id."""
        message = content if isinstance(content, Message) else Message(type, content, dict(headers or {}))
        return await self.broker.publish(topic, message)

    async def idle(self, timeout_s: float = 5.0) -> None:
        """Return once no handler is running and each handler's group has nothing waiting or
        pending (a message waiting out its retry backoff counts as pending). ``TimeoutError``
        after ``timeout_s``, saying what is still there."""
        deadline = time.monotonic() + timeout_s
        while True:
            busy = await self._busy()
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"The handlers were not idle within {timeout_s:g} s: {'; '.join(busy)}.")
            await asyncio.sleep(0.005)

    async def _busy(self) -> list[str]:
        busy = []
        for name, runner in self.runners.items():
            handler = runner.handler
            group = (await self.broker.stats(handler.topic)).group(handler.group)
            waiting = 0 if group is None else group.backlog
            if runner.counts.running or waiting:
                busy.append(f"{name}: {runner.counts.running} running, {waiting} waiting or pending")
        return busy

    async def dead_letters(self, topic: str) -> list[DeadLetter]:
        """The dead letters of ``topic``, oldest first."""
        return await self.broker.dead_letters(topic, count=10_000)
