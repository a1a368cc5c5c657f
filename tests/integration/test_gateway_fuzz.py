"""Fuzzing the gateway's HTTP API (hypothesis) with requests drawn from the OpenAPI
description it serves: whatever the method, path, parameters, headers and body, and with
or without a token, the gateway never answers 5xx, never lets a request without a valid
token succeed, never lets the read-only token change anything, and stays up."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Pb, alive
from tests.integration.gateway_helpers import free_port, request, start_gateway, token_of

METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")


@dataclass
class Target:
    pb: Pb
    port: int
    pid: int
    admin: str
    read: str
    spec: dict[str, Any]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    home.mkdir(mode=0o700)
    pb = Pb(home)
    try:
        port = free_port()
        pid = start_gateway(pb, port)
        assert pb("scheduler", "start").code == 0
        assert pb("job", "add", "zebra", "--manual", "--", "true").code == 0
        admin = token_of(home)
        status, spec, _ = request(port, "GET", "/api/openapi.json", token=admin)
        assert status == 200 and spec["openapi"].startswith("3.")
        yield Target(pb, port, pid, admin, token_of(home, "read"), spec)
    finally:
        pb.cleanup()


def _paths(spec: dict[str, Any]) -> list[str]:
    return sorted(spec["paths"])


text = st.text(max_size=40)
names = st.one_of(st.sampled_from(["zebra", "nope", "", "..", "%2e%2e", "a/b"]), text)


@st.composite
def requests(draw: st.DrawFn, spec: dict[str, Any]) -> dict[str, Any]:
    template = draw(st.sampled_from([*_paths(spec), "/", "/api", "/api/nothing/{name}"]))
    path = re.sub(
        r"\{(\w+)\}",
        lambda m: quote(
            draw(
                st.one_of(st.integers(-10, 10**20).map(str), names) if m.group(1) == "id" else names
            ),
            safe="",
        ),
        template,
    )
    query = draw(
        st.dictionaries(
            st.sampled_from(["job", "state", "limit", "x", "token", "access_token"]),
            st.one_of(text, st.integers(-5, 5000).map(str)),
            max_size=3,
        )
    )
    credential = draw(
        st.sampled_from(["none", "admin", "read", "garbage", "basic", "empty", "random"])
    )
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["Last-Event-ID"] = draw(st.text(alphabet="0123456789abcdef-", max_size=20))
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"])
        )
    if draw(st.integers(0, 9)) == 0:
        headers["Host"] = draw(
            st.sampled_from(["evil.example", "localhost", "[::1]:1", "127.0.0.1:80"])
        )
    for name in ("X-Pony-Via", "X-Pony-Scope"):  # believed only from a Unix socket peer
        if draw(st.integers(0, 4)) == 0:
            headers[name] = draw(st.sampled_from(["dashboard", "admin", "read"]))
    body = draw(
        st.one_of(
            st.none(),
            st.binary(max_size=200),
            st.dictionaries(text, text, max_size=3).map(lambda d: json.dumps(d).encode()),
        )
    )
    return {
        "method": draw(st.sampled_from(METHODS)),
        "path": path,
        "query": query,
        "credential": credential,
        "headers": headers,
        "body": body,
        "random": draw(
            st.text(
                alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60
            )
        ),
    }


def send(target: Target, case: dict[str, Any]) -> tuple[int, str]:
    headers = dict(case["headers"])
    credential = case["credential"]
    value = {
        "admin": f"Bearer {target.admin}",
        "read": f"Bearer {target.read}",
        "garbage": f"Bearer {target.admin[:-1]}x",
        "basic": f"Basic {target.admin}",
        "empty": "Bearer ",
        "random": f"Bearer {case['random']}",
    }.get(credential)
    if value is not None:
        headers["Authorization"] = value
    url = case["path"] + (("?" + urlencode(case["query"])) if case["query"] else "")
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=20)
    try:
        connection.request(case["method"], url, body=case["body"], headers=headers)
        response = connection.getresponse()
        kind = response.getheader("Content-Type", "")
        # An event stream never ends: its status and headers are the answer.
        body = (
            "" if kind.startswith("text/event-stream") else response.read().decode(errors="replace")
        )
        return response.status, body
    finally:
        connection.close()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_5xx_and_no_unauthenticated_success(target: Target, data: st.DataObject) -> None:
    case = data.draw(requests(target.spec))
    status, body = send(target, case)
    assert status < 500, (case, status, body)
    if case["credential"] not in ("admin", "read"):
        assert not 200 <= status < 300, (case, status, body)
    if case["credential"] == "read" and case["method"] not in ("GET", "HEAD", "OPTIONS"):
        assert not 200 <= status < 300, (case, status, body)
    if status == 401:
        assert "zebra" not in body  # an answer to a stranger tells nothing of the jobs


def test_the_gateway_survived_the_fuzzing(target: Target) -> None:
    assert alive(target.pid)
    status, body, _ = request(target.port, "GET", "/api/health", token=target.read)
    assert status == 200 and body["pid"] == target.pid
    log = Path(target.pb.home / "gateway.log").read_text()
    assert "Traceback" not in log and "Error handling" not in log


def test_the_description_lists_every_route(target: Target) -> None:
    from pony_scheduler.gateway.api import Gateway, build_app

    app = build_app(Gateway.__new__(Gateway))  # routes only; never served
    routes = {resource.canonical for resource in app.router.resources()}
    assert routes == set(target.spec["paths"]), routes ^ set(target.spec["paths"])
