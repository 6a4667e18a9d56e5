"""mqctl: an asynchronous message-queue library with memory, Redis Streams and NATS JetStream backends."""

from mqctl.connect import connect, open_broker
from mqctl.core.backend import Backend, DeadLetter, GroupStats, TopicStats
from mqctl.core.broadcast import Broadcast
from mqctl.core.broker import Broker, BrokerOptions
from mqctl.core.errors import (
    BrokerOutOfMemory,
    BrokerRefused,
    BrokerUnavailable,
    ConfigError,
    InvalidMessage,
    MessageTooLarge,
    MQError,
    PublishTimeout,
    QueueFull,
    Reject,
    Retry,
    ServiceError,
    SubscriptionClosed,
    UnknownMessage,
)
from mqctl.core.filters import Filter, by_header, by_type, where
from mqctl.core.message import Message
from mqctl.core.retry import RetryPolicy
from mqctl.core.subscription import Delivery, Subscription
from mqctl.version import __version__
from mqctl.worker import App

__all__ = [
    "App",
    "Backend",
    "Broadcast",
    "Broker",
    "BrokerOptions",
    "BrokerOutOfMemory",
    "BrokerRefused",
    "BrokerUnavailable",
    "ConfigError",
    "DeadLetter",
    "Delivery",
    "Filter",
    "GroupStats",
    "InvalidMessage",
    "MQError",
    "Message",
    "MessageTooLarge",
    "PublishTimeout",
    "QueueFull",
    "Reject",
    "Retry",
    "RetryPolicy",
    "ServiceError",
    "Subscription",
    "SubscriptionClosed",
    "TopicStats",
    "UnknownMessage",
    "__version__",
    "by_header",
    "by_type",
    "connect",
    "open_broker",
    "where",
]
