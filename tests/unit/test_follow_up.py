"""The `pb ...` lines a command suggests name the database it was given (--db)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from pony_scheduler.cli.common import pb_again


def _with_db(db: str | None) -> click.Context:
    ctx = click.Context(click.Command("list"))
    ctx.meta["db"] = db
    return ctx


@pytest.mark.parametrize(
    ("db", "wanted"),
    [
        (None, "pb job list --after a"),
        ("/srv/p.db", "pb job list --after a --db /srv/p.db"),
        ("/srv/my jobs.db", "pb job list --after a --db '/srv/my jobs.db'"),
        (
            "postgresql+psycopg://pony@db/p",
            "pb job list --after a --db postgresql+psycopg://pony@db/p",
        ),
        ("postgresql://pony:s3cret@db/p", "pb job list --after a (with the same --db)"),
        ("postgresql://pony:s3cret@db:x/p", "pb job list --after a (with the same --db)"),
        ("postgresql://pony@db/p?password=s3cret", "pb job list --after a (with the same --db)"),
        ("postgresql://pony@db/p?sslpassword=s3", "pb job list --after a (with the same --db)"),
    ],
)
def test_the_db_flag_is_repeated_unless_it_holds_a_password(db: str | None, wanted: str) -> None:
    assert pb_again(_with_db(db), "pb job list --after a") == wanted


def test_the_db_flag_goes_before_a_command() -> None:
    assert pb_again(_with_db("/p.db"), "pb job add N -- CMD") == "pb job add N --db /p.db -- CMD"


def test_a_home_of_no_known_directory_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """HOME unset and no password entry: '~' cannot be expanded, and the message said
    there was no user named '' (review finding)."""
    from pony_scheduler import config
    from pony_scheduler.errors import ConfigError

    monkeypatch.setattr(config.os.path, "expanduser", lambda path: path)
    with pytest.raises(ConfigError, match="this user's home directory is unknown"):
        config._absolute_path("~/.ponybunny")
    with pytest.raises(ConfigError, match="no user named 'nosuch' on this host"):
        config._absolute_path("~nosuch/x")


def test_a_path_setting_that_cannot_be_expanded_names_where_it_was_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'~nosuch/x.db' in config.toml, PONYBUNNY_DB or --db: the one line says which
    (it named no setting, and config.toml was the last place one would look)."""
    from pony_scheduler import config
    from pony_scheduler.errors import ConfigError

    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "config.toml").write_text('db = "~pony-no-such-user/x.db"\n')
    monkeypatch.delenv("PONYBUNNY_DB", raising=False)
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(home))}/config.toml: db: cannot expand "
    ):
        config.load_settings(home=home, outputs=False)
    monkeypatch.setenv("PONYBUNNY_DB", "~pony-no-such-user/y.db")
    with pytest.raises(ConfigError, match=r"^PONYBUNNY_DB: cannot expand '~pony-no-such-user"):
        config.load_settings(home=home, outputs=False)
    with pytest.raises(ConfigError, match=r"^--db: cannot expand '~pony-no-such-user/z"):
        config.load_settings({"db": "~pony-no-such-user/z.db"}, home=home, outputs=False)
