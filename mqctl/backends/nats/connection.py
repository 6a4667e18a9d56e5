"""The connection to NATS of one ``nats://`` backend: names, the JetStream context, errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import nats
import nats.errors as nerr
import nats.js.errors as jerr
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mqctl.core.errors import BrokerOutOfMemory, BrokerRefused, BrokerUnavailable, ConfigError

log = logging.getLogger("mqctl.backends.nats")

DEFAULT_PREFIX = "mqctl"
_NO_SPACE = (10047, 10023)  # "insufficient resources", "storage resources exceeded"


def escape(name: str) -> str:
    """A name as one JetStream token (stream, consumer, subject): ``_`` and ``.`` escaped."""
    return name.replace("_", "_5F").replace(".", "_2E")


def unescape(token: str) -> str:
    return token.replace("_2E", ".").replace("_5F", "_")


def said(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def sequence_of(value: str) -> int:
    """A position or id as a stream sequence (0 for one that is not)."""
    return int(value) if value.isdigit() else 0


class Connection:
    """One connection to NATS (made on first use), the names of a topic's streams and
    subjects, and nats-py's errors turned into mqctl's."""

    def __init__(
        self,
        servers: list[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        display_url: str = "nats",
        replicas: int = 1,
        command_timeout_s: float = 5.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if not prefix or not prefix.replace("-", "").isalnum():
            raise ConfigError(f"Invalid NATS prefix {prefix!r}: use letters, digits and '-'.")
        if not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ConfigError(f"replicas must be a whole number from 1 to 5, got {replicas!r}.")
        self.servers = servers
        self.prefix = prefix
        self.display_url = display_url
        self.replicas = replicas
        self.command_timeout_s = command_timeout_s
        self._connect_options = connect_options or {}
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting = asyncio.Lock()
        self._closed = False
        self._closings: set[asyncio.Future[Any]] = set()  # readers handing back what cut-short fetches bring

    def stream(self, topic: str) -> str:
        return f"{self.prefix}_{escape(topic)}"

    def subject(self, topic: str) -> str:
        return f"{self.prefix}.t.{escape(topic)}"

    def dead_stream(self, topic: str) -> str:
        return f"{self.prefix}_{escape(topic)}_dead"

    def dead_subject(self, topic: str) -> str:
        return f"{self.prefix}.d.{escape(topic)}"

    async def js(self) -> JetStreamContext:
        """The JetStream context, connecting on first use."""
        if self._js is not None:
            return self._js
        if self._closed:
            raise BrokerUnavailable(f"This broker for {self.display_url} is closed; connect again to use it.")
        async with self._connecting:
            if self._js is None:
                try:
                    self._nc = await nats.connect(
                        servers=self.servers,
                        connect_timeout=min(self.command_timeout_s, 2.0),
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=0.5,
                        error_cb=self._on_error,
                        disconnected_cb=self._on_disconnected,
                        reconnected_cb=self._on_reconnected,
                        **self._connect_options,
                    )
                except nerr.AuthorizationError as exc:
                    raise BrokerRefused(
                        f"NATS at {self.display_url} refused mqctl's credentials ({exc}). Put the right user and "
                        "password, or token, in the URL (nats://USER:PASSWORD@HOST:PORT)."
                    ) from exc
                except (nerr.Error, OSError, TimeoutError) as exc:
                    raise BrokerUnavailable(f"Cannot reach NATS at {self.display_url}: {said(exc)}.") from exc
                self._js = self._nc.jetstream(timeout=self.command_timeout_s)
        return self._js

    async def _on_error(self, exc: Exception) -> None:
        if not self._closed:
            log.warning("NATS at %s: %s", self.display_url, exc)

    async def _on_disconnected(self) -> None:
        if not self._closed:  # not our own aclose()
            log.warning("NATS at %s: disconnected; reconnecting", self.display_url)

    async def _on_reconnected(self) -> None:
        log.info("NATS at %s: reconnected", self.display_url)

    @property
    def nc(self) -> Client:
        assert self._nc is not None  # after js()
        return self._nc

    @contextlib.asynccontextmanager
    async def errors(self, timeout_s: float | None = None) -> AsyncIterator[None]:
        """Turn nats-py's errors into mqctl's, and bound the call in time."""
        bound = timeout_s or self.command_timeout_s
        try:
            async with asyncio.timeout(bound):
                yield
        except TimeoutError as exc:
            raise BrokerUnavailable(f"NATS at {self.display_url} did not answer within {bound:g} s.") from exc
        except jerr.NoStreamResponseError as exc:
            raise BrokerRefused(
                f"NATS at {self.display_url} has no JetStream answering ({exc}): start nats-server with -js "
                "(JetStream on), or enable it for this account."
            ) from exc
        except jerr.APIError as exc:
            raise self.api_error(exc) from exc
        except nerr.AuthorizationError as exc:
            raise BrokerRefused(
                f"NATS at {self.display_url} refused mqctl ({exc}); check the URL's credentials."
            ) from exc
        except (nerr.Error, OSError) as exc:
            raise BrokerUnavailable(f"Cannot reach NATS at {self.display_url}: {said(exc)}.") from exc

    def api_error(self, exc: jerr.APIError) -> BrokerUnavailable:
        said = f"{exc.description} (code {exc.code}, error {exc.err_code})"
        if exc.err_code in _NO_SPACE:
            return BrokerOutOfMemory(
                f"NATS at {self.display_url} has no room left for JetStream ({said}); free storage or raise its "
                "JetStream limits, then retry."
            )
        if exc.code in (401, 403):
            return BrokerRefused(f"NATS at {self.display_url} refused mqctl ({said}); grant this user JetStream.")
        return BrokerUnavailable(f"NATS at {self.display_url} cannot do this now: {said}.")

    async def settle(self, msg: Msg, payload: bytes) -> None:
        """Ack, nak or term ``msg`` and wait for the server to confirm it did."""
        await self.nc.request(msg.reply, payload, timeout=self.command_timeout_s)

    def closing(self, work: asyncio.Future[Any]) -> None:
        """Keep the connection open until ``work`` (a reader's last hand-back) is done."""
        self._closings.add(work)
        work.add_done_callback(self._closings.discard)

    async def aclose(self) -> None:
        # Each fetch ends within its block_s; what it brings goes back to its group first.
        while self._closings:
            await asyncio.wait(set(self._closings), timeout=self.command_timeout_s + 5)
        self._closed = True
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = self._js = None
