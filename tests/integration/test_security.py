"""Attacks by another local user (an unprivileged account, `pony-attacker`, created by the
test setup) on a scheduler run by root: through the gateway, the dashboard, an impostor
gateway, files planted in the home, and log or terminal injection.  Each test asserts that
nothing ran and nothing outside the home changed (README, SECURITY)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OtherUser, Pb, wait_for
from tests.integration.gateway_helpers import (
    EventStream,
    dashboard_session,
    free_port,
    queued_run_id,
    request,
    token_of,
    use_free_ports,
)

# A request sent by the other user: argv = port method path headers-json [body]; prints
# one JSON object {"status", "body"} (or {"error"} when it could not connect).
REQUEST = r"""
import http.client, json, sys
port, method, path, headers = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
body = sys.argv[5].encode() if len(sys.argv) > 5 else None
try:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    print(json.dumps({"status": r.status, "body": r.read(4096).decode(errors="replace")}))
except OSError as e:
    print(json.dumps({"error": type(e).__name__}))
"""

# Connect to a Unix socket: prints "connected" or the error's name.
CONNECT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1]); print("connected")
except OSError as e:
    print(type(e).__name__)
"""

# An impostor: listens on a TCP port and prints every byte anyone sends it.
LISTEN = r"""
import socket, sys, threading
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(16)
print("listening", flush=True)
def serve(conn):
    data = conn.recv(65536)
    print("GOT", repr(data), flush=True)
    conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 28\r\n'
                 b'\r\n{"jobs": [{"name": "fake"}]}')
    conn.close()
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def attack(
    user: OtherUser,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    result = user.python_code(
        REQUEST,
        str(port),
        method,
        path,
        json.dumps(headers or {}),
        *([body] if body is not None else []),
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def victim(shared_dir: Path) -> Any:
    """Root's scheduler home in a directory other users can enter, and a `pb` for it."""
    home = shared_dir / "victim"
    home.mkdir(mode=0o700)
    runner = Pb(home)
    try:
        yield runner
    finally:
        runner.cleanup()


def marker_job(pb: Pb, outside: Path) -> None:
    """A job that would leave `outside` behind if it ever ran."""
    assert pb("job", "add", "marker", "--manual", "--", "touch", str(outside)).code == 0


def no_runs(pb: Pb) -> bool:
    return json.loads(pb("runs", "--json", check=True).out) == []


# -- 1. the dashboard lends nothing; 4. reads need a token ----------------------------------------
def test_another_user_can_neither_read_nor_run_anything(
    victim: Pb, other_user: OtherUser, shared_dir: Path
) -> None:
    gateway_port, debug_port = use_free_ports(victim)
    assert victim("service", "start", "all").code == 0
    outside = shared_dir / "ran"
    marker_job(victim, outside)

    for port, method, path, headers in [
        # The confused deputy: the dashboard's old "check" was this header.
        (debug_port, "POST", "/api/jobs/marker/run", {"X-Pony-Dashboard": "1"}),
        (debug_port, "POST", "/api/jobs/marker/run", {"Authorization": "Bearer guess"}),
        (debug_port, "GET", "/api/jobs", {"X-Pony-Dashboard": "1"}),
        (debug_port, "GET", "/api/runs/1", {}),
        (debug_port, "GET", "/api/events", {}),
        (debug_port, "GET", "/api/health", {}),
        (gateway_port, "POST", "/api/jobs/marker/run", {}),
        (gateway_port, "GET", "/api/jobs", {}),
        (gateway_port, "GET", "/api/jobs/marker", {}),
        (gateway_port, "GET", "/api/runs/1", {}),
        (gateway_port, "GET", "/api/events", {}),
        (gateway_port, "GET", "/api/status", {}),
        (gateway_port, "GET", "/api/health", {}),
    ]:
        answer = attack(other_user, port, method, path, headers)
        assert answer["status"] == 401, (port, method, path, answer)
        assert "marker" not in answer["body"] and "touch" not in answer["body"]
    # A made-up login code or token opens nothing either.
    answer = attack(
        other_user,
        debug_port,
        "POST",
        "/api/login",
        {"Content-Type": "application/json"},
        json.dumps({"code": "x" * 43}),
    )
    assert answer["status"] == 401
    # The Unix sockets are the owner's alone (0600 in a 0700 home).
    for name in ("gateway.sock", "gateway.api.sock"):
        connected = other_user.python_code(CONNECT, str(victim.home / name))
        assert connected.stdout.strip() == "PermissionError", connected.stdout
    assert no_runs(victim) and not outside.exists()
    # The owner, with a session, can.
    session = dashboard_session(victim, debug_port)
    assert request(debug_port, "POST", "/api/jobs/marker/run", token=session)[0] == 202
    assert wait_for(outside.exists, 30)


