"""Property test: any cron expression, duration, zone or job name given to the CLI either
works or gets one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import zoneinfo
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pony_scheduler.cli import main

ARG = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
CRON = st.one_of(
    ARG,
    st.lists(
        st.sampled_from(
            ["*", "*/5", "0", "59", "60", "1-5", "5-1", "MON", "jan", "L", "?", "1,2", "*/0", "#"]
        ),
        min_size=0,
        max_size=7,
    ).map(" ".join),
    st.sampled_from(["@daily", "@hourly", "@reboot", "@never"]),
)
DURATION = st.one_of(ARG, st.from_regex(r"\A-?[0-9]{0,4}(\.[0-9]{0,2})?(ms|s|m|h|d|x)?\Z"))
ZONE = st.one_of(ARG, st.sampled_from(sorted(zoneinfo.available_timezones())[:50]))


@pytest.fixture
def cli_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    monkeypatch.setenv("PONYBUNNY_HOME", str(home))
    for name in ("PONYBUNNY_DB", "PONYBUNNY_CONFIG", "TZ"):
        monkeypatch.delenv(name, raising=False)
    return home


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    assert isinstance(code, int)
    assert "Traceback" not in out + err
    if code != 0:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
    return code


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(name=ARG, cron=CRON, zone=ZONE)
def test_cron_and_zone_and_name(
    cli_home: Path, capsys: pytest.CaptureFixture[str], name: str, cron: str, zone: str
) -> None:
    run_cli(capsys, "job", "add", name, "--cron", cron, "--tz", zone, "--", "true")


@FUZZ
@given(name=ARG, every=DURATION, timeout=DURATION)
def test_durations(
    cli_home: Path, capsys: pytest.CaptureFixture[str], name: str, every: str, timeout: str
) -> None:
    run_cli(capsys, "job", "add", name, "--every", every, "--timeout", timeout, "--", "true")


@FUZZ
@given(when=ARG, zone=ZONE)
def test_at_times(cli_home: Path, capsys: pytest.CaptureFixture[str], when: str, zone: str) -> None:
    run_cli(capsys, "job", "add", "at-job", "--at", when, "--tz", zone, "--", "true")
    run_cli(capsys, "job", "remove", "at-job")
