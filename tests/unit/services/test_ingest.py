"""Service A over httpx.ASGITransport: publishing, every error response, health, readiness, OpenAPI."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pytest_mock import MockerFixture
from starlette.routing import Route

import mqctl
from mqctl.backends.keyspace import Keyspace
from mqctl.config import Settings
from mqctl.core.message import decode
from mqctl.services.ingest import create_app
from mqctl.services.ingest.bodies import BatchRequest, PublishRequest
from mqctl.services.startup import broker_for

TOPIC = "orders"
ERROR_KEYS = {"error", "detail"}


def make_settings(**overrides: Any) -> Settings:
    """Settings pinned for tests, whatever MQCTL_* the environment holds."""
    values: dict[str, Any] = {
        "broker_url": "memory://unused",
        "topic": TOPIC,
        "max_body_bytes": 4096,
        "publish_timeout_s": 1.0,
        "token": None,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service-a") as client:
        yield client


@pytest.fixture
async def broker() -> AsyncIterator[mqctl.Broker]:
    """Service A's broker (``broker_for``) on a fresh memory store, with small limits."""
    connected = broker_for(
        make_settings(broker_url=f"memory://test-{uuid.uuid4().hex}", max_backlog=100, max_message_bytes=512)
    )
    yield connected
    await connected.aclose()


@pytest.fixture
async def client(broker: mqctl.Broker) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(make_settings(), broker=broker)) as connected:
        yield connected


async def stored(broker: mqctl.Broker, topic: str = TOPIC) -> list[tuple[str, mqctl.Message]]:
    reader = await broker.backend.broadcast_reader(topic, "0")
    entries = await reader.read(count=100, block_s=0.001)
    return [(entry.id, decode(entry.payload)) for entry in entries]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body.keys() >= ERROR_KEYS
    assert body["error"] == code
    assert body["detail"].endswith(".")
    return body


class FlakyBackend:
    """A memory backend that raises BrokerUnavailable while ``down`` is set."""

    def __init__(self) -> None:
        self.inner = mqctl.open_broker(f"memory://test-{uuid.uuid4().hex}").backend
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self) -> None:
        if self.down:
            raise mqctl.BrokerUnavailable("Cannot reach Redis at redis://127.0.0.1:6379/0: Connection refused.")

    async def add(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return await self.inner.add(*args, **kwargs)

    async def ping(self, *, write: bool = False) -> None:
        self._check()
        await self.inner.ping()


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[FlakyBackend, mqctl.Broker]]:
    backend = FlakyBackend()
    # A deadline shorter than the first backoff: the publish fails at once, no test sleeps.
    flaky_broker = mqctl.Broker(backend, mqctl.BrokerOptions(publish_timeout_s=0.01))
    yield backend, flaky_broker
    await flaky_broker.aclose()


# -- publishing ------------------------------------------------------------------------