def test_anonymous_read_is_an_opt_in_for_reads_only(
    victim: Pb, other_user: OtherUser, shared_dir: Path
) -> None:
    gateway_port, _ = use_free_ports(victim)
    (victim.home / "config.toml").write_text("anonymous_read = true\n")
    assert victim("gateway", "start").code == 0
    assert victim("scheduler", "start").code == 0
    outside = shared_dir / "ran"
    marker_job(victim, outside)
    answer = attack(other_user, gateway_port, "GET", "/api/jobs")
    assert answer["status"] == 200 and "marker" in answer["body"]
    answer = attack(other_user, gateway_port, "POST", "/api/jobs/marker/run")
    assert answer["status"] == 401
    answer = attack(other_user, gateway_port, "GET", "/api/jobs", {"Host": "evil.example"})
    assert answer["status"] == 403  # still no DNS rebinding
    assert "anonymous_read is on" in (victim.home / "gateway.log").read_text()
    assert no_runs(victim) and not outside.exists()


# -- 2. credentials go only to a verified gateway --------------------------------------------------
def test_the_dashboard_talks_to_no_impostor(victim: Pb, other_user: OtherUser) -> None:
    gateway_port, debug_port = use_free_ports(victim)
    assert victim("service", "start", "debug").code == 0
    assert victim("scheduler", "start").code == 0
    session = dashboard_session(victim, debug_port)
    impostor = other_user.popen(LISTEN, str(gateway_port))
    try:
        assert impostor.stdout is not None
        assert impostor.stdout.readline().strip() == "listening"
        # The gateway is down and another user listens on its port: the dashboard says
        # so, shows nothing, and sends nothing there.
        status, body, _ = request(debug_port, "GET", "/api/jobs", token=session)
        assert status == 503 and "the gateway is not running" in body["error"]
        stream = EventStream(debug_port, token=session)
        try:
            event = stream.wait_for(lambda e: e["type"] == "gateway.unreachable")
            assert "not running" in event["data"]["error"]
        finally:
            stream.close()
        # The gateway comes up on another port (not the one configured): the dashboard
        # finds it through gateway.json and its Unix socket, never the impostor's port.
        other_port = free_port()
        assert victim("gateway", "start", "--port", str(other_port)).code == 0
        status, body, _ = request(debug_port, "GET", "/api/jobs", token=session)
        assert status == 200 and body == {"jobs": []}
    finally:
        os.kill(impostor.pid, signal.SIGTERM)  # our child, by its PID
        out, _ = impostor.communicate(timeout=10)
    assert "GOT" not in out, out  # not a byte, let alone the token
    assert token_of(victim.home) not in out


def test_rotation_refuses_the_old_token_at_once(victim: Pb) -> None:
    gateway_port, debug_port = use_free_ports(victim)
    assert victim("service", "start", "gateway").code == 0
    assert victim("service", "start", "debug").code == 0
    printed = victim("gateway", "token", check=True).out.strip()
    old, read_only = token_of(victim.home), token_of(victim.home, "read")
    assert printed == old and victim("gateway", "token", "--read-only").out.strip() == read_only
    session = dashboard_session(victim, debug_port)
    assert request(debug_port, "GET", "/api/health", token=session)[0] == 200

    rotated = victim("gateway", "token", "--rotate")
    assert rotated.code == 0 and "old one is refused" in rotated.err
    new = rotated.out.strip()
    assert new != old and new == token_of(victim.home)
    assert stat.S_IMODE((victim.home / "gateway.token").stat().st_mode) == 0o600
    assert request(gateway_port, "GET", "/api/health", token=old)[0] == 401
    assert request(gateway_port, "GET", "/api/health", token=new)[0] == 200
    assert request(gateway_port, "GET", "/api/health", token=read_only)[0] == 200
    assert request(debug_port, "GET", "/api/health", token=session)[0] == 401
    # The read-only token rotates on its own.
    assert victim("gateway", "token", "--read-only", "--rotate").code == 0
    assert request(gateway_port, "GET", "/api/health", token=read_only)[0] == 401
    assert (
        request(gateway_port, "GET", "/api/health", token=token_of(victim.home, "read"))[0] == 200
    )


