"""What `--db` says when its PostgreSQL driver cannot be imported: the postgresql+psycopg
URL only where psycopg is there to serve it (review finding: a plain `pip install .` was
told to use that URL, which needs the same missing psycopg)."""

from __future__ import annotations

import sys

import pytest
from sqlalchemy.engine import make_url

from pony_scheduler.errors import ConfigError
from pony_scheduler.store.engine import missing_driver, parse_url

EXTRA = "pip install 'pony-scheduler[postgresql]'"


@pytest.mark.parametrize(
    ("url", "driver", "psycopg", "wanted"),
    [
        (
            "postgresql+psycopg://u@h/d",
            "psycopg",
            False,
            f"psycopg is not installed; {EXTRA} installs it",
        ),
        (
            "postgresql+pg8000://u@h/d",
            "pg8000",
            False,
            f"{EXTRA} installs psycopg, then use postgresql+psycopg://…",
        ),
        (
            "postgresql+pg8000://u@h/d",
            "pg8000",
            True,
            "use postgresql+psycopg://… (psycopg is installed), or install pg8000",
        ),
        (
            "mysql://u@h/d",
            "MySQLdb",
            True,
            "MySQLdb is not installed, and only SQLite and PostgreSQL are supported",
        ),
    ],
)
def test_the_advice_fits_what_is_installed(
    url: str, driver: str, psycopg: bool, wanted: str
) -> None:
    said = missing_driver(make_url(url), driver, psycopg)
    assert said.endswith(wanted), said
    if not psycopg:
        assert "use postgresql+psycopg" not in said.split(EXTRA)[0]


def test_a_plain_install_is_told_to_install_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "psycopg" or n.startswith("psycopg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` fails, as without it
    with pytest.raises(ConfigError) as refused:
        parse_url("postgresql://postgres@127.0.0.1:5432/db")
    assert str(refused.value) == (
        "--db postgresql://postgres@127.0.0.1:5432/db: its driver psycopg is not installed; "
        f"{EXTRA} installs it"
    )
