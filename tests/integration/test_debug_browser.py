"""The debug dashboard, in a real headless Chromium (Debian's, driven by Playwright): the
page, its login, what other sites can (not) do to it, and its HTTP rules."""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pb
from tests.integration.gateway_helpers import (
    dashboard_session,
    request,
    token_of,
    use_free_ports,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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


def login_link(pb: Pb) -> str:
    return pb("debug", "url", check=True).out.strip()


def test_dashboard_shows_a_run_live_and_its_output(pb: Pb, page: Any) -> None:
    from playwright.sync_api import expect

    use_free_ports(pb)
    assert pb("service", "start", "all").code == 0
    assert pb("job", "add", "hello", "--every", "1h", "--", "echo", "hello").code == 0
    link = login_link(pb)
    page.goto(link)
    # The one-time code leaves the address bar (and the history) at once.
    expect(page.locator("#scope")).to_have_text("admin")
    assert "#login" not in page.url

    for name in ("gateway", "scheduler", "debug"):
        expect(page.locator(f"#services tr[data-service={name}] .service-state")).to_have_text(
            "running"
        )
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

    # Pause and resume go through the gateway (the page never has its token).
    job.locator("button[data-action=pause]").click()
    expect(job.locator(".enabled")).to_have_text("paused")
    job.locator("button[data-action=resume]").click()
    expect(job.locator(".enabled")).to_have_text("yes")
    assert token_of(pb.home) not in page.content()
    log = (pb.home / "gateway.log").read_text()
    assert "Job hello paused by dashboard (session from a login link, admin) as root" in log

    # A reload keeps the session (sessionStorage of this tab).
    page.reload()
    expect(page.locator("#scope")).to_have_text("admin")
    expect(job).to_contain_text("every 1h")

    # The live feed survives a gateway restart; while it is down no data is shown.
    assert pb("gateway", "stop").code == 0
    expect(page.locator("#feed-state")).to_contain_text("gateway down", timeout=15_000)
    expect(page.locator("#services tr[data-service=gateway] .service-state")).not_to_have_text(
        "running", timeout=15_000
    )
    expect(page.locator("#jobs tbody tr")).to_have_count(0, timeout=15_000)
    expect(page.locator("#message")).to_contain_text("gateway is not running")
    assert pb("gateway", "start").code == 0
    expect(page.locator("#feed-state")).to_have_text("live", timeout=20_000)
    expect(page.locator("#scheduler-state")).to_contain_text("scheduler: connected", timeout=40_000)
    job.locator("button[data-action=run]").click()
    expect(finished).to_have_count(2, timeout=20_000)


def test_dashboard_login(pb: Pb, browser: Any) -> None:
    """The dashboard shows nothing before a login; a link works once; a pasted read-only
    token gives a read-only session; a rotated token ends every session."""
    from playwright.sync_api import expect

    _, debug_port = use_free_ports(pb)
    assert pb("service", "start", "all").code == 0
    assert pb("job", "add", "hello", "--every", "1h", "--", "true").code == 0
    dashboard = f"http://127.0.0.1:{debug_port}/"
    first, second, third = (browser.new_context() for _ in range(3))
    try:
        page = first.new_page()
        page.goto(dashboard)
        expect(page.locator("#login")).to_be_visible()
        expect(page.locator("#dashboard")).to_be_hidden()
        assert page.locator("#jobs tbody tr").count() == 0

        link = login_link(pb)
        page.goto(link)
        expect(page.locator("#scope")).to_have_text("admin")
        expect(page.locator("#jobs tr[data-job=hello] button[data-action=run]")).to_be_visible()

        # The same link, in another browser: used up.
        other = second.new_page()
        other.goto(link)
        expect(other.locator("#message")).to_contain_text("Login failed")
        expect(other.locator("#dashboard")).to_be_hidden()
        # A session lives in one tab's storage, bound to this origin: a new context has
        # none, even on the same origin.
        assert other.evaluate("sessionStorage.length") == 0

        # The read-only token: it can look, not act.
        reader = third.new_page()
        reader.goto(dashboard)
        reader.fill("#login-token", token_of(pb.home, "read"))
        reader.click("#login-form button")
        expect(reader.locator("#scope")).to_have_text("read-only")
        expect(reader.locator("#jobs tr[data-job=hello]")).to_contain_text("every 1h")
        expect(reader.locator("#jobs button")).to_have_count(0)
        session = reader.evaluate("sessionStorage.getItem('pony-scheduler.session')")
        status, body, _ = request(debug_port, "POST", "/api/jobs/hello/run", token=session)
        assert status == 403 and "may only read" in body["error"]

        # A wrong token is refused.
        other.fill("#login-token", "not-a-token")
        other.click("#login-form button")
        expect(other.locator("#message")).to_contain_text("Login failed")

        # Rotation ends every session: both pages fall back to the login.
        assert pb("gateway", "token", "--rotate").code == 0
        for ended in (page, reader):
            expect(ended.locator("#login")).to_be_visible(timeout=20_000)
            expect(ended.locator("#message")).to_contain_text("session ended")
            expect(ended.locator("#jobs tbody tr")).to_have_count(0)
        assert json.loads(pb("runs", "--json").out) == []
    finally:
        for context in (first, second, third):
            context.close()


class EvilSite:
    """Another origin (a web page the user visits), on another port of 127.0.0.1."""

    def __init__(self, html: str) -> None:
        body = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_other_sites_cannot_drive_or_frame_the_dashboard(pb: Pb, page: Any) -> None:
    """CSRF and clickjacking, in the browser the user is logged in with."""
    from playwright.sync_api import expect

    _, debug_port = use_free_ports(pb)
    assert pb("service", "start", "all").code == 0
    assert pb("job", "add", "hello", "--every", "1h", "--", "true").code == 0
    page.goto(login_link(pb))
    expect(page.locator("#scope")).to_have_text("admin")
    action = f"http://127.0.0.1:{debug_port}/api/jobs/hello/run"
    evil = EvilSite(f"""<!doctype html><title>evil</title>
<iframe id="frame" src="http://127.0.0.1:{debug_port}/"></iframe>
<form id="form" method="POST" action="{action}" enctype="text/plain">
<input name='{{"x":"' value='"}}'></form>""")
    try:
        page.goto(f"http://127.0.0.1:{evil.port}/")
        # Framing is refused (X-Frame-Options: DENY, frame-ancestors 'none').
        page.wait_for_load_state("load")
        framed = [f for f in page.frames if f != page.main_frame]
        assert framed and all(f.url.startswith("chrome-error://") for f in framed), [
            f.url for f in framed
        ]
        # A script of that page: no credential to send, none sent for it.
        answer = page.evaluate(f"""async () => {{
            const r = await fetch("{action}", {{method: "POST", mode: "no-cors",
                                                headers: {{"X-Pony-Dashboard": "1"}}}});
            return r.type; }}""")
        assert answer == "opaque"
        # A form posted across sites: refused (no session, and its Origin is another site).
        with page.expect_navigation():
            page.evaluate("document.getElementById('form').submit()")
        assert '"status": 403' in page.content() or '"status": 401' in page.content()
    finally:
        evil.close()
    assert json.loads(pb("runs", "--json").out) == []


def test_dashboard_http_rules(pb: Pb) -> None:
    _, debug_port = use_free_ports(pb)
    assert pb("service", "start", "debug").code == 0
    status, body, _ = request(debug_port, "GET", "/api/health")
    assert status == 401 and "log in first" in body["error"]
    session = dashboard_session(pb, debug_port)
    status, body, _ = request(debug_port, "GET", "/api/health", token=session)
    assert status == 200 and body["service"] == "debug" and body["gateway"] is None
    status, body, headers = request(debug_port, "GET", "/")
    assert status == 200 and "debug dashboard" in body
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    status, body, _ = request(debug_port, "GET", "/api/jobs", token=session)
    assert status == 503 and body["gatewayDown"] is True
    assert "the gateway is not running" in body["error"] and "pb gateway start" in body["error"]

    assert pb("service", "start", "all").code == 0
    assert pb("job", "add", "hello", "--every", "1h", "--", "true").code == 0
    status, body, _ = request(debug_port, "GET", "/api/health", token=session)
    assert body["gateway"] == str(pb.home / "gateway.api.sock")
    action = "/api/jobs/hello/pause"
    # The dashboard lends nothing to a caller without a session, whatever its headers ...
    for headers in ({}, {"X-Pony-Dashboard": "1"}):
        status, body, _ = request(debug_port, "POST", action, headers=headers)
        assert status == 401 and "log in first" in body["error"]
    # ... answers no name that merely rebinds to 127.0.0.1 (DNS rebinding) ...
    status, body, _ = request(
        debug_port,
        "GET",
        "/api/jobs",
        token=session,
        headers={"Host": f"evil.example:{debug_port}"},
    )
    assert status == 403 and "loopback" in body["error"]
    # ... and refuses a request a page of another site makes.
    status, body, _ = request(
        debug_port, "POST", action, token=session, headers={"Origin": "http://127.0.0.1:1"}
    )
    assert status == 403 and "other sites" in body["error"]
    status, body, _ = request(
        debug_port,
        "POST",
        action,
        token=session,
        headers={"Origin": f"http://127.0.0.1:{debug_port}"},
    )
    assert status == 200 and body["enabled"] is False
    status, body, _ = request(debug_port, "POST", "/api/jobs/hello/explode", token=session)
    assert status == 404 and "unknown action" in body["error"]
    status, body, _ = request(debug_port, "GET", "/api/services", token=session)
    assert [s["running"] for s in body["services"]] == [True, True, True]
    # A login is JSON only (a cross-site form cannot send it).
    status, body, _ = request(
        debug_port,
        "POST",
        "/api/login",
        body=b"code=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415
    status, body, _ = request(debug_port, "POST", "/api/logout", token=session)
    assert status == 200
    assert request(debug_port, "GET", "/api/jobs", token=session)[0] == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_dashboard_refuses_a_network_address(pb: Pb, home: Path, host: str) -> None:
    use_free_ports(pb)
    for command in ("start", "restart"):
        result = pb("debug", command, "--host", host, "--timeout", "10")
        # Before the fork: one line, exit 2 (it was a failed start with the log's tail).
        assert result.code == 2 and result.err.count("\n") == 1, result.all
        assert result.err.startswith(
            "Error: --host: the debug dashboard listens on loopback addresses only"
        )
    # Set in the environment, the message names the variable, not a flag.
    result = pb("debug", "start", "--timeout", "10", env={"PONYBUNNY_DEBUG_HOST": host})
    assert result.code == 2 and result.err.startswith(
        "Error: PONYBUNNY_DEBUG_HOST: the debug dashboard listens on loopback"
    ), result.all
    assert not (home / "debug.pid").exists()


def test_a_host_flag_is_named_as_given(pb: Pb) -> None:
    """`pb debug start --host` is named --host in its error, not --debug-host (review)."""
    for group in ("debug", "gateway"):
        result = pb(group, "start", "--host", "a\x01b")
        assert result.code == 2, result.all
        assert result.err == "Error: --host must not contain control characters, not 'a\\x01b'\n"
