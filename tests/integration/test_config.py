"""Configuration: defaults < config.toml < environment < flags, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Pb


def show(pb: Pb, *args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    result = pb(*args, "config", "show", "--json", env=env)
    assert result.code == 0, result.all
    return json.loads(result.out)["settings"]  # type: ignore[no-any-return]


def test_precedence(pb: Pb, home: Path, tmp_path: Path) -> None:
    settings = show(pb)
    assert settings["workers"] == {"value": "4", "source": "default"}
    assert settings["db"]["value"] == f"sqlite:///{home}/pony.db"
    (home / "config.toml").write_text('workers = 8\nlog_level = "debug"\ngateway_port = 1234\n')
    settings = show(pb)
    assert settings["workers"]["value"] == "8"
    assert settings["workers"]["source"] == f"file {home}/config.toml"
    assert settings["log_level"]["value"] == "DEBUG"
    settings = show(pb, env={"PONYBUNNY_WORKERS": "2"})
    assert settings["workers"] == {"value": "2", "source": "env"}
    assert settings["gateway_port"]["value"] == "1234"
    other = tmp_path / "other.toml"
    other.write_text("workers = 3\n")
    assert show(pb, "--config", str(other))["workers"]["value"] == "3"
    text = pb("config", "show").out
    assert f"Configuration file: {home}/config.toml" in text and "(default)" in text


def test_relative_paths_in_the_file_are_relative_to_it(pb: Pb, home: Path) -> None:
    (home / "config.toml").write_text('db = "jobs.db"\nsocket = "gw.sock"\n')
    settings = show(pb)
    assert settings["db"]["value"] == f"sqlite:///{home}/jobs.db"
    assert settings["socket"]["value"] == f"{home}/gw.sock"


def test_password_is_never_shown(pb: Pb) -> None:
    text = pb("config", "show", env={"PONYBUNNY_DB": "postgresql+psycopg://u:s3cret@h/d"}).out
    assert "s3cret" not in text and "u:***@h/d" in text


def test_durations_for_the_grace(pb: Pb) -> None:
    assert show(pb, env={"PONYBUNNY_SHUTDOWN_GRACE": "2m"})["shutdown_grace"]["value"] == "120.0"
    bad = pb("scheduler", "start", "--shutdown-grace", "soon")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "--shutdown-grace" in bad.err


def test_flags_win(pb: Pb, home: Path) -> None:
    (home / "config.toml").write_text("shutdown_grace = 5\n")
    pb("scheduler", "start", "--shutdown-grace", "1", "--workers", "2", check=True)
    pb("scheduler", "stop", check=True)


def test_bad_files(pb: Pb, home: Path, tmp_path: Path) -> None:
    config = home / "config.toml"
    config.write_text("workers = 4\n\nbogus_key = 1\n")
    result = pb("scheduler", "status")
    assert result.code == 2
    assert result.err.strip() == (
        f"Error: {config}:3: unknown key 'bogus_key' (known keys: "
        "allowed_hosts, anonymous_read, containment, db, debug_host, "
        "debug_port, gateway_host, gateway_port, lease, log_level, memory_accounting, "
        "shutdown_grace, socket, workers)"
    )
    config.write_text("workers = [\n")
    result = pb("config", "show")
    assert result.code == 2 and str(config) in result.err and "malformed TOML" in result.err
    assert result.err.count("\n") == 1
    config.write_text('workers = "many"\n')
    result = pb("config", "show")
    assert result.code == 2 and "workers must be a number of workers" in result.err
    missing = pb("--config", str(tmp_path / "nope.toml"), "config", "show")
    assert missing.code == 2 and "does not exist" in missing.err
    bad_env = pb("config", "show", env={"PONYBUNNY_WORKERS": "0"})
    assert bad_env.code == 2 and "PONYBUNNY_WORKERS" in bad_env.err


def test_switches_in_the_file_are_booleans(pb: Pb, home: Path) -> None:
    """anonymous_read opens the gateway to reads: in the file only a TOML boolean turns it
    on or off (review: "yes", "on" and 1 turned it on, "no" and 0 off); the environment,
    which has only strings, keeps 1/0."""
    config = home / "config.toml"
    for value in ('"yes"', '"on"', "1", '"0"', "0", '"true"'):
        config.write_text(f"workers = 2\nanonymous_read = {value}\n")
        result = pb("config", "show")
        assert result.code == 2, value
        assert result.err.strip().startswith(f"Error: {config}:2: anonymous_read must be true")
        assert result.err.count("\n") == 1
    config.write_text("anonymous_read = true\n")
    assert "True" in pb("config", "show", check=True).out
    config.unlink()
    shown = pb("config", "show", env={"PONYBUNNY_ANONYMOUS_READ": "1"}, check=True).out
    assert any("anonymous_read" in line and "True" in line for line in shown.splitlines())