async def test_publish_answers_202_with_the_stored_message_id(client: httpx.AsyncClient, broker: mqctl.Broker) -> None:
    """POST /messages answers 202 with the id of a message the broker really holds."""
    response = await client.post(
        "/messages", json={"type": "order.created", "content": {"id": 1}, "headers": {"a": "b"}}
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert body["topic"] == TOPIC
    assert await stored(broker) == [(body["id"], mqctl.Message("order.created", {"id": 1}, {"a": "b"}))]


async def test_publish_accepts_null_content_and_no_headers(client: httpx.AsyncClient, broker: mqctl.Broker) -> None:
    """Content may be any JSON value, null included; headers default to none."""
    response = await client.post("/messages", json={"type": "ping", "content": None})

    assert response.status_code == 202, response.text
    assert [m for _, m in await stored(broker)] == [mqctl.Message("ping", None, {})]


async def test_publish_goes_to_the_topic_named_in_the_body(client: httpx.AsyncClient, broker: mqctl.Broker) -> None:
    """A topic in the body overrides the service's default topic."""
    response = await client.post("/messages", json={"type": "t", "content": 1, "topic": "audit"})

    assert response.status_code == 202, response.text
    assert response.json()["topic"] == "audit"
    assert len(await stored(broker, "audit")) == 1
    assert await stored(broker) == []


async def test_delay_s_schedules_the_message_instead_of_storing_it_on_the_topic(
    client: httpx.AsyncClient, broker: mqctl.Broker
) -> None:
    """A "delay_s" (single and batch): 202, nothing on the topic yet, the messages counted as scheduled."""
    one = await client.post("/messages", json={"type": "later", "content": 1, "delay_s": 30})
    many = await client.post("/messages/batch", json={"messages": [{"type": "n", "content": 2}], "delay_s": 30.5})

    assert one.status_code == 202 and many.status_code == 202, (one.text, many.text)
    assert await stored(broker) == []
    assert (await broker.stats(TOPIC)).scheduled == 2


@pytest.mark.parametrize("delay", [-1, "soon", "30", True, 10**9, None])
async def test_a_bad_delay_s_is_a_422_naming_the_field(client: httpx.AsyncClient, delay: Any) -> None:
    """A negative, non-numeric (a string, a boolean) or over-a-year delay_s: 422 naming body.delay_s; null: none."""
    response = await client.post("/messages", json={"type": "later", "content": 1, "delay_s": delay})
    if delay is None:
        assert response.status_code == 202, response.text
        return
    error = assert_error(response, 422, "invalid_request")
    assert [f["field"] for f in error["fields"]] == ["delay_s"]
    assert error["fields"][0]["location"] == "body"


async def test_batch_stores_every_message_in_order(client: httpx.AsyncClient, broker: mqctl.Broker) -> None:
    """POST /messages/batch answers 202 with one id per message, in the order sent."""
    messages = [{"type": "n", "content": i} for i in range(3)]

    response = await client.post("/messages/batch", json={"messages": messages})

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert body["count"] == 3
    assert body["topic"] == TOPIC
    assert [(i, m.content) for i, m in await stored(broker)] == list(zip(body["ids"], range(3), strict=True))


async def test_batch_uses_one_publish_many_call(
    client: httpx.AsyncClient, broker: mqctl.Broker, mocker: MockerFixture
) -> None:
    """A batch is one publish_many call on the broker (one round trip), on the batch's topic."""
    spy = mocker.spy(broker, "publish_many")

    response = await client.post(
        "/messages/batch", json={"messages": [{"type": "a", "content": 1}] * 5, "topic": "bulk"}
    )

    assert response.status_code == 202, response.text
    assert spy.call_count == 1
    assert spy.call_args.args[0] == "bulk"


@pytest.mark.parametrize("messages", [[], [{"type": "a", "content": 1}] * 1001])
async def test_batch_size_must_be_1_to_1000(broker: mqctl.Broker, messages: list[dict[str, Any]]) -> None:
    """An empty batch, or one over 1000 messages, is a 422 naming the messages field."""
    async with client_for(create_app(make_settings(max_body_bytes=1_000_000), broker=broker)) as client:
        response = await client.post("/messages/batch", json={"messages": messages})

    body = assert_error(response, 422, "invalid_request")
    assert [f["field"] for f in body["fields"]] == ["messages"]
    assert await stored(broker) == []


async def test_same_idempotency_key_returns_the_same_id_and_stores_once(
    client: httpx.AsyncClient, broker: mqctl.Broker
) -> None:
    """Two posts with one Idempotency-Key get one id and leave one message."""
    message = {"type": "charge", "content": {"amount": 5}}

    first = await client.post("/messages", json=message, headers={"Idempotency-Key": "charge-77"})
    second = await client.post("/messages", json=message, headers={"Idempotency-Key": "charge-77"})
    other = await client.post("/messages", json=message, headers={"Idempotency-Key": "charge-78"})

    assert first.status_code == second.status_code == other.status_code == 202
    assert first.json()["id"] == second.json()["id"] != other.json()["id"]
    assert len(await stored(broker)) == 2


async def test_empty_idempotency_key_is_a_422(client: httpx.AsyncClient) -> None:
    """An empty Idempotency-Key header is refused, naming the header."""
    response = await client.post("/messages", json={"type": "t", "content": 1}, headers={"Idempotency-Key": ""})

    body = assert_error(response, 422, "invalid_request")
    assert body["fields"] == [{"field": "Idempotency-Key", "location": "header", "reason": body["fields"][0]["reason"]}]


async def test_success_logs_nothing_at_info(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    """Publishing logs nothing per message at INFO or above."""
    with caplog.at_level(logging.INFO, logger="mqctl"):
        for _ in range(3):
            assert (await client.post("/messages", json={"type": "t", "content": 1})).status_code == 202

    assert caplog.records == []


# -- invalid requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "", "content": 1}, "type"),
        ({"type": "   ", "content": 1}, "type"),
        ({"content": 1}, "type"),
        ({"type": 123, "content": 1}, "type"),
        ({"type": "x" * 257, "content": 1}, "type"),
        ({"type": "t"}, "content"),
        ({"type": "t", "content": 1, "headers": {"retries": 3}}, "headers.retries"),
        ({"type": "t", "content": 1, "headers": ["a"]}, "headers"),
        ({"type": "t", "content": 1, "colour": "red"}, "colour"),
        ({"type": "t", "content": 1, "topic": 7}, "topic"),
        ([{"type": "t", "content": 1}], "body"),
        ({"type": "line\nbreak", "content": 1}, "type"),
    ],
    ids=[
        "empty-type",
        "blank-type",
        "missing-type",
        "type-not-string",
        "type-too-long",
        "missing-content",
        "header-not-string",
        "headers-not-object",
        "unknown-field",
        "topic-not-string",
        "body-not-object",
        "control-character-in-type",
    ],
)
async def test_invalid_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, broker: mqctl.Broker, body: Any, field: str
) -> None:
    """Each invalid, empty, mistyped or unknown field is a 422 invalid_request naming that field."""
    response = await client.post("/messages", json=body)

    error = assert_error(response, 422, "invalid_request")
    assert [f["field"] for f in error["fields"]] == [field]
    assert error["fields"][0]["location"] == "body"
    assert error["fields"][0]["reason"].endswith(".")
    assert field in error["detail"]
    assert await stored(broker) == []


