"""Zones as `pb job` users meet them: the machine's zone at `add` (TZ in all its forms,
/etc/localtime as a link or a copy), `edit --tz`, times shown with their zone, `pb job
next`, and bad zones and counts refused in one line.

/etc/localtime is changed only inside a private mount namespace (`unshare --mount`) of
the `pb` process, never on the machine: an overlay over /etc there.  (A bind mount onto
/etc/localtime would not do: it is a symlink, and mount follows it, so the zone file it
points to, Etc/UTC say, would itself become Tokyo's.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest

from tests.conftest import Pb, Result

ZONEINFO = Path("/usr/share/zoneinfo")
DAILY = ["--cron", "0 9 * * *"]
SHOWN = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(:\d\d)? \S+")  # 2026-12-01 09:00 JST


def job(pb: Pb, name: str) -> dict[str, object]:
    shown = pb("job", "show", name, "--json")
    assert shown.code == 0, shown.all
    data: dict[str, object] = json.loads(shown.out)
    return data


def one_line(result: Result) -> str:
    assert result.code != 0 and "Traceback" not in result.all, result.all
    assert result.err.count("\n") == 1, result.err
    return result.err


# ---------------------------------------------------------------- the machine's zone: TZ


@pytest.mark.parametrize(
    ("tz", "zone", "offset"),
    [
        ("Japan", "Japan", "+09:00"),
        (":Asia/Tokyo", "Asia/Tokyo", "+09:00"),
        ("/usr/share/zoneinfo/Asia/Tokyo", "Asia/Tokyo", "+09:00"),
        ("CET", "CET", "+01:00"),
        ("", "UTC", "+00:00"),
    ],
)
def test_add_takes_the_zone_from_tz(pb: Pb, tz: str, zone: str, offset: str) -> None:
    added = pb("job", "add", "daily", *DAILY, "--", "true", env={"TZ": tz})
    assert added.code == 0 and added.err == "", added.all
    data = job(pb, "daily")
    assert data["tz"] == zone and data["schedule"] == f"cron '0 9 * * *' ({zone})"
    assert str(data["next_run_local"]).endswith(f"T09:00:00{offset}")
    assert re.search(r"next run: \d{4}-\d\d-\d\d 09:00 ", added.out), added.out


def test_a_posix_rule_in_tz_is_refused(pb: Pb) -> None:
    refused = pb("job", "add", "daily", *DAILY, "--", "true", env={"TZ": "JST-9"})
    assert refused.code == 2
    assert "TZ='JST-9' is a POSIX time zone rule, not a zone name" in one_line(refused)
    assert "give --tz ZONE" in refused.err
    assert pb("job", "list").out.startswith("No jobs yet")
    # Jobs without a zone do not care, and --tz decides for those that have one.
    assert pb("job", "add", "often", "--every", "1h", "--", "true", env={"TZ": "JST-9"}).code == 0
    tokyo = pb("job", "add", "daily", *DAILY, "--tz", "Asia/Tokyo", "--", "true",
               env={"TZ": "JST-9"})  # fmt: skip
    assert tokyo.code == 0 and job(pb, "daily")["tz"] == "Asia/Tokyo"


# ---------------------------------------------------------------- the machine's zone: /etc


@pytest.fixture
def private_etc(pb: Pb, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run `pb` with /etc changed by a shell snippet, in a mount namespace of its own."""
    scratch = tmp_path / "etc-overlay"
    scratch.mkdir()
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount -t tmpfs t {scratch}"],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    if shutil.which("unshare") is None or probe.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"unshare --mount is needed (run as root): {probe.stderr}")
        pytest.skip("unshare --mount is not allowed here")

    def run(setup: str, *args: str) -> Result:
        script = (
            f"set -e; mount -t tmpfs tmpfs {scratch}; mkdir {scratch}/u {scratch}/w; "
            f"mount -t overlay overlay -o lowerdir=/etc,upperdir={scratch}/u,"
            f"workdir={scratch}/w /etc; rm -f /etc/localtime /etc/timezone; {setup}; "
            'exec "$@"'
        )
        env = {k: v for k, v in pb.env.items() if k != "TZ"}
        proc = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", sys.executable,
                               "-m", "pony_scheduler", *args],
                              capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.mark.parametrize(
    ("setup", "zone"),
    [
        ("ln -s /usr/share/zoneinfo/Asia/Tokyo /etc/localtime", "Asia/Tokyo"),
        ("cp /usr/share/zoneinfo/Asia/Tokyo /etc/localtime", "Asia/Tokyo"),  # a plain copy
        # A stale /etc/timezone loses to what /etc/localtime says, as for `date`.
        ("cp /usr/share/zoneinfo/Asia/Tokyo /etc/localtime; echo Europe/Berlin >/etc/timezone",
         "Asia/Tokyo"),
        ("ln -s /usr/share/zoneinfo/America/New_York /etc/localtime; echo Etc/UTC "
         ">/etc/timezone", "America/New_York"),
        # A copy named by /etc/timezone keeps that name (Asia/Tokyo and Japan are alike).
        ("cp /usr/share/zoneinfo/Asia/Tokyo /etc/localtime; echo Japan >/etc/timezone",
         "Japan"),
    ],
)  # fmt: skip
def test_add_takes_the_zone_from_etc_localtime(private_etc, pb: Pb, setup: str,  # type: ignore[no-untyped-def]
                                               zone: str) -> None:  # fmt: skip
    seen = private_etc(setup + "; date +%Z >&2", "job", "add", "daily", *DAILY, "--", "true")
    assert seen.code == 0, seen.all
    date_says = seen.err.strip()  # what `date` says in the same namespace
    data = job(pb, "daily")
    assert data["tz"] == zone
    assert f" 09:00 {date_says}" in seen.out, seen.all