def test_a_same_uid_peer_needs_no_token_and_may_lower_its_scope(victim: Pb) -> None:
    use_free_ports(victim)
    assert victim("gateway", "start").code == 0
    assert victim("scheduler", "start").code == 0
    assert victim("job", "add", "hello", "--manual", "--", "true").code == 0

    def unix(method: str, path: str, headers: dict[str, str]) -> int:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(victim.home / "gateway.api.sock"))
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n"
            f"{''.join(f'{k}: {v}' + chr(13) + chr(10) for k, v in headers.items())}"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.close()
        return int(answer.split(b" ", 2)[1])

    assert unix("GET", "/api/jobs", {}) == 200
    assert unix("POST", "/api/jobs/hello/pause", {"X-Pony-Scope": "read"}) == 403
    assert unix("POST", "/api/jobs/hello/pause", {"X-Pony-Via": "dashboard"}) == 200
    log = (victim.home / "gateway.log").read_text()
    assert "Job hello paused by dashboard (session, admin) as root (uid 0)" in log


# -- 3. planted files ---------------------------------------------------------------------------
def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_a_home_belonging_to_another_user_is_refused(
    victim: Pb, other_user: OtherUser, shared_dir: Path
) -> None:
    # The other user prepares a home, with a database holding a job, where root will look.
    planted = shared_dir / "planted"
    outside = shared_dir / "ran"
    maker = Pb(planted)
    try:
        assert (
            maker("job", "add", "planted", "--every", "1s", "--", "touch", str(outside)).code == 0
        )
        assert maker("job", "run", "planted").code == 0
    finally:
        maker.cleanup()
    subprocess.run(["chown", "-R", f"{other_user.uid}:{other_user.gid}", str(planted)], check=True)
    env = {"PONYBUNNY_HOME": str(planted)}
    for args in (
        ("scheduler", "start"),
        ("service", "start", "all"),
        ("job", "list"),
        ("gateway", "start"),
        ("config", "show"),
    ):
        result = victim(*args, env=env)
        assert result.code != 0, (args, result.all)
        line = one_line(result.err)
        assert f"{planted} belongs to {other_user.name}" in line, line
        # Not "chown -R": that would adopt the planted pony.db and its job.
        assert "must not be used as it is" in line and "chown" not in line, line
    status = victim("scheduler", "status", env=env)
    assert status.code == 4 and "belongs to" in status.err
    assert not (planted / "scheduler.pid").exists() and not outside.exists()


PLANTS = {
    # name in the home -> (how to plant it, what the refusal says)
    "scheduler.log": ("symlink", "is a symbolic link"),
    "pony.db": ("symlink", "is a symbolic link"),
    "runs": ("symlink-dir", "is a symbolic link"),
    "gateway.token": ("foreign", "belongs to pony-attacker"),
    "config.toml": ("foreign", "belongs to pony-attacker"),
    "scheduler.pid": ("directory", "is a directory, not a file; remove it (rmdir"),
    "gateway.log": ("fifo", "is a FIFO (named pipe), not a file; remove it (rm"),
    # A name we do not use: never followed, but theirs, as a file of theirs would be.
    "other-link": ("symlink", "is a symbolic link that belongs to pony-attacker"),
    # A job's output directory, theirs and open to all: outputs would be written there.
    "runs/planted": ("open-directory", "belongs to pony-attacker"),
    "runs/linked": ("symlink-dir", "is a symbolic link"),
    # The run keeper's files (files.KNOWN): refused in one line, nothing started.
    **{
        name: ("symlink", "is a symbolic link")
        for name in (
            "keeper.pid",
            "keeper.json",
            "keeper.log",
            "keeper.sock",
            "keeper.journal",
            "keeper.kept",
            ".keeper.start.lock",
        )
    },
}


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_files_planted_in_the_home_are_refused(
    victim: Pb, other_user: OtherUser, shared_dir: Path, name: str
) -> None:
    """What another user left in the home while it was open to them (it was 0777; the
    owner has since closed it): a link, a file of theirs, a directory."""
    how, words = PLANTS[name]
    target = shared_dir / "precious"
    target.write_text("precious\n")
    target_dir = shared_dir / "elsewhere"
    target_dir.mkdir()
    path = victim.home / name
    path.parent.mkdir(mode=0o700, exist_ok=True)  # runs/ for the runs/JOB plants
    if how == "symlink":
        path.symlink_to(target)
    elif how == "symlink-dir":
        path.symlink_to(target_dir, target_is_directory=True)
    elif how == "directory":
        path.mkdir()
    elif how == "open-directory":
        path.mkdir()
        path.chmod(0o777)
    elif how == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("x = 1\n" if name.endswith(".toml") else "A" * 43 + "\n")
        os.chown(path, other_user.uid, other_user.gid)
        path.chmod(0o600)
    os.lchown(path, other_user.uid, other_user.gid)
    before = sorted(p.name for p in victim.home.iterdir())
    for args in (("scheduler", "start"), ("gateway", "start"), ("job", "list")):
        result = victim(*args)
        assert result.code != 0, (args, result.all)
        line = one_line(result.err)
        assert str(path) in line and words in line, line
    if name.startswith("runs/"):
        # A job's directory concerns only what uses outputs: the admin can still see and
        # stop the scheduler (review finding: status and stop refused too).
        assert victim("scheduler", "status").code == 3
        assert victim("scheduler", "stop").code == 0
    assert target.read_text() == "precious\n" and list(target_dir.iterdir()) == []
    assert sorted(p.name for p in victim.home.iterdir()) == before
    if how == "open-directory":
        assert list(path.iterdir()) == []  # nothing written into theirs