async def test_every_bad_field_is_listed(client: httpx.AsyncClient) -> None:
    """Several problems in one request are all listed, each with its reason."""
    response = await client.post("/messages", json={"type": "", "headers": "x", "extra": 1})

    error = assert_error(response, 422, "invalid_request")
    assert sorted(f["field"] for f in error["fields"]) == ["content", "extra", "headers", "type"]
    assert "4 fields are invalid" in error["detail"]


async def test_batch_errors_name_the_message_index(client: httpx.AsyncClient) -> None:
    """A bad message in a batch is named by its position: messages.<i>.<field>."""
    response = await client.post("/messages/batch", json={"messages": [{"type": "ok", "content": 1}, {"content": 2}]})

    error = assert_error(response, 422, "invalid_request")
    assert [f["field"] for f in error["fields"]] == ["messages.1.type"]


async def test_errors_never_echo_large_inputs(client: httpx.AsyncClient) -> None:
    """A huge unknown field name or value is not copied into the error response."""
    response = await client.post("/messages", json={"type": "y" * 1500, "content": 1, "z" * 1500: 1})

    assert_error(response, 422, "invalid_request")
    assert len(response.content) < 1000
    assert "y" * 100 not in response.text


@pytest.mark.parametrize("topic", ["{orders}", "has space", "-leading-dash"])
async def test_bad_topic_name_is_a_422(client: httpx.AsyncClient, topic: str) -> None:
    """A topic name the library refuses (braces, spaces...) is a 422 naming the topic field."""
    single = await client.post("/messages", json={"type": "t", "content": 1, "topic": topic})
    batch = await client.post("/messages/batch", json={"messages": [{"type": "t", "content": 1}], "topic": topic})

    for response in (single, batch):
        error = assert_error(response, 422, "invalid_request")
        assert [f["field"] for f in error["fields"]] == ["topic"]
        assert "Invalid topic name" in error["fields"][0]["reason"]


async def test_unparseable_json_is_a_400(client: httpx.AsyncClient) -> None:
    """A body that is not JSON is a 400 invalid_request saying where parsing stopped."""
    response = await client.post("/messages", content=b'{"type": "t", ', headers={"content-type": "application/json"})

    error = assert_error(response, 400, "invalid_request")
    assert error["fields"][0]["field"] == "body"
    assert (
        error["detail"]
        == "The request body is not valid JSON: Expecting property name enclosed in double quotes at character 14."
    )
    assert error["fields"][0]["reason"] == "Expecting property name enclosed in double quotes at character 14."