def test_an_unknown_machine_zone_is_utc_with_a_warning(private_etc, pb: Pb) -> None:  # type: ignore[no-untyped-def]
    for setup in (":", "printf garbage >/etc/localtime"):  # none at all, or not a zone file
        added = private_etc(setup, "job", "add", "daily", *DAILY, "--", "true")
        assert added.code == 0, added.all
        warning = added.err.strip()
        assert warning.startswith("⚠ cannot tell this machine's time zone (TZ is not set and "
                                  "/etc/localtime ") and "\n" not in warning  # fmt: skip
        assert warning.endswith("; using UTC: give --tz ZONE (an IANA name such as "
                                "Europe/Berlin), or set TZ to one")  # fmt: skip
        assert job(pb, "daily")["tz"] == "UTC"
        assert pb("job", "remove", "daily").code == 0
    # With --tz, or for a job without a zone, there is nothing to warn about.
    quiet = private_etc(":", "job", "add", "often", "--every", "1h", "--", "true")
    assert quiet.code == 0 and quiet.err == ""


# ---------------------------------------------------------------- pb job edit --tz


def test_edit_tz_moves_a_cron_job_and_keeps_the_rest(pb: Pb) -> None:
    pb("job", "add", "backup", "--cron", "0 3 * * 1-5", "--tz", "Europe/Berlin",
       "--timeout", "1h", "--", "/bin/true", check=True)  # fmt: skip
    edited = pb("job", "edit", "backup", "--tz", "Asia/Tokyo")
    assert edited.code == 0, edited.all
    assert re.fullmatch(r"✓ Job backup changed; next run: \d{4}-\d\d-\d\d 03:00 JST\n", edited.out)
    data = job(pb, "backup")
    assert data["schedule"] == "cron '0 3 * * 1-5' (Asia/Tokyo)"
    assert data["timeout_s"] == 3600 and data["command"] == ["/bin/true"]
    # --cron alone keeps the job's zone, whatever the machine's (TZ) says.
    assert pb("job", "edit", "backup", "--cron", "30 4 * * *", env={"TZ": "America/Denver"},
              check=True)  # fmt: skip
    assert job(pb, "backup")["schedule"] == "cron '30 4 * * *' (Asia/Tokyo)"


def test_edit_tz_keeps_the_wall_clock_time_of_a_one_shot(pb: Pb) -> None:
    when = (datetime.now() + timedelta(days=30)).strftime("%Y-%m-%d 09:00")
    pb("job", "add", "once", "--at", when, "--tz", "Europe/Berlin", "--", "true", check=True)
    pb("job", "edit", "once", "--tz", "America/New_York", check=True)
    data = job(pb, "once")
    assert data["schedule"] == f"at {when} America/New_York"
    assert re.fullmatch(rf"{when[:10]}T09:00:00-0[45]:00", str(data["next_run_local"]))


def test_edit_tz_is_refused_where_there_is_no_zone(pb: Pb) -> None:
    pb("job", "add", "often", "--every", "5m", "--", "true", check=True)
    pb("job", "add", "byhand", "--manual", "--", "true", check=True)
    before = pb("job", "list", "--json").out
    for name, shown in (("often", "every 5m"), ("byhand", "manual")):
        refused = pb("job", "edit", name, "--tz", "UTC")
        assert refused.code == 2
        assert (
            f"--tz applies to cron and --at jobs, and this job's schedule is '{shown}' "
            "(give --cron or --at with --tz to change it)"
        ) in one_line(refused)
    both = pb("job", "edit", "often", "--every", "1h", "--tz", "UTC")
    assert "--tz applies to --cron and --at only" in one_line(both)
    assert pb("job", "list", "--json").out == before