@pytest.mark.parametrize(
    "mode, words, fix",
    [
        (0o777, "is writable by others (mode 0777)", "chmod 700"),
        (0o775, "is writable by others (mode 0775)", "chmod 700"),
    ],
)
def test_a_home_writable_by_others_is_refused(
    victim: Pb, other_user: OtherUser, shared_dir: Path, mode: int, words: str, fix: str
) -> None:
    victim.home.chmod(mode)
    if mode == 0o775:  # writable by a group the other user is in
        os.chown(victim.home, 0, other_user.gid)
    target = shared_dir / "precious"
    target.write_text("precious\n")
    # What the other user does in such a home: a link where the log will be written.
    planted = other_user.python_code(
        "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
        str(target),
        str(victim.home / "scheduler.log"),
    )
    assert planted.returncode == 0, planted.stderr
    result = victim("scheduler", "start")
    assert result.code == 1
    line = one_line(result.err)
    assert str(victim.home) in line and words in line and f"{fix} {victim.home}" in line
    assert target.read_text() == "precious\n"
    assert not (victim.home / "scheduler.pid").exists()


def test_private_files_and_modes(victim: Pb, other_user: OtherUser, shared_dir: Path) -> None:
    """pony.db made by the CLI is 0600 even in a 0755 home; every file has its mode."""
    victim.home.chmod(0o755)
    use_free_ports(victim)
    assert (
        victim("job", "add", "db", "--manual", "--env", "DB_PASSWORD=s3cret", "--", "true").code
        == 0
    )
    readable = other_user.python_code(
        "import sys; open(sys.argv[1], 'rb').read(); print('read')", str(victim.home / "pony.db")
    )
    assert "PermissionError" in readable.stderr and "read" not in readable.stdout
    assert victim("service", "start", "all").code == 0
    assert victim("job", "run", "db").code == 0
    assert victim("debug", "url").code == 0
    modes = {path.name: stat.S_IMODE(path.lstat().st_mode) for path in victim.home.iterdir()}
    expected = {
        "pony.db": 0o600,
        "gateway.token": 0o600,
        "gateway.read-token": 0o600,
        "gateway.sock": 0o600,
        "gateway.api.sock": 0o600,
        ".scheduler.start.lock": 0o600,
        "debug.logins": 0o700,
    }
    for service in ("scheduler", "gateway", "debug"):
        expected |= {f"{service}.log": 0o640, f"{service}.pid": 0o640, f"{service}.json": 0o640}
    for name, mode in expected.items():
        assert modes.get(name) == mode, (name, oct(modes.get(name) or 0))
    fresh = shared_dir / "fresh"
    Pb(fresh)("config", "show", check=True)  # a command that makes no home
    assert not fresh.exists()
    Pb(fresh)("job", "list", check=True)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert stat.S_IMODE((fresh / "pony.db").stat().st_mode) == 0o600