async def test_body_not_utf8_is_a_400(client: httpx.AsyncClient) -> None:
    """A JSON body that is not valid UTF-8 is a 400 invalid_request."""
    response = await client.post(
        "/messages", content=b'{"type": "\xff\xfe", "content": 1}', headers={"content-type": "application/json"}
    )

    error = assert_error(response, 400, "invalid_request")
    assert error["fields"][0]["field"] == "body"


@pytest.mark.parametrize(
    "headers",
    [{f"x-h{i}": "v" for i in range(101)}, {"x-big": "v" * 33_000}],
    ids=["too-many", "too-large"],
)
async def test_too_many_or_too_large_headers_are_a_431(
    client: httpx.AsyncClient, broker: mqctl.Broker, headers: dict[str, str]
) -> None:
    """Over 100 headers, or over 32 KiB of them, is a 431 headers_too_large; nothing is stored."""
    response = await client.post("/messages", json={"type": "t", "content": 1}, headers=headers)

    error = assert_error(response, 431, "headers_too_large")
    assert "limits are 100 headers" in error["detail"]
    assert await stored(broker) == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_non_json_content_type_is_a_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    """A body sent as anything but JSON (or with no Content-Type) is a 415 naming the header."""
    headers = {"content-type": content_type} if content_type else {}  # httpx adds none for raw bytes

    response = await client.post("/messages", content=b'{"type": "t", "content": 1}', headers=headers)

    error = assert_error(response, 415, "invalid_request")
    assert error["fields"][0]["field"] == "Content-Type"


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.mqctl+json"])
async def test_json_content_types_with_parameters_are_accepted(client: httpx.AsyncClient, content_type: str) -> None:
    """application/json with parameters, and +json types, are JSON."""
    response = await client.post(
        "/messages", content=b'{"type": "t", "content": 1}', headers={"content-type": content_type}
    )

    assert response.status_code == 202, response.text


async def test_non_finite_number_is_an_invalid_message(client: httpx.AsyncClient) -> None:
    """NaN parses in Python but is not JSON the broker can store: 422 invalid_message."""
    response = await client.post(
        "/messages", content=b'{"type": "t", "content": NaN}', headers={"content-type": "application/json"}
    )

    assert_error(response, 422, "invalid_message")


@pytest.mark.parametrize("path", ["/messages", "/messages/batch"])
async def test_an_integer_beyond_64_bits_is_stored_exactly(
    client: httpx.AsyncClient, broker: mqctl.Broker, path: str
) -> None:
    """Any JSON integer is accepted (the schema allows it) and stored as the same integer."""
    message = b'{"type": "t", "content": {"n": 123456789012345678901234}}'
    body = message if path == "/messages" else b'{"messages": [' + message + b"]}"
    response = await client.post(path, content=body, headers={"content-type": "application/json"})

    assert response.status_code == 202, response.text
    ((_, stored_message),) = await stored(broker)
    assert stored_message.content == {"n": 123456789012345678901234}


# -- size limits ---------------------------------------------------------------------------


async def test_body_over_limit_by_content_length_is_a_413(client: httpx.AsyncClient, broker: mqctl.Broker) -> None:
    """A Content-Length over max_body_bytes is refused with 413 request_too_large."""
    response = await client.post("/messages", json={"type": "t", "content": "x" * 5000})

    error = assert_error(response, 413, "request_too_large")
    assert "4096 bytes" in error["detail"]
    assert await stored(broker) == []


async def test_chunked_body_over_limit_is_refused_while_streaming(
    client: httpx.AsyncClient, broker: mqctl.Broker
) -> None:
    """A chunked body with no Content-Length is refused at the first chunk over the limit, not read whole."""
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"type": "t", "content": "'
        for _ in range(1000):
            sent += 1
            yield b"x" * 1024
        yield b'"}'

    response = await client.post("/messages", content=chunks(), headers={"content-type": "application/json"})

    assert_error(response, 413, "request_too_large")
    assert sent <= 5
    assert await stored(broker) == []


async def test_chunked_body_within_limit_is_accepted(client: httpx.AsyncClient) -> None:
    """Counting a chunked body does not get in the way of one under the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "t", '
        yield b'"content": 1}'

    response = await client.post("/messages", content=chunks(), headers={"content-type": "application/json"})

    assert response.status_code == 202, response.text


async def test_message_over_broker_limit_is_a_413(client: httpx.AsyncClient, broker: mqctl.Broker) -> None:
    """A message over the broker's max_message_bytes is a 413 message_too_large, single or in a batch."""
    big = {"type": "t", "content": "x" * 600}

    single = await client.post("/messages", json=big)
    batch = await client.post("/messages/batch", json={"messages": [{"type": "t", "content": 1}, big]})

    for response in (single, batch):
        error = assert_error(response, 413, "message_too_large")
        assert "512 bytes" in error["detail"]
    assert await stored(broker) == []


