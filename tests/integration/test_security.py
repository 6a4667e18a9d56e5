"""Security: token auth on both services, Redis ACL users and TLS through the library,
and no secret in logs or error responses."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import mqctl
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.timeout(90)

TOKEN = "s3cret-token-" + uuid.uuid4().hex[:8]


def mqctl_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "mqctl", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def guarded(redis_server: RedisServer, start_service, tmp_path: Path):
    """Service A with MQCTL_TOKEN and Service B with the same token read from a token file."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    a = start_service("serve-a", "--broker", redis_server.url, env={"MQCTL_TOKEN": TOKEN})
    b = start_service(
        "serve-b", "--broker", redis_server.url, "--poll-interval", "0.5", env={"MQCTL_TOKEN_FILE": str(token_file)}
    )
    return a, b, redis_server


def stream_length(server: RedisServer, topic: str = "messages") -> int:
    return int(redis.Redis(port=server.port).xlen(f"mqctl:{{{topic}}}:stream"))


def test_service_a_refuses_requests_without_the_token(guarded) -> None:
    """Without the bearer token (or with a wrong one) Service A answers 401 and publishes nothing."""
    a, _, server = guarded
    body = {"type": "x", "content": 1}
    assert httpx.post(a.http + "/messages", json=body).status_code == 401
    wrong = httpx.post(a.http + "/messages", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "unauthorized"
    assert stream_length(server) == 0
    right = httpx.post(a.http + "/messages", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 202
    assert stream_length(server) == 1


async def test_service_b_refuses_websockets_without_the_token(guarded) -> None:
    """Without the token Service B closes the WebSocket with 1008 and delivers nothing."""
    a, b, _ = guarded
    async with httpx.AsyncClient() as client:
        await client.post(
            a.http + "/messages", json={"type": "x", "content": "secret"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    async with connect(b.ws + "?token=wrong") as ws:
        frames = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                frames.append(orjson.loads(await ws.recv()))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert not any("id" in f for f in frames), "a message was delivered without the token"
    async with connect(b.ws, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        while True:
            frame = orjson.loads(await ws.recv())
            if "id" in frame:
                assert frame["content"] == "secret"
                break


def test_cli_sends_the_token(guarded) -> None:
    """mqctl publish and mqctl listen pass MQCTL_TOKEN to the services."""
    a, b, _ = guarded
    refused = mqctl_cli("publish", "hi", "--url", a.http)
    assert refused.returncode == 1 and "401" in refused.stderr
    sent = mqctl_cli("publish", "hi", "--url", a.http, env={"MQCTL_TOKEN": TOKEN})
    assert sent.returncode == 0, sent.stderr
    got = mqctl_cli("listen", "--url", b.ws, "--count", "1", "--json", "--timeout", "15", env={"MQCTL_TOKEN": TOKEN})
    assert got.returncode == 0, got.stderr
    assert orjson.loads(got.stdout)["content"] == "hi"
    assert TOKEN not in a.log() + b.log()


@pytest.fixture
def acl_server():
    """A private Redis with an ACL user 'mq' limited to mqctl's keys, and no default user."""
    server = RedisServer(free_port())
    server.start()
    admin = redis.Redis(port=server.port)
    admin.execute_command("ACL", "SETUSER", "mq", "on", ">pa55-word", "~mqctl:*", "&*", "+@all")
    admin.execute_command("ACL", "SETUSER", "default", "off")
    yield server
    server.stop()


async def test_acl_user_in_the_url(acl_server: RedisServer) -> None:
    """A Redis ACL user and password in the URL work for publish, consume and stats."""
    url = f"redis://mq:pa55-word@127.0.0.1:{acl_server.port}/0"
    async with mqctl.connect(url) as broker:
        async with broker.subscribe("orders", poll_interval=0.1) as sub:
            message_id = await broker.publish("orders", {"type": "t", "content": 1})
            async for delivery in sub:
                assert delivery.id == message_id
                await delivery.ack()
                break
        stats = await broker.stats("orders")
        assert stats.group("default").pending == 0


async def test_wrong_acl_password_is_a_clear_error_without_the_secret(acl_server: RedisServer) -> None:
    """A wrong password raises BrokerUnavailable that names the problem and never shows the password."""
    url = f"redis://mq:wrong-Pa55@127.0.0.1:{acl_server.port}/0"
    async with mqctl.connect(url, publish_timeout_s=1) as broker:
        with pytest.raises(mqctl.BrokerUnavailable) as caught:
            await broker.publish("orders", {"type": "t"})
    assert "wrong-Pa55" not in str(caught.value)
    assert "***" in str(caught.value)


def test_broker_password_never_reaches_a_response_or_log(acl_server: RedisServer, start_service) -> None:
    """With a wrong Redis password Service A answers 503 without the password, and logs none."""
    a = start_service("serve-a", "--broker", f"redis://mq:Hunter2-{TOKEN}@127.0.0.1:{acl_server.port}/0")
    response = httpx.post(a.http + "/messages", json={"type": "x", "content": 1}, timeout=15)
    assert response.status_code == 503
    assert "Hunter2" not in response.text
    assert "Hunter2" not in a.log()


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "server.key", folder / "server.csr", folder / "server.crt"
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
        "-days",
        "1",
        "-subj",
        "/CN=mqctl-test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "1",
        "-extfile",
        str(ext),
    )
    return ca_crt, crt, key


async def test_tls_rediss_url(tmp_path: Path) -> None:
    """rediss:// reaches a TLS-only Redis, verifying its certificate against the given CA."""
    ca, crt, key = _certificates(tmp_path)
    port = free_port()
    server = RedisServer(
        port,
        extra=[
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(crt),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
        ],
    )
    # RedisServer.start() pings in plain text; wait for the TLS port with the library instead.
    server.answers = lambda: _tls_answers(port, ca)  # type: ignore[method-assign]
    server.start()
    try:
        async with mqctl.connect(f"rediss://127.0.0.1:{port}/0", ssl_ca_certs=str(ca)) as broker:
            message_id = await broker.publish("secure", {"type": "t", "content": "over tls"})
            stats = await broker.stats("secure")
            assert stats.length == 1 and stats.last_id == message_id
    finally:
        server.stop()


def _tls_answers(port: int, ca: Path) -> bool:
    try:
        return bool(redis.Redis(port=port, ssl=True, ssl_ca_certs=str(ca), socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False
