"""A Redis that refuses mqctl, set up for real in each way it can: a publish through the library
raises mqctl's error with Redis's own answer in it, Service A answers 503 broker_refused (or
broker_unavailable for what passes by itself) with that answer in the detail and never a 500,
and the start-up check logs one line saying what Redis answered and what to do."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import redis

import mqctl
from mqctl.config import Settings
from mqctl.services.ingest import create_app
from mqctl.services.startup import broker_for, check_broker
from tests.integration.conftest import Service
from tests.servers import RedisServer, non_loopback_address, wait_for

pytestmark = pytest.mark.timeout(60)


@dataclass
class Refusing:
    """A Redis set up to refuse, the URL mqctl is given, and what mqctl must say."""

    url: str
    error: type[mqctl.BrokerUnavailable]
    code: str
    said: str
    """Redis's own words, which must reach the user."""
    advice: str
    """Part of what mqctl tells the user to do."""
    servers: list[RedisServer] = field(default_factory=list)


def _protected_mode() -> Refusing:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no IPv4 address outside 127.0.0.0/8 to connect from")
    server = RedisServer(extra=["--bind", f"127.0.0.1 {address}", "--protected-mode", "yes"]).start()
    return Refusing(
        f"redis://{address}:{server.port}/0",
        mqctl.BrokerRefused,
        "broker_refused",
        "DENIED",
        "--protected-mode no",
        [server],
    )


def _no_password() -> Refusing:
    server = RedisServer(extra=["--requirepass", "s3cret"])
    server.start(until=server.listening)
    return Refusing(server.url, mqctl.BrokerRefused, "broker_refused", "NOAUTH", "password in the URL", [server])


def _wrong_password() -> Refusing:
    server = RedisServer(extra=["--requirepass", "s3cret"])
    server.start(until=server.listening)
    url = f"redis://:wrong@127.0.0.1:{server.port}/0"
    return Refusing(url, mqctl.BrokerRefused, "broker_refused", "WRONGPASS", "password in the URL", [server])


def _acl_without_our_keys() -> Refusing:
    server = RedisServer().start()
    admin = redis.Redis(port=server.port)
    admin.execute_command("ACL", "SETUSER", "mq", "on", ">pw", "~other:*", "&*", "+@all")
    admin.close()
    url = f"redis://mq:pw@127.0.0.1:{server.port}/0"
    return Refusing(url, mqctl.BrokerRefused, "broker_refused", "NOPERM", "ACL SETUSER", [server])


def _replica() -> Refusing:
    master = RedisServer().start()
    replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(master.port)]).start()
    return Refusing(replica.url, mqctl.BrokerUnavailable, "broker_unavailable", "READONLY", "master", [replica, master])


def _disk_it_cannot_save_to() -> Refusing:
    server = RedisServer(extra=["--save", "3600 1"]).start()
    shutil.rmtree(server.dir)  # the snapshot below cannot be written: Redis then refuses writes
    admin = redis.Redis(port=server.port)
    admin.bgsave()
    wait_for(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 10, "the snapshot to fail")
    admin.close()
    return Refusing(server.url, mqctl.BrokerRefused, "broker_refused", "MISCONF", "disk", [server])


def _loading() -> Refusing:
    server = RedisServer().start()
    admin = redis.Redis(port=server.port)
    admin.mset({f"k{i}": i for i in range(5000)})
    admin.save()
    admin.close()
    server.kill()
    # 5 ms a key: the server answers -LOADING (within a few tenths of a second) for about 20 s.
    server.extra = ["--key-load-delay", "5000", "--loading-process-events-interval-bytes", "1024"]
    server.start(until=lambda: server.answers(b"-LOADING"))
    return Refusing(server.url, mqctl.BrokerUnavailable, "broker_unavailable", "LOADING", "loading", [server])


def _no_such_database() -> Refusing:
    server = RedisServer().start()
    url = f"redis://127.0.0.1:{server.port}/99"
    return Refusing(url, mqctl.BrokerRefused, "broker_refused", "DB index is out of range", "database number", [server])


CASES: dict[str, Callable[[], Refusing]] = {
    "protected mode": _protected_mode,
    "no password": _no_password,
    "wrong password": _wrong_password,
    "ACL without our keys": _acl_without_our_keys,
    "read-only replica": _replica,
    "disk it cannot save to": _disk_it_cannot_save_to,
    "loading": _loading,
    "no such database": _no_such_database,
}