# -- broker errors -----------------------------------------------------------------------------


async def test_queue_full_is_a_503_with_retry_after(broker: mqctl.Broker) -> None:
    """A topic at max_backlog answers 503 queue_full with an integer Retry-After."""
    full = broker_for(make_settings(broker_url=f"memory://test-{uuid.uuid4().hex}", max_backlog=1))
    try:
        async with client_for(create_app(make_settings(), broker=full)) as client:
            assert (await client.post("/messages", json={"type": "t", "content": 1})).status_code == 202
            response = await client.post("/messages", json={"type": "t", "content": 2})
    finally:
        await full.aclose()

    error = assert_error(response, 503, "queue_full")
    assert response.headers["retry-after"] == "1"
    assert error["retry_after_s"] == 1


async def test_broker_down_is_a_503_and_the_service_recovers(flaky: tuple[FlakyBackend, mqctl.Broker]) -> None:
    """While the broker is unreachable: 503 broker_unavailable with Retry-After; once back: 202 again."""
    backend, flaky_broker = flaky
    async with client_for(create_app(make_settings(), broker=flaky_broker)) as client:
        backend.down = True
        down = await client.post("/messages", json={"type": "t", "content": 1})
        backend.down = False
        back = await client.post("/messages", json={"type": "t", "content": 2})

    error = assert_error(down, 503, "broker_unavailable")
    assert down.headers["retry-after"] == "2"
    assert "Cannot reach Redis" in error["detail"]
    assert back.status_code == 202, back.text


@pytest.mark.parametrize(
    ("exc", "status", "code", "retry_after"),
    [
        (mqctl.PublishTimeout("The broker did not answer within 5 s."), 503, "broker_unavailable", "2"),
        (mqctl.BrokerOutOfMemory("Redis at redis://h is out of memory."), 503, "broker_out_of_memory", "2"),
        (mqctl.InvalidMessage("Message type must be a non-empty string."), 422, "invalid_message", None),
        (mqctl.ConfigError("idempotency_key must be a non-empty string."), 422, "invalid_request", None),
    ],
    ids=["publish-timeout", "out-of-memory", "invalid-message", "config-error"],
)
async def test_library_errors_map_to_their_status(
    client: httpx.AsyncClient,
    broker: mqctl.Broker,
    mocker: MockerFixture,
    exc: mqctl.MQError,
    status: int,
    code: str,
    retry_after: str | None,
) -> None:
    """Each library error a publish raises has its own status, code and (for 503s) Retry-After."""
    mocker.patch.object(broker, "publish", side_effect=exc)
    mocker.patch.object(broker, "publish_many", side_effect=exc)

    single = await client.post("/messages", json={"type": "t", "content": 1})
    batch = await client.post("/messages/batch", json={"messages": [{"type": "t", "content": 1}]})

    for response in (single, batch):
        error = assert_error(response, status, code)
        assert error["detail"] == str(exc)
        assert response.headers.get("retry-after") == retry_after


async def test_broker_password_never_appears_in_a_response(broker: mqctl.Broker, mocker: MockerFixture) -> None:
    """The broker URL's password is masked in any error detail."""
    settings = make_settings(broker_url="redis://:hunter2secret@10.0.0.1:6379/0")
    mocker.patch.object(
        broker, "publish", side_effect=mqctl.BrokerUnavailable("Cannot reach redis://:hunter2secret@10.0.0.1:6379/0.")
    )
    async with client_for(create_app(settings, broker=broker)) as client:
        response = await client.post("/messages", json={"type": "t", "content": 1})

    assert_error(response, 503, "broker_unavailable")
    assert "hunter2secret" not in response.text
    assert "***" in response.json()["detail"]


