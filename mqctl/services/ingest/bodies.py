"""Service A's request and response bodies, as pydantic models (they also make its OpenAPI schema)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mqctl.core.message import MAX_TYPE_LENGTH
from mqctl.core.names import MAX_NAME_LENGTH, NAME_PATTERN, check_name
from mqctl.core.schedule import MAX_DELAY_S

MAX_BATCH = 1000

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain a character other than whitespace")
    if _CONTROL.search(value):  # a type shows up in logs and filters: no line breaks or escapes
        raise ValueError("must not contain control characters (U+0000 to U+001F, U+007F)")
    return value


def _topic_name(value: str) -> str:
    return check_name("topic", value)  # ConfigError is a ValueError: pydantic reports it on the field


# The validators give the errors; json_schema_extra only tells the OpenAPI document what they accept.
MessageType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_TYPE_LENGTH,
        description="What the message is, e.g. 'order.created'.",
        json_schema_extra={"pattern": r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$"},
    ),
    AfterValidator(_not_blank),
]
TopicName = Annotated[
    str,
    Field(json_schema_extra={"minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": NAME_PATTERN}),
    AfterValidator(_topic_name),
]

EXAMPLE_MESSAGE: dict[str, Any] = {
    "type": "order.created",
    "content": {"order_id": 42, "total": 9.99},
    "headers": {"source": "swagger"},
}


class NewMessage(BaseModel):
    """One message as a publisher sends it."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EXAMPLE_MESSAGE]})

    type: MessageType
    content: Any = Field(description="Any JSON value: object, array, string, number, boolean or null.")
    headers: dict[str, str] = Field(default_factory=dict, description="String keys to string values.")


PartitionKey = Annotated[str, Field(min_length=1, max_length=200)]
DelaySeconds = Annotated[
    float,
    Field(
        ge=0,
        le=MAX_DELAY_S,
        allow_inf_nan=False,
        strict=True,  # a number, as the schema says: not true, not "30"
        description="Deliver no sooner than this many seconds from now (stored at once, in the broker).",
    ),
]
_KEY_DOC = (
    "On a partitioned topic, picks the partition: messages with the same key keep their order. "
    "Ignored on a topic of one partition."
)


class PublishRequest(NewMessage):
    """One message and, optionally, the topic to publish it on."""

    topic: TopicName | None = Field(None, description="The topic; the service's default topic when omitted.")
    key: PartitionKey | None = Field(None, description=_KEY_DOC)
    delay_s: DelaySeconds | None = None


class BatchRequest(BaseModel):
    """Up to 1000 messages for one topic, stored all or none."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"messages": [EXAMPLE_MESSAGE, {"type": "order.paid", "content": 42}]}]},
    )

    messages: list[NewMessage] = Field(min_length=1, max_length=MAX_BATCH)
    topic: TopicName | None = Field(None, description="The topic; the service's default topic when omitted.")
    key: PartitionKey | None = Field(None, description=_KEY_DOC + " The whole batch goes to its partition.")
    delay_s: DelaySeconds | None = None


class Accepted(BaseModel):
    """The broker has stored the message."""

    id: str = Field(description="The message id, e.g. '1718000000000-0'.")
    status: Literal["accepted"] = "accepted"
    topic: str


class BatchAccepted(BaseModel):
    """The broker has stored every message of the batch."""

    ids: list[str] = Field(description="The message ids, in the order of the request.")
    status: Literal["accepted"] = "accepted"
    count: int
    topic: str


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"


class NotReady(BaseModel):
    status: Literal["unavailable"] = "unavailable"
    error: str = "broker_unavailable"
    detail: str
