"""Service B's message frames spliced from the stored bytes: the same text ``message_frame`` makes,
the content sent exactly as stored, and what mqctl did not write built the long way; memory and Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mqctl.core.backend import Limits, Outgoing
from mqctl.core.message import Message, decode_verbatim, encode
from mqctl.core.subscription import Delivery
from mqctl.services.delivery.frames import frame_of, message_frame
from tests.unit.services.test_delivery import Service, receive, receive_text, subscribed

ODD = {"é": "ü\u2028", "quote": 'a"b\\c', "n": [1, -2.5, None, True], "ctl": "\x01\t"}


def store(service: Service, payload: bytes) -> str:
    """Write ``payload`` to the topic as it is, as another program could, and return its id."""
    limits = Limits(max_backlog=None, retention=10_000, idempotency_window_s=60.0, default_group="default")
    assert service.client.portal is not None
    ((entry_id,),) = service.client.portal.call(
        service.broker.backend.add, service.settings.topic, [[Outgoing(payload)]], limits
    )
    return str(entry_id)


def check_frames_as_message_frame_makes_them(service: Service) -> None:
    with service.connect("auto_ack=true") as ws:
        subscribed(ws)
        entry_id = service.publish("job", ODD, {"h": "v"})
        text = receive_text(ws)
        stored_id = store(service, b'{"type":"x","content":1.50,"headers":{}}')
        spliced = receive_text(ws)
    message = Message("job", ODD, {"h": "v"})
    assert text == message_frame(entry_id, message, attempt=1, topic=service.settings.topic)
    # Not decoded and encoded again: the content goes out as it was stored (1.50, not 1.5).
    topic = json.dumps(service.settings.topic)
    assert spliced == f'{{"id":"{stored_id}","type":"x","content":1.50,"headers":{{}},"attempt":1,"topic":{topic}}}'


def test_a_spliced_frame_is_the_text_message_frame_makes(service: Service) -> None:
    """A message mqctl stored comes in the very frame message_frame would build (escapes included)."""
    check_frames_as_message_frame_makes_them(service)


@pytest.mark.redis
def test_a_spliced_frame_is_the_text_message_frame_makes_on_redis(redis_service: Service) -> None:
    """The same on a real Redis."""
    check_frames_as_message_frame_makes_them(redis_service)


def check_what_mqctl_did_not_write(service: Service) -> None:
    huge = 2**80  # beyond 64 bits: sent exactly, not as a float
    foreign = [
        (b'{"type":"x","content":1,"headers":{},"id":"forged","attempt":9}', {"content": 1}),
        (b'{"type":"x","content":2}', {"content": 2, "headers": {}}),
        (b'{"type":"x","content":3,"headers":null}', {"content": 3, "headers": {}}),
        (b'{"type": "x", "content": 4, "headers": {}}  ', {"content": 4}),
        (f'{{"type":"x","content":{huge},"headers":{{}}}}'.encode(), {"content": huge}),
    ]
    with service.connect("auto_ack=true") as ws:
        subscribed(ws)
        ids = [store(service, payload) for payload, _ in foreign]
        frames = [receive(ws) for _ in foreign]
    for entry_id, frame, (_, expected) in zip(ids, frames, foreign, strict=True):
        assert frame["id"] == entry_id and frame["attempt"] == 1 and frame["topic"] == service.settings.topic
        assert frame["type"] == "x"
        assert {key: frame[key] for key in expected} == expected


def test_frames_of_payloads_mqctl_did_not_write_say_what_mqctl_says(service: Service) -> None:
    """Stored by another program: extra keys (a forged id among them) never reach the client,
    a missing or null headers is an empty object, spaces are fine, a huge integer stays exact."""
    check_what_mqctl_did_not_write(service)


@pytest.mark.redis
def test_frames_of_payloads_mqctl_did_not_write_on_redis(redis_service: Service) -> None:
    """The same on a real Redis."""
    check_what_mqctl_did_not_write(redis_service)


@pytest.mark.parametrize(
    ("payload", "verbatim"),
    [
        (encode(Message("job", ODD, {"h": "v"})), True),
        (b'{"type":"x","headers":{},"content":1}', True),  # another order of the same three keys
        (b'{"type":"x","content":1,"headers":{},"id":"forged"}', False),
        (b'{"type":"x","content":1}', False),
        (b'{"type":"x","content":1,"headers":null}', False),
        (b' {"type":"x","content":1,"headers":{}}', False),
        (b'{"type":"x","content":1,"headers":{}} ', False),
        ('{"type":"x","content":1,"headers":{}}', False),  # text, not the stored bytes
    ],
)
def test_decode_verbatim_says_when_a_frame_can_be_spliced(payload: Any, verbatim: bool) -> None:
    """Only one JSON object of exactly type, content and headers, opening with type and closing
    with its brace, is spliced."""
    message, spliceable = decode_verbatim(payload)
    assert spliceable is verbatim
    assert message.type in ("job", "x")


def test_frame_of_escapes_an_id_that_needs_it() -> None:
    """An id with a quote (no backend makes one today) still makes valid JSON."""
    payload = encode(Message("job", 1))
    delivery = Delivery('7-"0', decode_verbatim(payload)[0], 2, "t", "g", None, payload=payload)  # type: ignore[arg-type]
    assert json.loads(frame_of(delivery)) == {
        "id": '7-"0',
        "type": "job",
        "content": 1,
        "headers": {},
        "attempt": 2,
        "topic": "t",
    }