# ---------------------------------------------------------------- times shown with a zone


def test_list_and_show_give_times_in_the_jobs_zone(pb: Pb) -> None:
    pb("job", "add", "berlin", "--cron", "0 3 * * *", "--tz", "Europe/Berlin", "--", "true",
       check=True, env={"TZ": "UTC"})  # fmt: skip
    pb("job", "add", "tokyo", "--cron", "0 3 * * *", "--tz", "Asia/Tokyo", "--", "true",
       check=True)  # fmt: skip
    listing = pb("job", "list", env={"TZ": "UTC"}).out
    assert re.search(r"berlin .* \d{4}-\d\d-\d\d 03:00 CES?T ", listing), listing
    assert re.search(r"tokyo .* \d{4}-\d\d-\d\d 03:00 JST ", listing), listing
    shown = pb("job", "show", "berlin", env={"TZ": "America/New_York"}).out
    assert re.search(r"^Next run: +\d{4}-\d\d-\d\d 03:00 CES?T$", shown, re.M), shown
    data = job(pb, "berlin")
    local = datetime.fromisoformat(str(data["next_run_local"]))
    assert local == datetime.fromisoformat(str(data["next_run_at"]))  # the same instant
    assert (local.hour, local.minute) == (3, 0) and str(local.utcoffset()) in ("1:00:00", "2:00:00")


# ---------------------------------------------------------------- pb job next


def test_next_for_a_cron_expression_marks_daylight_saving(pb: Pb) -> None:
    """400 days of a 02:30 Berlin job hold a spring day (02:30 does not exist) and an
    autumn day (02:30 happens twice), whenever the test runs."""
    result = pb("job", "next", "--cron", "30 2 * * *", "--tz", "Europe/Berlin", "-n", "400",
                "--json")  # fmt: skip
    assert result.code == 0, result.all
    data = json.loads(result.out)
    assert data["job"] is None and data["tz"] == "Europe/Berlin" and data["kind"] == "cron"
    runs = data["runs"]
    assert len(runs) == 400
    for run in runs:
        assert datetime.fromisoformat(run["utc"]) == datetime.fromisoformat(run["local"])
        assert run["abbr"] in ("CET", "CEST")
    moved = [run for run in runs if run["dst"] == "moved"]
    merged = [run for run in runs if run["dst"] == "merged"]
    assert len(moved) >= 1 and len(merged) >= 1
    assert all(run["local"][11:] == "03:00:00+02:00" for run in moved)
    assert all(run["local"][11:] == "02:30:00+02:00" for run in merged)  # the first pass
    assert moved[0]["note"] == ("02:30 does not exist that day (clocks go forward); runs at "
                                "03:00, the end of the gap")  # fmt: skip
    ordinary = [run for run in runs if run["dst"] is None]
    assert all(run["local"][11:16] == "02:30" and run["note"] is None for run in ordinary)
    text = pb("job", "next", "--cron", "30 2 * * *", "--tz", "Europe/Berlin", "-n", "400").out
    lines = text.splitlines()
    assert lines[0] == "cron '30 2 * * *' (Europe/Berlin)"
    assert lines[1].split() == ["LOCAL", "UTC", "DAYLIGHT", "SAVING"] and len(lines) == 402
    assert any(" 03:00 CEST " in line and "moved: 02:30 does not exist" in line
               for line in lines)  # fmt: skip


def test_next_for_a_job_is_what_the_scheduler_will_do(pb: Pb) -> None:
    pb("job", "add", "daily", "--cron", "15 6 * * *", "--tz", "Asia/Tokyo", "--", "true",
       check=True)  # fmt: skip
    data = json.loads(pb("job", "next", "daily", "-n", "3", "--json").out)
    assert data["job"] == "daily" and data["schedule"] == "cron '15 6 * * *' (Asia/Tokyo)"
    assert data["runs"][0]["utc"] == job(pb, "daily")["next_run_at"]
    days = [datetime.fromisoformat(run["local"]) for run in data["runs"]]
    assert [b - a for a, b in pairwise(days)] == [timedelta(days=1)] * 2
    text = pb("job", "next", "daily", "-n", "3").out.splitlines()
    assert text[0] == "daily: cron '15 6 * * *' (Asia/Tokyo)"
    assert text[1].split() == ["LOCAL", "UTC"]  # nothing moved: no daylight-saving column
    assert all(re.fullmatch(r"\S+ 06:15 JST +\S+ 21:15 UTC", line) for line in text[2:])