@pytest.fixture(params=list(CASES))
def refusing(request: pytest.FixtureRequest) -> Iterator[Refusing]:
    case = CASES[request.param]()
    try:
        yield case
    finally:
        _stop(case)


def _stop(case: Refusing) -> None:
    for server in case.servers:
        server.kill()  # a loading Redis would finish loading before it heeds SIGTERM
        server.stop()


PUBLISH_TIMEOUT_S = 2.5
"""A retried refusal (READONLY, LOADING) is raised when this passes, with Redis's last answer; on a
loaded machine a 1 s deadline could pass before the first answer came (a CI run under load)."""


def _settings(url: str) -> Settings:
    return Settings(broker_url=url, publish_timeout_s=PUBLISH_TIMEOUT_S, token=None)


async def test_a_publish_raises_what_redis_answered(refusing: Refusing, mocker: pytest.MockFixture) -> None:
    """The library raises BrokerRefused (at once: no retry) or BrokerUnavailable (retried to the
    deadline) with Redis's answer and what to do in the message."""
    async with mqctl.connect(refusing.url, publish_timeout_s=PUBLISH_TIMEOUT_S) as broker:
        store = broker.backend.store.backend  # type: ignore[attr-defined]  # the RedisStore under the partitions
        calls = [mocker.spy(store, name) for name in ("partitions", "add")]
        with pytest.raises(refusing.error) as raised:
            await broker.publish("orders", {"type": "t"})
    assert refusing.said in str(raised.value) and refusing.advice in str(raised.value), str(raised.value)
    if refusing.error is mqctl.BrokerRefused:
        assert sum(spy.call_count for spy in calls) == 1, "a refusal was retried"


async def test_service_a_answers_503_with_redis_s_reason(refusing: Refusing) -> None:
    """POST /messages answers 503 with the error code and Redis's answer in the detail, not a 500."""
    settings = _settings(refusing.url)
    broker = broker_for(settings)
    try:
        transport = httpx.ASGITransport(app=create_app(settings, broker=broker))
        async with httpx.AsyncClient(transport=transport, base_url="http://service-a") as client:
            response = await client.post("/messages", json={"type": "t", "content": 1})
            ready = await client.get("/ready")
    finally:
        await broker.aclose()
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == refusing.code and refusing.said in body["detail"], body
    assert "retry-after" in response.headers
    assert ready.status_code == 503 and refusing.said in ready.json()["detail"], ready.text


async def test_the_start_up_check_logs_one_line_with_what_to_do(
    refusing: Refusing, caplog: pytest.LogCaptureFixture
) -> None:
    """check_broker logs one ERROR line that names Redis's answer and what to do, and returns it."""
    broker = broker_for(_settings(refusing.url))
    try:
        with caplog.at_level(logging.INFO, logger="mqctl.services.startup"):
            problem = await check_broker(broker, "Service A")
    finally:
        await broker.aclose()
    assert problem is not None and refusing.said in problem and refusing.advice in problem
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and problem in errors[0].getMessage()


async def test_the_start_up_check_is_quiet_on_a_redis_that_takes_writes(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that answers and takes writes gets no error line (only the eviction check runs)."""
    broker = broker_for(_settings(redis_server.url))
    try:
        with caplog.at_level(logging.INFO, logger="mqctl.services.startup"):
            assert await check_broker(broker, "Service A") is None
    finally:
        await broker.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_serve_a_on_a_protected_redis_says_so_and_answers_503(start_service: Callable[..., Service]) -> None:
    """The compose scenario: serve-a on a Redis in protected mode logs the line at start and
    answers POST /messages with 503 broker_refused (it answered 500 internal_error before)."""
    case = _protected_mode()
    try:
        a = start_service("serve-a", "--broker", case.url)
        response = httpx.post(f"{a.http}/messages", json={"type": "t", "content": 1}, timeout=10)
        assert response.status_code == 503 and response.json()["error"] == "broker_refused", response.text
        wait_for(lambda: "cannot use its broker" in a.log(), 10, "the start-up check's line")
        line = next(line for line in a.log().splitlines() if "cannot use its broker" in line)
        assert "DENIED" in line and "--protected-mode no" in line, line
        assert "Traceback" not in a.log(), a.log()
    finally:
        _stop(case)
