"""Escaping (textsafe), the tokens (gateway/token), login links and sessions (debug/)."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pony_scheduler.actor import Actor, cli_actor, peer_actor
from pony_scheduler.debug.logins import LOGIN_DIR, new_code, redeem
from pony_scheduler.debug.sessions import IDLE, Sessions
from pony_scheduler.errors import PonyError
from pony_scheduler.files import UnsafePath
from pony_scheduler.gateway.token import TokenKeeper, ensure_tokens, new_token, read_token
from pony_scheduler.lifecycle.runtime import EscapingFormatter
from pony_scheduler.textsafe import for_log, for_terminal

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


# -- textsafe -------------------------------------------------------------------------------------
def test_for_log_examples() -> None:
    assert for_log("GET /x\nFORGED") == "GET /x\\nFORGED"
    assert for_log("\x1b]0;pwned\x07\r") == "\\x1b]0;pwned\\x07\\r"
    assert for_log("caf\u00e9 \u202eevil \\ ok") == "caf\u00e9 \\u202eevil \\ ok"
    assert for_log(42) == "42"


def test_for_terminal_examples() -> None:
    assert for_terminal("\x1b]0;pwned\x07\x1b[2J") == "^[]0;pwned^G^[[2J"
    assert for_terminal("a\tb\nc\r\nd") == "a\tb\nc\r\nd"  # layout stays
    assert for_terminal("50%\rdone") == "50%^Mdone"  # a lone CR would overwrite
    assert for_terminal("\x7f\x9b\u202e\u200b") == "^?<U+009B><U+202E><U+200B>"
    assert for_terminal("caf\u00e9 \u2603") == "caf\u00e9 \u2603"


@given(st.text())
def test_for_log_leaves_one_line_without_controls(text: str) -> None:
    shown = for_log(text)
    assert not CONTROL.search(shown) and "\n" not in shown


@given(st.text())
def test_for_terminal_leaves_nothing_a_terminal_obeys(text: str) -> None:
    shown = for_terminal(text)
    assert not CONTROL.search(shown.replace("\r\n", "").replace("\n", "").replace("\t", ""))
    assert "\x1b" not in shown and "\x07" not in shown


def test_every_log_record_is_one_line() -> None:
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "Refused %s %s", ("GET", "/a\nINFO forged\x1b[2J"), None
    )
    assert formatter.format(record) == "WARNING Refused GET /a\\nINFO forged\\x1b[2J"
    assert record.msg == "Refused %s %s"  # the record itself is left as it was


# -- tokens -------------------------------------------------------------------------------------
def test_tokens_are_made_private_and_refused_when_not(tmp_path: Path) -> None:
    tokens = ensure_tokens(tmp_path)
    assert tokens["admin"] != tokens["read"] and len(tokens["admin"]) == 43
    for name in ("gateway.token", "gateway.read-token"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert ensure_tokens(tmp_path) == tokens  # kept across starts
    (tmp_path / "gateway.token").chmod(0o644)
    with pytest.raises(UnsafePath, match="chmod 600"):
        read_token(tmp_path)
    (tmp_path / "gateway.token").chmod(0o600)
    (tmp_path / "gateway.token").write_text("short\n")
    with pytest.raises(PonyError, match="does not hold a token"):
        read_token(tmp_path)


def test_the_keeper_follows_rotation_and_fails_closed(tmp_path: Path) -> None:
    ensure_tokens(tmp_path)
    keeper = TokenKeeper(tmp_path)
    old = keeper.current().admin
    assert old is not None and keeper.current().scope_of(old) == "admin"
    generation = keeper.generation
    new = new_token(tmp_path)
    assert keeper.current().scope_of(old) is None
    assert keeper.current().scope_of(new) == "admin"
    assert keeper.generation == generation + 1
    (tmp_path / "gateway.token").chmod(0o666)  # tampered with: refused, not used
    assert keeper.current().scope_of(new) is None
    read = read_token(tmp_path, "read")
    assert read is not None and keeper.current().scope_of(read) == "read"


# -- login links and sessions ---------------------------------------------------------------------
def test_a_login_code_works_once_and_not_late(tmp_path: Path) -> None:
    code = new_code(tmp_path, now=1000.0)
    files = list((tmp_path / LOGIN_DIR).iterdir())
    assert len(files) == 1 and code not in files[0].name  # only its digest is kept
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / LOGIN_DIR).stat().st_mode) == 0o700
    assert redeem(tmp_path, code, now=1001.0) is True
    assert redeem(tmp_path, code, now=1001.0) is False
    late = new_code(tmp_path, now=1000.0)
    assert redeem(tmp_path, late, now=1000.0 + 601) is False
    for bad in ("", "x" * 43, "../../etc/passwd", code + "x", "é" * 43):
        assert redeem(tmp_path, bad) is False


def test_sessions_expire_and_end(tmp_path: Path) -> None:
    sessions = Sessions()
    one = sessions.new("admin", "link", now=0.0)
    two = sessions.new("read", "token", now=0.0)
    assert sessions.get(one, now=IDLE - 1) is not None
    assert sessions.get(two, now=IDLE + 1) is None  # idle too long
    assert sessions.get(one, now=2 * IDLE - 2) is not None  # kept alive by use
    sessions.end(one)
    assert sessions.get(one, now=2 * IDLE) is None
    sessions.new("admin", "link", now=0.0)
    assert sessions.end_all() == 1 and len(sessions) == 0
    assert sessions.get("anything", now=0.0) is None


# -- the actor ----------------------------------------------------------------------------------
def test_actors_describe_themselves() -> None:
    me = cli_actor()
    assert me.via == "cli" and me.uid == os.geteuid() and me.may_change
    peer = peer_actor(os.geteuid(), via="dashboard", scope="read")
    assert not peer.may_change and peer.credential == "session"
    assert peer.describe().startswith("dashboard (session, read) as ")
    token = Actor(via="api", scope="admin", credential="token", address="127.0.0.1")
    assert token.describe() == "api (admin token) from 127.0.0.1"
