"""The debug dashboard, in a real headless Chromium (Debian's, driven by Playwright), and
its HTTP rules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pb
from tests.integration.gateway_helpers import request, token_of, use_free_ports

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):  # CI installs both: their absence there is a failure
        pytest.fail(f"{why} (CI must provide it: .ci/run installs chromium)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        _unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def test_dashboard_shows_a_run_live_and_its_output(pb: Pb, page: Any) -> None:
    from playwright.sync_api import expect

    _, debug_port = use_free_ports(pb)
    assert pb("service", "start", "all").code == 0
    assert pb("job", "add", "hello", "--every", "1h", "--", "echo", "hello").code == 0
    page.goto(f"http://127.0.0.1:{debug_port}/")

    for name in ("gateway", "scheduler", "debug"):
        expect(page.locator(f"#services tr[data-service={name}] .service-state")) \
            .to_have_text("running")
    job = page.locator("#jobs tr[data-job=hello]")
    expect(job).to_contain_text("every 1h")
    expect(page.locator("#feed-state")).to_have_text("live")
    expect(page.locator("#scheduler-state")).to_contain_text("scheduler: connected")

    # Run it: the run appears and finishes on the page by itself (events), no reload.
    job.locator("button[data-action=run]").click()
    finished = page.locator("#runs tr[data-job=hello][data-state=succeeded]")
    expect(finished).to_have_count(1, timeout=20_000)
    expect(page.locator("#events li[data-type='run.started']")).to_have_count(1)
    expect(page.locator("#events li[data-type='run.finished']")).to_contain_text("hello run")
    finished.click()
    expect(page.locator("#output")).to_have_text("hello")
    expect(page.locator("#output-title")).to_contain_text("succeeded")
    expect(job).to_contain_text("succeeded")  # the job's last result

    # Pause and resume go through the gateway with its token (the page never has it).
    job.locator("button[data-action=pause]").click()
    expect(job.locator(".enabled")).to_have_text("paused")
    job.locator("button[data-action=resume]").click()
    expect(job.locator(".enabled")).to_have_text("yes")
    assert token_of(pb.home) not in page.content()

    # The live feed survives a gateway restart.
    assert pb("gateway", "stop").code == 0
    expect(page.locator("#feed-state")).to_contain_text("gateway down", timeout=15_000)
    expect(page.locator("#services tr[data-service=gateway] .service-state")) \
        .not_to_have_text("running", timeout=15_000)
    assert pb("gateway", "start").code == 0
    expect(page.locator("#feed-state")).to_have_text("live", timeout=20_000)
    expect(page.locator("#scheduler-state")).to_contain_text("scheduler: connected",
                                                             timeout=40_000)
    job.locator("button[data-action=run]").click()
    expect(finished).to_have_count(2, timeout=20_000)


def test_dashboard_http_rules(pb: Pb) -> None:
    gateway_port, debug_port = use_free_ports(pb)
    assert pb("service", "start", "debug").code == 0
    status, body, _ = request(debug_port, "GET", "/api/health")
    assert status == 200 and body["service"] == "debug"
    assert body["gateway"] == f"http://127.0.0.1:{gateway_port}"
    status, body, _ = request(debug_port, "GET", "/")
    assert status == 200 and "debug dashboard" in body
    status, body, _ = request(debug_port, "GET", "/api/jobs")
    assert status == 502 and "is not reachable" in body["error"]
    assert "pb gateway start" in body["error"]

    assert pb("service", "start", "all").code == 0
    assert pb("job", "add", "hello", "--every", "1h", "--", "true").code == 0
    action = "/api/jobs/hello/pause"
    # Another web page cannot make the dashboard act (no custom header without CORS) ...
    status, body, _ = request(debug_port, "POST", action)
    assert status == 403 and "X-Pony-Dashboard" in body["error"]
    # ... nor reach it under a name it rebinds to 127.0.0.1 (DNS rebinding).
    status, body, _ = request(debug_port, "GET", "/api/jobs",
                              headers={"Host": f"evil.example:{debug_port}"})
    assert status == 403 and "loopback" in body["error"]
    status, body, _ = request(debug_port, "POST", action, headers={"X-Pony-Dashboard": "1"})
    assert status == 200 and body["enabled"] is False
    status, body, _ = request(debug_port, "POST", "/api/jobs/hello/explode",
                              headers={"X-Pony-Dashboard": "1"})
    assert status == 404 and "unknown action" in body["error"]
    status, body, _ = request(debug_port, "GET", "/api/services")
    assert [s["running"] for s in body["services"]] == [True, True, True]


def test_dashboard_refuses_a_network_address(pb: Pb, home: Path) -> None:
    use_free_ports(pb)
    result = pb("debug", "start", "--host", "0.0.0.0", "--timeout", "10")
    assert result.code == 1
    assert result.err.splitlines()[0].startswith(
        "✗ Debug Server failed to start: the debug dashboard listens on loopback addresses "
        "only")
    assert not (home / "debug.pid").exists()
