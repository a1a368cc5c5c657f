"""The machine's zone for jobs added without --tz, found the way `date` finds it.

These call localzone.machine_zone with an environment and an /etc/localtime path of
their own; tests/integration/test_job_zones.py does the same through `pb job add` with
the real /etc/localtime replaced in a private mount namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pony_scheduler.errors import ConfigError
from pony_scheduler.localzone import MachineZone, machine_zone

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
ZONEINFO = Path("/usr/share/zoneinfo")
TOKYO = (ZONEINFO / "Asia/Tokyo").read_bytes()


def from_tz(value: str) -> MachineZone:
    return machine_zone(NOW, {"TZ": value}, Path("/nonexistent/localtime"))


def from_file(path: Path) -> MachineZone:
    return machine_zone(NOW, {}, path)


@pytest.mark.parametrize(
    ("tz", "name"),
    [
        ("Japan", "Japan"),  # a name of the tz database, kept as written
        ("CET", "CET"),
        ("Asia/Tokyo", "Asia/Tokyo"),
        (":Asia/Tokyo", "Asia/Tokyo"),  # POSIX: a leading ':' is implementation-defined
        ("UTC", "UTC"),
        ("", "UTC"),  # set but empty: UTC, as glibc does
        ("/usr/share/zoneinfo/Asia/Tokyo", "Asia/Tokyo"),
        (":/usr/share/zoneinfo/Asia/Tokyo", "Asia/Tokyo"),
        ("/usr/share/zoneinfo/Japan", "Japan"),
        ("/usr/share/zoneinfo/posix/Asia/Tokyo", "Asia/Tokyo"),  # the shortest name
        ("/usr/share/zoneinfo/America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
    ],
)
def test_tz_names_and_paths(tz: str, name: str) -> None:
    assert from_tz(tz) == MachineZone(name)


def test_a_posix_rule_that_is_also_a_zone_name() -> None:
    if not (ZONEINFO / "EST5EDT").exists():
        pytest.skip("this tz database has no EST5EDT")
    assert from_tz("EST5EDT") == MachineZone("EST5EDT")


@pytest.mark.parametrize(
    ("tz", "message"),
    [
        ("JST-9", "TZ='JST-9' is a POSIX time zone rule, not a zone name"),
        ("<+0330>-3:30", "is a POSIX time zone rule"),
        ("CET-1CEST,M3.5.0,M10.5.0/3", "is a POSIX time zone rule"),
        ("Nope/Zone", "TZ='Nope/Zone' is not a zone of the tz database"),
        (" UTC", "TZ=' UTC' is not a zone of the tz database"),
        ("/nonexistent/zone", "names a file that cannot be read (No such file or directory)"),
        ("/etc/passwd", "TZ='/etc/passwd' is not a zone file of the tz database"),
    ],
)
def test_unusable_tz_values_are_refused(tz: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_tz(tz)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.endswith("give --tz ZONE (an IANA name such as Europe/Berlin), or set TZ to one")


def test_a_copied_zone_file_named_by_tz(tmp_path: Path) -> None:
    copy = tmp_path / "my-zone"
    copy.write_bytes(TOKYO)
    assert from_tz(str(copy)) == MachineZone("Asia/Tokyo")  # the zone with this content


def test_etc_localtime_as_a_copy_a_link_or_missing(tmp_path: Path) -> None:
    copy = tmp_path / "localtime"
    copy.write_bytes(TOKYO)
    assert from_file(copy) == MachineZone("Asia/Tokyo")
    assert machine_zone(NOW, {"TZ": ":"}, copy) == MachineZone("Asia/Tokyo")  # ':' alone
    link = tmp_path / "link"
    link.symlink_to(ZONEINFO / "America/New_York")
    assert from_file(link) == MachineZone("America/New_York")
    utc = tmp_path / "utc"
    utc.write_bytes((ZONEINFO / "Etc/UTC").read_bytes())
    assert from_file(utc) == MachineZone("Etc/UTC")  # the file, not one of its links
    missing = from_file(tmp_path / "none")
    assert missing.name == "UTC"
    assert missing.warning == (
        f"cannot tell this machine's time zone (TZ is not set and {tmp_path / 'none'} does "
        "not exist); using UTC: give --tz ZONE (an IANA name such as Europe/Berlin), or set "
        "TZ to one"
    )
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a zone file")
    assert from_file(garbage).name == "UTC"
    assert "matches no zone of the tz database" in from_file(garbage).warning


@pytest.fixture(scope="module")
def slim_zones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tz database compiled again by zic, smaller: the same zones, other bytes."""
    zic = shutil.which("zic") or "/usr/sbin/zic"
    if not os.access(zic, os.X_OK) or not (ZONEINFO / "tzdata.zi").exists():
        if os.environ.get("CI"):
            pytest.fail("zic and /usr/share/zoneinfo/tzdata.zi are needed (Debian: libc-bin, "
                        "tzdata)")  # fmt: skip
        pytest.skip("no zic or tzdata.zi")
    out = tmp_path_factory.mktemp("zones")
    subprocess.run([zic, "-b", "slim", "-d", str(out), str(ZONEINFO / "tzdata.zi")],
                   check=True, timeout=60)  # fmt: skip
    return out


def test_a_rebuilt_zone_file_is_known_by_its_path(slim_zones: Path) -> None:
    kolkata = slim_zones / "Asia/Kolkata"
    assert kolkata.read_bytes() != (ZONEINFO / "Asia/Kolkata").read_bytes()
    assert from_tz(str(kolkata)) == MachineZone("Asia/Kolkata")  # checked against its rules


def test_a_rebuilt_copy_without_a_name_is_not_guessed(slim_zones: Path, tmp_path: Path) -> None:
    # Its rules are those of Europe/Berlin, and of Europe/Paris, Africa/Ceuta ... today.
    copy = tmp_path / "localtime"
    copy.write_bytes((slim_zones / "Europe/Berlin").read_bytes())
    found = from_file(copy)
    assert found.name == "UTC" and "matches no zone of the tz database" in found.warning