# -- 6. log and terminal injection ----------------------------------------------------------------
ESC = "\x1b"


def test_requests_cannot_forge_log_lines(victim: Pb, other_user: OtherUser) -> None:
    gateway_port, _ = use_free_ports(victim)
    assert victim("gateway", "start").code == 0
    path = "/api/x%0a2026-01-01%2000:00:00,000%20INFO%20FORGED%1b]0;pwned%07%1b[2J"
    answer = attack(other_user, gateway_port, "GET", path)
    assert answer["status"] == 401
    log = (victim.home / "gateway.log").read_text()
    assert not any(line.startswith("2026-01-01") for line in log.splitlines())
    assert ESC not in log and "\x07" not in log
    assert "Refused GET /api/x\\n2026-01-01" in log and "\\x1b]0;pwned\\x07" in log
    shown = victim("gateway", "logs")
    assert ESC not in shown.out and "FORGED" in shown.out


def test_job_output_reaches_the_terminal_visible_not_obeyed(victim: Pb) -> None:
    use_free_ports(victim)
    assert victim("scheduler", "start").code == 0
    evil = "\x1b]0;pwned\x07\x1b[2Jhello\r\n\u202eevil"
    assert (
        victim(
            "job",
            "add",
            "loud",
            "--manual",
            "--",
            "printf",
            evil.replace("%", "%%"),
        ).code
        == 0
    )
    run_id = queued_run_id(victim("job", "run", "loud").out)

    def done() -> bool:
        return json.loads(victim("runs", "show", str(run_id), "--json").out)["state"] == "succeeded"

    assert wait_for(done, 30)

    def output(*extra: str) -> bytes:
        return subprocess.run(
            [*victim_cmd(), "runs", "output", str(run_id), *extra],
            capture_output=True,
            env=victim.env,
            timeout=60,
            check=True,
        ).stdout

    # On a terminal: visible, not obeyed (--raw for the bytes); to a pipe: the exact bytes.
    assert on_a_terminal(victim, "runs", "output", str(run_id)) == (
        b"^[]0;pwned^G^[[2Jhello\r\n<U+202E>evil"
    )
    assert on_a_terminal(victim, "runs", "output", str(run_id), "--raw") == evil.encode()
    assert output() == evil.encode()
    for args in (("runs", "show", str(run_id)), ("job", "show", "loud"), ("runs", "loud")):
        out = victim(*args).out
        assert ESC not in out and "\x07" not in out and "\u202e" not in out, (args, out)
    assert "^[]0;pwned^G" in victim("job", "show", "loud").out
    assert ESC in victim("job", "show", "loud", "--raw").out


def on_a_terminal(runner: Pb, *args: str) -> bytes:
    """What `pb ARGS` writes when its stdout is a terminal (a raw pty: no newline mapping)."""
    import os
    import pty
    import tty

    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        proc = subprocess.Popen(
            [*victim_cmd(), *args],
            stdout=slave,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=runner.env,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(60) == 0
        return b"".join(chunks)
    finally:
        os.close(master)


def victim_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "pony_scheduler"]


def test_error_messages_are_one_line(victim: Pb) -> None:
    result = victim("job", "show", "no\nsuch\x1b[2J")
    assert result.code != 0
    assert re.fullmatch(r"Error: [^\n\x1b]*\n", result.err), result.err


def test_a_log_replaced_by_a_link_is_not_reopened(victim: Pb, shared_dir: Path) -> None:
    """logrotate's SIGHUP after someone swapped scheduler.log for a link: the daemon keeps
    its old file, says so, and never writes through the link."""
    assert victim("scheduler", "start").code == 0
    pid = victim.pid()
    target = shared_dir / "precious"
    target.write_text("precious\n")
    log = victim.home / "scheduler.log"
    log.rename(victim.home / "scheduler.log.1")
    log.symlink_to(target)
    os.kill(pid, signal.SIGHUP)
    rotated = victim.home / "scheduler.log.1"
    assert wait_for(lambda: "Could not reopen" in rotated.read_text(), 30)
    assert "is reached through a symbolic link" in rotated.read_text()
    assert target.read_text() == "precious\n"
    log.unlink()
    assert victim("scheduler", "stop").code == 0
    assert target.read_text() == "precious\n"
