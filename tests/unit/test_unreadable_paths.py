"""A --db or --config behind a directory the user may not enter is one line, not a
traceback (review finding, as a second user: PermissionError from os.stat)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pony_scheduler import config, files
from pony_scheduler.errors import ConfigError
from pony_scheduler.store import engine


def test_a_database_behind_a_closed_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, create: bool = False) -> str:
        raise PermissionError(13, "Permission denied", "x.db")

    monkeypatch.setattr(files, "check_database_file", refuse)
    with pytest.raises(ConfigError, match=r"cannot use database /root/x.db: Permission denied"):
        engine.make_engine("sqlite:////root/x.db")


def test_a_config_file_behind_a_closed_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The existence check (os.stat) raised PermissionError before the reading, which
    says why in one line (pathtrust: "... cannot be searched"), was reached."""
    asked: list[str] = []
    real_stat = os.stat

    def refuse(path: str, *args: object, **kwargs: object) -> os.stat_result:
        if path == "/root/x.toml":
            raise PermissionError(13, "Permission denied", path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    def read(path: str, explicit: bool) -> dict[str, object]:
        asked.append(path)
        raise ConfigError("/root cannot be searched (Permission denied)")

    monkeypatch.setattr(files, "check_home", lambda home, outputs=True: None)
    monkeypatch.setattr(config, "_read_config_file", read)
    monkeypatch.setattr(os, "stat", refuse)
    with pytest.raises(ConfigError, match="cannot be searched"):
        config.load_settings(home=tmp_path, config_file=Path("/root/x.toml"))
    assert asked == ["/root/x.toml"]
