"""Every error mqctl raises, under one root.

    MQError
    ├── ConfigError              a bad URL, option or topic name
    ├── InvalidMessage           a message that is not {type, content, headers}
    │   └── MessageTooLarge      encoded size over the broker's limit
    ├── QueueFull                the topic's backlog is at max_backlog
    ├── BrokerUnavailable        the broker cannot be reached (after retries)
    │   ├── PublishTimeout       the publish deadline passed before the broker answered
    │   ├── BrokerOutOfMemory    the broker refuses writes (Redis maxmemory + noeviction)
    │   └── BrokerRefused        the broker answers but refuses mqctl until an operator acts
    ├── UnknownMessage           an id that is not pending / not a dead letter
    ├── SubscriptionClosed       iterating or acking on a closed subscription
    ├── ServiceError             Service A or B answered with an error (the clients)
    ├── Retry                    raised by a handler: deliver the message again (after delay_s)
    └── Reject                   raised by a handler: to the dead letters at once, with a reason

Messages are sentences a person can act on. ``retry_after_s`` on the capacity and
availability errors tells an HTTP layer what to put in ``Retry-After``.
"""

from __future__ import annotations


class MQError(Exception):
    """The root of every error mqctl raises."""


class ConfigError(MQError, ValueError):
    """A URL, option or name that mqctl cannot use."""


class InvalidMessage(MQError, ValueError):
    """A message without a usable ``type``, ``content`` or ``headers``."""


class MessageTooLarge(InvalidMessage):
    """A message whose encoded size is over the broker's ``max_message_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"Message is {size} bytes encoded, over the limit of {limit} bytes; "
            "send a smaller message or raise max_message_bytes."
        )


class QueueFull(MQError):
    """The topic's backlog is at its capacity; nothing was stored."""

    retry_after_s = 1.0

    def __init__(self, topic: str, backlog: int, max_backlog: int) -> None:
        self.topic = topic
        self.backlog = backlog
        self.max_backlog = max_backlog
        super().__init__(
            f"Topic {topic!r} is full: {backlog} messages are not yet acknowledged "
            f"(max_backlog={max_backlog}); retry once consumers catch up."
        )


class BrokerUnavailable(MQError, ConnectionError):
    """The broker could not be reached, or stopped answering, within the deadline."""

    retry_after_s = 2.0


class PublishTimeout(BrokerUnavailable, TimeoutError):
    """The publish deadline passed before the broker confirmed the message."""


class BrokerOutOfMemory(BrokerUnavailable):
    """The broker refuses writes because it is out of memory."""


class BrokerRefused(BrokerUnavailable):
    """The broker answers but refuses mqctl: credentials, permissions or its own configuration
    (protected mode, a failing disk, a database it does not have). Retrying will not help;
    the message says what the broker answered and what to change."""


class UnknownMessage(MQError, KeyError):
    """An id that names no pending delivery or dead letter."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "Unknown message."


class SubscriptionClosed(MQError):
    """The subscription was closed; open a new one to go on consuming."""


class ServiceError(MQError):
    """A service answered with an error; ``status`` and ``code`` say which."""

    def __init__(self, status: int, code: str, detail: str, retry_after_s: float | None = None) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s
        super().__init__(f"The service answered {status} {code}: {detail}")


class Retry(MQError):
    """Raise in a handler to have the message delivered again after ``delay_s`` seconds
    (default: the handler's backoff for this attempt). On the last attempt it goes to the
    dead letters instead, as with any exception."""

    def __init__(self, delay_s: float | None = None, reason: str = "retry asked by the handler") -> None:
        if delay_s is not None and not delay_s >= 0:
            raise ConfigError(f"Retry delay_s must be >= 0, got {delay_s!r}.")
        super().__init__(reason)
        self.delay_s = delay_s
        self.reason = reason


class Reject(MQError):
    """Raise in a handler to send the message to the dead letters at once, with ``reason``:
    it can never succeed, so another attempt would only repeat the failure."""

    def __init__(self, reason: str = "rejected by the handler") -> None:
        super().__init__(reason)
        self.reason = reason
