"""keeper.kept's rewrites (keeper/keptfile.py) and where a database's run output goes
(files.py, output_dir)."""

from __future__ import annotations

import os
from pathlib import Path

from pony_scheduler.files import output_dir
from pony_scheduler.keeper import keptfile


def test_forgetting_a_session_keeps_every_other_entry_however_long_the_file(
    tmp_path: Path,
) -> None:
    """Review finding: only the first MiB was read, and the rewrite dropped the rest (a
    kept run's line at the end among them); the file is replaced at once."""
    home_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        old = range(100_000, 300_000)  # ~1.4 MB of sessions
        keptfile.add(home_fd, old, [])
        keptfile.add(home_fd, [20, 21], [1])
        keptfile.forget(home_fd, 21)
        words = (tmp_path / keptfile.KEPT_FILE).read_text().split()
        assert "20" in words and "r1" in words and "21" not in words
        assert len(words) == len(old) + 2
        assert oct((tmp_path / keptfile.KEPT_FILE).stat().st_mode & 0o777) == "0o600"
        assert [p.name for p in tmp_path.iterdir()] == [keptfile.KEPT_FILE]  # no temp left
        sids, runs = keptfile.load(home_fd, {20}, set())
        assert (sids, runs) == ({20}, set())
        assert (tmp_path / keptfile.KEPT_FILE).read_text() == "20\n"
    finally:
        os.close(home_fd)


def test_the_homes_own_database_however_spelled_writes_to_runs(tmp_path: Path) -> None:
    """Another database's runs go below runs/.db-KEY/; pony.db given with `..` or
    through a link is the home's own (review finding: it got a .db- directory)."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "link").symlink_to(home)
    runs = f"{home}/runs"
    assert output_dir(str(home), f"sqlite:///{home}/pony.db") == runs
    assert output_dir(str(home), f"sqlite:///{home}/../home/pony.db") == runs
    assert output_dir(str(home), f"sqlite:///{tmp_path}/link/pony.db") == runs
    other = output_dir(str(home), f"sqlite:///{home}/b.db")
    assert other.startswith(f"{runs}/.db-") and len(other) == len(runs) + 5 + 16
    pg = output_dir(str(home), "postgresql://u:secret@127.0.0.1:5432/x")
    assert pg == output_dir(str(home), "postgresql://u:rotated@127.0.0.1:5432/x")
    assert "secret" not in pg and pg != other
