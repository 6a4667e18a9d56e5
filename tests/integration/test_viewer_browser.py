"""The services' pages in a real headless Chromium (Debian's), fed by serve-a and serve-b processes:
Service B's viewer, and Service A's Swagger UI with no network beyond loopback."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.conftest import Service
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(120)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_path() -> str:
    found = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(found, os.X_OK):
        pytest.fail(
            "Debian's chromium is not installed, and the viewer's browser test needs it: "
            "run `apt-get install -y chromium` (.ci/run does so when it is missing)."
        )
    return found


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by playwright (which downloads no browser of its own)."""
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_path()
    expect.set_options(timeout=15_000)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def system(redis_server: RedisServer, start_service) -> tuple[Service, Service]:
    """Service A and Service B on one private Redis, B with a short poll cycle."""
    a = start_service("serve-a", "--broker", redis_server.url)
    b = start_service("serve-b", "--broker", redis_server.url, "--poll-interval", "0.5")
    return a, b


def publish(a: Service, type_: str, content: Any) -> str:
    response = httpx.post(f"{a.http}/messages", json={"type": type_, "content": content}, timeout=10)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["id"]
    return message_id


def test_viewer_shows_messages_live_with_filter_pause_and_a_bounded_table(
    system: tuple[Service, Service], browser: Any, tmp_path: Path
) -> None:
    """A message published through Service A appears on B's page; the filter, pause and the latest-N cap work."""
    from playwright.sync_api import expect

    a, b = system
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.goto(f"{b.http}/?keep=5")
    expect(page.locator("#state")).to_have_text("live")

    first = publish(a, "greeting", {"text": "hello from the browser test"})
    row = page.locator(f"tr[data-id='{first}']")
    expect(row).to_contain_text("hello from the browser test")
    expect(row).to_contain_text("greeting")
    expect(row.locator("td").nth(4)).to_have_text("1")  # attempt

    publish(a, "order.created", {"order": 7})
    expect(page.locator("#rows tr")).to_have_count(2)
    page.fill("#filter", "greet")
    expect(page.locator("#rows tr")).to_have_count(1)
    expect(page.locator("#rows tr").first).to_have_attribute("data-type", "greeting")
    page.fill("#filter", "")
    expect(page.locator("#rows tr")).to_have_count(2)

    page.click("#pause")
    held = publish(a, "note", "sent while paused")
    expect(page.locator("#paused-note")).to_have_text("1 new while paused")
    expect(page.locator(f"tr[data-id='{held}']")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "viewer-paused.png"))
    page.click("#pause")
    expect(page.locator(f"tr[data-id='{held}']")).to_contain_text("sent while paused")

    latest = [publish(a, "tick", n) for n in range(6)]
    expect(page.locator("#rows tr")).to_have_count(5)  # keeps the latest 5 only
    expect(page.locator("#rows tr").first).to_have_attribute("data-id", latest[-1])
    expect(page.locator("#count")).to_have_text("9")
    page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
    assert (tmp_path / "viewer.png").stat().st_size > 10_000


def test_viewer_reconnects_and_resumes_without_gaps(
    system: tuple[Service, Service], browser: Any, start_service, tmp_path: Path
) -> None:
    """When Service B restarts, the page shows the reconnect and fills in what was published meanwhile, once each."""
    from playwright.sync_api import expect

    a, b = system
    page = browser.new_page(viewport={"width": 1100, "height": 500})
    page.goto(f"{b.http}/")
    expect(page.locator("#state")).to_have_text("live")
    before = publish(a, "step", "before the restart")
    expect(page.locator(f"tr[data-id='{before}']")).to_have_count(1)

    assert b.stop() == 0
    expect(page.locator("#state")).to_contain_text("disconnected")
    missed = [publish(a, "step", f"while B was down {n}") for n in range(3)]
    start_service("serve-b", "--broker", b.process.args[b.process.args.index("--broker") + 1], port=b.port)

    expect(page.locator("#reconnects")).to_have_text("1")
    expect(page.locator("#state")).to_have_text("live (reconnected)")
    after = publish(a, "step", "after the restart")
    expect(page.locator(f"tr[data-id='{after}']")).to_have_count(1)
    ids = page.locator("#rows tr").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert ids == [after, *reversed(missed), before], "a gap or a duplicate after the reconnect"
    page.screenshot(path=str(tmp_path / "viewer-reconnected.png"), full_page=True)


def test_swagger_ui_renders_without_internet_and_shows_post_messages_with_its_example(
    system: tuple[Service, Service], browser: Any
) -> None:
    """/docs with every request off loopback refused (as on a machine without internet): Swagger UI
    renders from the package's own assets and shows POST /messages with its example body."""
    from playwright.sync_api import expect

    a, _ = system
    refused: list[str] = []

    def loopback_only(route: Any) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    context = browser.new_context()
    context.route("**/*", loopback_only)
    page = context.new_page()
    page.goto(f"{a.http}/docs")
    operation = page.locator(".opblock-post").filter(has=page.locator('[data-path="/messages"]'))
    expect(operation).to_be_visible()
    expect(operation).to_contain_text("Publish one message")
    operation.locator(".opblock-summary").click()
    expect(operation.locator(".opblock-body")).to_contain_text("order.created")  # the example body
    assert refused == [], f"the page asked for assets off this machine: {refused}"
    context.close()