def test_next_for_interval_one_shot_manual_and_paused_jobs(pb: Pb) -> None:
    pb("job", "add", "often", "--every", "90m", "--", "true", check=True)
    runs = json.loads(pb("job", "next", "often", "--json").out)["runs"]
    moments = [datetime.fromisoformat(run["utc"]) for run in runs]
    assert len(moments) == 5
    assert {b - a for a, b in pairwise(moments)} == {timedelta(minutes=90)}
    pb("job", "add", "once", "--at", "+2h", "--tz", "UTC", "--", "true", check=True)
    once = json.loads(pb("job", "next", "once", "-n", "10", "--json").out)
    assert len(once["runs"]) == 1 and once["runs"][0]["utc"] == job(pb, "once")["next_run_at"]
    pb("job", "add", "byhand", "--manual", "--", "true", check=True)
    manual = pb("job", "next", "byhand")
    assert manual.code == 0
    assert manual.out == ("byhand: manual: no schedule; it runs only with 'pb job run "
                          "byhand'\n")  # fmt: skip
    assert json.loads(pb("job", "next", "byhand", "--json").out)["runs"] == []
    pb("job", "pause", "often", check=True)
    paused = pb("job", "next", "often", "-n", "1").out.splitlines()
    assert paused[0] == "often: every 1h 30m (paused: these runs follow 'pb job resume often')"
    unknown = pb("job", "next", "nope")
    assert unknown.code == 1 and "no job named 'nope'" in unknown.err


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x", "--cron", "@daily", "--tz", "", "--", "true"],
         "the time zone is empty; use an IANA name such as Europe/Berlin or UTC"),
        (["add", "x", "--at", "+1h", "--tz", " UTC", "--", "true"],
         "time zone ' UTC' has spaces around it; write 'UTC'"),
        (["add", "x", "--cron", "@daily", "--tz", "Europe/Berlin ", "--", "true"],
         "time zone 'Europe/Berlin ' has spaces around it; write 'Europe/Berlin'"),
        (["add", "x", "--cron", "@daily", "--tz", "Mars/Base", "--", "true"],
         "unknown time zone 'Mars/Base'; use an IANA name such as Europe/Berlin or UTC"),
        (["add", "x", "--cron", "@daily", "--tz", "localtime", "--", "true"],
         "unknown time zone 'localtime'"),
        (["next", "--cron", "@daily", "--tz", ""], "the time zone is empty"),
        (["next", "--cron", "61 * * * *"], "minute field '61' is out of range 0-59"),
        (["next", "-n", "0", "--cron", "@daily"], "'0' is not a whole number from 1 to 1000"),
        (["next", "-n", "1001", "--cron", "@daily"], "'1001' is not a whole number from 1 to 1000"),
        (["next", "-n", "99999999999999999999", "--cron", "@daily"], "from 1 to 1000"),
        (["next", "-n", "five", "--cron", "@daily"], "'five' is not a whole number from 1 to 1000"),
        (["next", "-n", "-3", "--cron", "@daily"], "from 1 to 1000"),
        (["next"], "give a job NAME, or --cron EXPR to try an expression (not both)"),
        (["next", "x", "--cron", "@daily"], "give a job NAME, or --cron EXPR"),
        (["next", "x", "--tz", "UTC"], "--tz goes with --cron"),
    ],
)  # fmt: skip
def test_bad_zones_and_counts(pb: Pb, args: list[str], message: str) -> None:
    result = pb("job", *args)
    assert result.code == 2
    assert message in one_line(result)
    assert pb("job", "list").out.startswith("No jobs yet")


def test_bad_zones_at_edit_change_nothing(pb: Pb) -> None:
    pb("job", "add", "daily", *DAILY, "--tz", "Europe/Berlin", "--", "true", check=True)
    before = pb("job", "show", "daily", "--json").out
    for tz, message in (("", "the time zone is empty"), (" UTC", "has spaces around it"),
                        ("Mars/Base", "unknown time zone 'Mars/Base'")):  # fmt: skip
        result = pb("job", "edit", "daily", "--tz", tz)
        assert result.code == 2 and message in one_line(result)
    past = pb("job", "add", "soon", "--at", "+1m", "--tz", "UTC", "--", "true")
    assert past.code == 0
    # The same wall-clock time in a zone east of UTC was hours ago.
    refused = pb("job", "edit", "soon", "--tz", "Asia/Tokyo")
    assert refused.code == 2 and "is in the past; give a future time" in one_line(refused)
    assert pb("job", "show", "daily", "--json").out == before
    assert SHOWN.search(pb("job", "show", "soon").out)