async def test_unexpected_error_is_a_logged_500_without_details(
    client: httpx.AsyncClient, broker: mqctl.Broker, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Any other exception is a 500 internal_error with a fixed sentence, logged with its traceback."""
    mocker.patch.object(broker, "publish", side_effect=RuntimeError("secret internals"))

    with caplog.at_level(logging.ERROR, logger="mqctl.services.ingest"):
        response = await client.post("/messages", json={"type": "t", "content": 1})

    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "detail": "An unexpected error occurred; it has been logged.",
    }
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [RuntimeError]


async def test_unexpected_library_error_is_a_500(
    client: httpx.AsyncClient, broker: mqctl.Broker, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A library error a publish should never raise is a logged 500, not a guess at a status."""
    mocker.patch.object(broker, "publish", side_effect=mqctl.SubscriptionClosed("closed"))

    with caplog.at_level(logging.ERROR, logger="mqctl.services.ingest"):
        response = await client.post("/messages", json={"type": "t", "content": 1})

    assert_error(response, 500, "internal_error")
    assert any(r.exc_info for r in caplog.records)


async def test_unknown_path_and_method_are_json_errors(client: httpx.AsyncClient) -> None:
    """404 and 405 come in the same JSON error shape as every other error."""
    missing = await client.get("/nope")
    wrong = await client.get("/messages")

    assert_error(missing, 404, "not_found")
    assert_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


# -- health and readiness -------------------------------------------------------------------------


async def test_health_is_ok(client: httpx.AsyncClient) -> None:
    """GET /health answers 200 {"status": "ok"}."""
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_the_broker_answers(client: httpx.AsyncClient) -> None:
    """GET /ready answers 200 {"status": "ready"} when the broker answers a ping."""
    response = await client.get("/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_not_ready_when_the_broker_is_down(flaky: tuple[FlakyBackend, mqctl.Broker]) -> None:
    """GET /ready answers 503 with the reason while the broker is down, 200 once it is back; /health stays 200."""
    backend, flaky_broker = flaky
    async with client_for(create_app(make_settings(), broker=flaky_broker)) as client:
        backend.down = True
        down = await client.get("/ready")
        alive = await client.get("/health")
        backend.down = False
        back = await client.get("/ready")

    assert down.status_code == 503
    body = down.json()
    assert body["status"] == "unavailable"
    assert body["error"] == "broker_unavailable"
    assert "Cannot reach Redis" in body["detail"]
    assert alive.status_code == 200
    assert back.status_code == 200


async def test_not_ready_when_the_ping_fails_unexpectedly(
    client: httpx.AsyncClient, broker: mqctl.Broker, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error from the ping is a 503 with a fixed sentence, logged with its traceback."""
    mocker.patch.object(broker, "ping", side_effect=RuntimeError("secret internals"))

    with caplog.at_level(logging.ERROR, logger="mqctl.services.ingest"):
        response = await client.get("/ready")

    assert response.status_code == 503
    assert "secret" not in response.text
    assert any(r.exc_info for r in caplog.records)


# -- lifespan and configuration -------------------------------------------------------------------


async def test_create_app_connects_nothing() -> None:
    """create_app opens no broker, even for a Redis nobody listens on."""
    app = create_app(make_settings(broker_url="redis://127.0.0.1:1/0"))

    assert app.state.broker is None


def test_create_app_refuses_a_bad_default_topic() -> None:
    """A default topic the library would refuse fails at create_app, not at the first request."""
    with pytest.raises(mqctl.ConfigError, match="topic"):
        create_app(make_settings(topic="{bad}"))


async def test_lifespan_opens_and_closes_its_own_broker() -> None:
    """Without a broker passed in, the lifespan opens one from settings and closes it at shutdown."""
    url = f"memory://test-{uuid.uuid4().hex}"
    app = create_app(make_settings(broker_url=url, max_backlog=7))

    async with app.router.lifespan_context(app):
        opened: mqctl.Broker = app.state.broker
        assert opened.url == url
        assert opened.options.max_backlog == 7
        async with client_for(app) as client:
            assert (await client.post("/messages", json={"type": "t", "content": 1})).status_code == 202

    with pytest.raises(mqctl.BrokerUnavailable):
        await opened.ping()


async def test_lifespan_leaves_a_passed_in_broker_open(broker: mqctl.Broker) -> None:
    """A broker passed to create_app is used as is and not closed at shutdown."""
    app = create_app(make_settings(), broker=broker)

    async with app.router.lifespan_context(app):
        assert app.state.broker is broker

    await broker.ping()


async def test_no_broker_is_a_500(caplog: pytest.LogCaptureFixture) -> None:
    """Requests reaching an app whose lifespan never ran get a logged 500, not a crash."""
    with caplog.at_level(logging.ERROR, logger="mqctl.services.ingest"):
        async with client_for(create_app(make_settings())) as client:
            response = await client.post("/messages", json={"type": "t", "content": 1})

    assert_error(response, 500, "internal_error")


async def test_token_is_required_when_set(broker: mqctl.Broker) -> None:
    """With settings.token, publishing needs 'Authorization: Bearer <token>'; /health and /ready do not."""
    async with client_for(create_app(make_settings(token="let-me-in"), broker=broker)) as client:
        missing = await client.post("/messages", json={"type": "t", "content": 1})
        wrong = await client.post(
            "/messages/batch", json={"messages": [{"type": "t", "content": 1}]}, headers={"Authorization": "Bearer no"}
        )
        right = await client.post(
            "/messages", json={"type": "t", "content": 1}, headers={"Authorization": "Bearer let-me-in"}
        )
        health = await client.get("/health")
        ready = await client.get("/ready")
        schema = (await client.get("/openapi.json")).json()

    for response in (missing, wrong):
        assert_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 202
    assert health.status_code == ready.status_code == 200
    assert "401" in schema["paths"]["/messages"]["post"]["responses"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


# -- OpenAPI and Swagger ----------------------------------------------------------------------------


async def test_openapi_documents_publish_with_errors_and_example(client: httpx.AsyncClient) -> None:
    """/openapi.json lists POST /messages untagged, with its example and every error response."""
    schema = (await client.get("/openapi.json")).json()

    assert schema["info"]["title"] == "mqctl Service A"
    for path in ("/messages", "/messages/batch"):
        operation = schema["paths"][path]["post"]
        assert "tags" not in operation
        assert "401" not in operation["responses"]  # no token configured
        assert {"202", "400", "413", "415", "422", "500", "503"} <= operation["responses"].keys()
        for status in ("400", "413", "415", "422", "500", "503"):
            content = operation["responses"][status]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
        assert "Retry-After" in operation["responses"]["503"]["headers"]
    post = schema["paths"]["/messages"]["post"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert all(set(e["value"]) <= {"type", "content", "headers"} for e in examples.values())
    assert {"error", "detail", "fields"} <= schema["components"]["schemas"]["ErrorResponse"]["properties"].keys()
    assert schema["components"]["schemas"]["PublishRequest"]["additionalProperties"] is False
    assert "503" in schema["paths"]["/ready"]["get"]["responses"]


async def test_openapi_example_is_accepted_as_is(client: httpx.AsyncClient) -> None:
    """Every documented request example publishes with 202, as Swagger's 'Try it out' would send it."""
    schema = (await client.get("/openapi.json")).json()
    single = schema["paths"]["/messages"]["post"]["requestBody"]["content"]["application/json"]["examples"]
    batch_examples = schema["components"]["schemas"]["BatchRequest"]["examples"]

    for example in single.values():
        assert (await client.post("/messages", json=example["value"])).status_code == 202
    for example in batch_examples:
        assert (await client.post("/messages/batch", json=example)).status_code == 202


async def test_publish_paths_are_served_by_lean_routes_ahead_of_the_documented_ones(broker: mqctl.Broker) -> None:
    """POST /messages(/batch) first match plain Starlette routes; FastAPI's routes of the same paths only document."""
    app = create_app(make_settings(), broker=broker)
    for path in ("/messages", "/messages/batch"):
        matching = [route for route in app.routes if isinstance(route, Route) and route.path == path]
        assert [type(route) for route in matching] == [Route, APIRoute]
        assert app.routes.index(matching[0]) < app.routes.index(matching[1])


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/messages", {"type": "t", "content": {"a": 1}, "headers": {"h": "v"}, "topic": "other"}, {}),
        ("/messages", {"type": "t", "content": 1}, {"Idempotency-Key": "k"}),
        ("/messages", {"type": "", "content": 1, "extra": 2}, {"Idempotency-Key": ""}),
        ("/messages", None, {"Content-Type": "text/plain"}),
        ("/messages/batch", {"messages": [{"type": "t", "content": 1}, {"type": "u"}]}, {}),
        ("/messages/batch", {"messages": []}, {}),
    ],
)
async def test_documented_route_answers_as_the_served_one(
    path: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> None:
    """The FastAPI route behind the served one calls the same handler: with the served route gone, answers match."""
    answers = []
    for served in (True, False):
        memory = mqctl.open_broker(f"memory://test-{uuid.uuid4().hex}", max_backlog=100, max_message_bytes=512)
        app = create_app(make_settings(), broker=memory)
        if not served:
            app.router.routes[:] = [r for r in app.routes if isinstance(r, APIRoute) or getattr(r, "path", "") != path]
        async with client_for(app) as client:
            content = b"hello" if body is None else json.dumps(body).encode()
            response = await client.post(path, content=content, headers={"Content-Type": "application/json", **headers})
        await memory.aclose()
        answers.append((response.status_code, {**response.json(), "id": None, "ids": None}))
    assert answers[0] == answers[1]


async def test_documented_body_and_header_are_what_the_served_route_checks(client: httpx.AsyncClient) -> None:
    """The schema names the body models the served routes validate, and Idempotency-Key's limits are enforced."""
    schema = (await client.get("/openapi.json")).json()
    components = schema["components"]["schemas"]
    for path, model in (("/messages", PublishRequest), ("/messages/batch", BatchRequest)):
        body = schema["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model.__name__}"}
        documented = components[model.__name__]
        assert documented["properties"].keys() == model.model_fields.keys()
        assert set(documented["required"]) == {n for n, f in model.model_fields.items() if f.is_required()}
    assert components["BatchRequest"]["properties"]["messages"]["items"] == {"$ref": "#/components/schemas/NewMessage"}
    (header,) = schema["paths"]["/messages"]["post"]["parameters"]
    assert (header["name"], header["in"], header["required"]) == ("Idempotency-Key", "header", False)
    limits = header["schema"]["anyOf"][0]
    message = {"type": "t", "content": 1}

    for length, status in ((limits["minLength"], 202), (limits["maxLength"], 202), (limits["maxLength"] + 1, 422)):
        response = await client.post("/messages", json=message, headers={"Idempotency-Key": "k" * length})
        assert response.status_code == status, response.text
    refused = await client.post("/messages", json={**message, "unknown": 1})
    assert assert_error(refused, 422, "invalid_request")["fields"][0]["field"] == "unknown"
    assert components["PublishRequest"]["additionalProperties"] is False


async def test_docs_serves_swagger_ui(client: httpx.AsyncClient) -> None:
    """/docs returns the Swagger UI page pointing at /openapi.json."""
    response = await client.get("/docs")

    assert response.status_code == 200
    assert "swagger-ui" in response.text
    assert "/openapi.json" in response.text


# -- real Redis ----------------------------------------------------------------------------------------


@pytest.fixture
async def local_redis() -> AsyncIterator[aioredis.Redis]:
    """A client for the Redis at 127.0.0.1:6379; the test is skipped when none answers."""
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=0.5, socket_timeout=2)
    try:
        await client.ping()
    except (aioredis.RedisError, OSError):
        await client.aclose()
        pytest.skip("No Redis answers at 127.0.0.1:6379.")
    yield client
    await client.aclose()


@pytest.mark.redis
async def test_publish_reaches_a_real_redis_stream(local_redis: aioredis.Redis) -> None:
    """Against a real Redis, a 202 means the message is in the topic's stream under its id."""
    prefix = f"mqtest-ingest-{uuid.uuid4().hex}"
    real = mqctl.open_broker("redis://127.0.0.1:6379/0", prefix=prefix)
    try:
        async with client_for(create_app(make_settings(broker_url="redis://127.0.0.1:6379/0"), broker=real)) as client:
            response = await client.post("/messages", json={"type": "order.created", "content": {"id": 7}})
            ready = await client.get("/ready")
        entries = await local_redis.xrange(Keyspace(prefix).stream(TOPIC))
    finally:
        await real.aclose()
        keys = [key async for key in local_redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await local_redis.delete(*keys)

    assert response.status_code == 202, response.text
    assert ready.status_code == 200
    [(entry_id, fields)] = entries
    assert entry_id.decode() == response.json()["id"]
    payloads = [value for value in fields.values() if value.startswith(b"{")]
    assert [json.loads(p) for p in payloads] == [{"type": "order.created", "content": {"id": 7}, "headers": {}}]
