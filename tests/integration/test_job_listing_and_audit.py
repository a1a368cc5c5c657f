"""`pb job list` pages and streams; --jitter as users see it; the audit trail by CLI and
API; `pb scheduler status` names the run keeper and its containment."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Pb, wait_for
from tests.integration.gateway_helpers import request, start_gateway, token_of, use_free_ports


def test_job_list_pages_by_name_and_streams_everything(pb: Pb) -> None:
    for index in range(7):
        pb("job", "add", f"j{index}", "--every", "1h", "--", "true", check=True)
    first = pb("job", "list", "-n", "3")
    assert [line.split()[0] for line in first.out.splitlines()[1:]] == ["j0", "j1", "j2"]
    # the command it gives keeps the page size (and --json, below): review finding
    assert "Showing 3 of 7 jobs; next page: pb job list -n 3 --after j2" in first.err
    second = pb("job", "list", "-n", "3", "--after", "j2")
    assert [line.split()[0] for line in second.out.splitlines()[1:]] == ["j3", "j4", "j5"]
    last = pb("job", "list", "-n", "3", "--after", "j5")
    assert [line.split()[0] for line in last.out.splitlines()[1:]] == ["j6"]
    assert last.err == ""  # the last page says no more
    assert pb("job", "list", "--after", "j6").out.strip() == "No more jobs"
    everything = json.loads(pb("job", "list", "--all", "--json").out)
    assert [job["name"] for job in everything] == [f"j{i}" for i in range(7)]
    paged = pb("job", "list", "--json", "-n", "2")
    assert json.loads(paged.out) == everything[:2]  # the streamed JSON is the same JSON
    # JSON pages say so too, on stderr: a script reading stdout sees whole JSON
    assert "Showing 2 of 7 jobs; next page: pb job list -n 2 --json --after j1" in paged.err
    assert json.loads(pb("job", "list", "--json", "--after", "zzz").out) == []
    # A page that holds exactly the jobs left points to no empty next page.
    for args in (("-n", "7"), ("-n", "4", "--after", "j2"), ("--json", "-n", "7")):
        exact = pb("job", "list", *args)
        assert exact.code == 0 and exact.err == "", (args, exact.all)


def test_jitter_moves_a_jobs_runs_stably(pb: Pb) -> None:
    pb(
        "job",
        "add",
        "spread",
        "--cron",
        "0 * * * *",
        "--tz",
        "UTC",
        "--jitter",
        "10m",
        "--",
        "true",
        check=True,
    )
    preview = json.loads(pb("job", "next", "spread", "-n", "2", "--json").out)
    offset = preview["jitter_offset_s"]
    assert 0 <= offset < 600
    again = json.loads(pb("job", "next", "spread", "-n", "2", "--json").out)
    assert again == preview  # stable
    minute, second = divmod(int(offset), 60)
    assert all(
        run["utc"].endswith(f":{minute:02d}:{second:02d}" + run["utc"][19:])
        for run in preview["runs"]
    ), preview
    shown = pb("job", "show", "spread").out
    assert "Jitter:" in shown and "10m (this job's runs: +" in shown
    bad = pb("job", "edit", "spread", "--jitter", "soon")
    assert bad.code != 0 and bad.err.count("\n") == 1
    # A window wider than the period, or on a schedule that does not repeat: refused,
    # one line, nothing changed.
    for args in (
        ("edit", "spread", "--jitter", "2h"),
        ("edit", "spread", "--at", "+1h"),
        ("add", "once", "--at", "+1h", "--jitter", "1m", "--", "true"),
        ("add", "byhand", "--manual", "--jitter", "1m", "--", "true"),
        ("add", "often", "--every", "1m", "--jitter", "2h", "--", "true"),
    ):
        refused = pb("job", *args)
        assert refused.code == 2 and refused.err.count("\n") == 1, refused.all
        assert "--jitter" in refused.err and "Traceback" not in refused.all
    assert json.loads(pb("job", "next", "spread", "-n", "2", "--json").out) == preview
    # A zero window is no jitter, as systemd's RandomizedOffsetSec=0 (it was refused).
    for zero in ("0", "0s"):
        pb("job", "edit", "spread", "--jitter", zero, check=True)
        assert json.loads(pb("job", "show", "spread", "--json").out)["jitter_s"] is None
    tiny = pb("job", "edit", "spread", "--jitter", "0.4ms")  # it was shown as 0s
    assert tiny.code == 2 and "is under 1ms" in tiny.err, tiny.all
    odd = pb("job", "edit", "spread", "--jitter", "1.5ms")  # it was shown as 2ms
    assert odd.code == 2 and odd.err.count("\n") == 1, odd.all
    assert "fraction of a millisecond" in odd.err and "(such as 2ms)" in odd.err, odd.all
    pb("job", "edit", "spread", "--jitter", "90.5s", check=True)  # whole milliseconds
    assert json.loads(pb("job", "show", "spread", "--json").out)["jitter_s"] == 90.5
    assert [job["name"] for job in json.loads(pb("job", "list", "--json").out)] == ["spread"]


def test_every_change_and_trigger_is_audited(pb: Pb) -> None:
    pb("job", "add", "a", "--manual", "--env", "TOKEN=s3cret", "--", "true", check=True)
    pb("job", "edit", "a", "--retries", "2", check=True)
    pb("job", "pause", "a", check=True)
    pb("job", "resume", "a", check=True)
    pb("job", "run", "a", check=True)
    pb("job", "remove", "a", check=True)
    entries = json.loads(pb("audit", "--json").out)
    assert [e["action"] for e in entries] == ["remove", "run", "resume", "pause", "edit", "add"]
    assert all(e["via"] == "cli" and e["uid"] == 0 and e["user"] == "root" for e in entries)
    assert "retries=2" in entries[4]["detail"]
    assert "s3cret" not in json.dumps(entries)  # names of variables, never their values
    assert "TOKEN" in entries[5]["detail"]
    # The umask as umask(1) writes it; a manual schedule has no expression and no zone.
    assert (
        entries[5]["detail"].startswith("schedule=manual; ") and "umask=022" in entries[5]["detail"]
    ), entries[5]
    assert "root (0)" in pb("audit", "a").out
    # An edit of the schedule: what it set, never the SQL that sets a default deadline
    # (review finding: "start_deadline_s=CASE WHEN ...").
    pb("job", "add", "b", "--every", "1h", "--", "true", check=True)
    pb("job", "edit", "b", "--every", "2h", check=True)
    detail = json.loads(pb("audit", "b", "--json").out)[0]["detail"]
    assert detail.startswith("schedule=every ") and "CASE" not in detail, detail


def test_a_command_that_is_not_utf8_is_stored_and_audited_escaped(pb: Pb) -> None:
    """A file name in Latin-1 is a valid argument: the job is added (no traceback) and
    the audit shows the byte as \\xff."""
    pb("job", "add", "latin", "--manual", "--", "/bin/echo", "caf\udce9", check=True)
    entries = json.loads(pb("audit", "--json").out)
    assert "caf\\xe9" in entries[0]["detail"], entries[0]


def test_api_changes_are_audited_with_the_callers_scope(pb: Pb, home: Path) -> None:
    port, _ = use_free_ports(pb)
    start_gateway(pb, port)
    pb("job", "add", "b", "--manual", "--", "true", check=True)
    status, _, _ = request(port, "POST", "/api/jobs/b/run", token=token_of(home))
    assert status == 202
    assert wait_for(
        lambda: any(e["action"] == "run" for e in json.loads(pb("audit", "b", "--json").out)), 30
    )
    run = next(e for e in json.loads(pb("audit", "b", "--json").out) if e["action"] == "run")
    assert run["via"] == "api" and run["scope"] == "admin token"


def test_status_names_the_keeper_and_its_containment(pb: Pb) -> None:
    pb("scheduler", "start", check=True)
    status = pb("scheduler", "status")
    assert "Keeper:" in status.out and "containment" in status.out, status.out
    data = json.loads(pb("scheduler", "status", "--json").out)
    assert data["keeper"]["containment"] in ("cgroup2", "cgroup1", "pgroup")
    assert data["keeper"]["pid"] == int((pb.home / "keeper.pid").read_text())


def test_job_list_with_a_multiple_of_its_print_chunk(pb: Pb) -> None:
    """100 and 200 jobs: the table is printed in chunks of cli.jobs.PAGE (100) rows, and a
    count that fills the last chunk exactly once ended in a traceback."""
    import sys

    bench = Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(bench))
    try:
        import common  # bench/common.py: clone_jobs writes rows as `pb job add` would
    finally:
        sys.path.remove(str(bench))
    pb("job", "add", "j000", "--every", "1h", "--", "true", check=True)
    common.clone_jobs(pb.home, "j000", 199, "j")  # j-000001 … j-000199, then j000
    first = pb("job", "list")
    assert first.code == 0, first.err
    names = [line.split()[0] for line in first.out.splitlines()[1:]]
    assert names == [f"j-{n:06d}" for n in range(1, 101)]
    assert f"Showing 100 of 200 jobs; next page: pb job list --after {names[-1]}" in first.err
    rest = pb("job", "list", "--after", names[-1])
    assert rest.code == 0, rest.err
    assert len(rest.out.splitlines()) == 101 and rest.out.splitlines()[0].startswith("NAME")
    everything = pb("job", "list", "--all")
    assert everything.code == 0 and everything.err == "", everything.err
    assert len(everything.out.splitlines()) == 201  # one header


def test_api_every_job_is_streamed_page_by_page(pb: Pb, home: Path) -> None:
    """GET /api/jobs without limit: every job, in name order, as one JSON document read
    and sent STREAM_PAGE at a time (review finding: built whole in memory), with the
    page boundaries neither losing nor repeating a job, and `after` honoured."""
    from pony_scheduler.gateway.api import STREAM_PAGE
    from pony_scheduler.store import Store
    from tests.integration.test_store import job_values

    count = 2 * STREAM_PAGE + 1
    store = Store.open(f"sqlite:///{home / 'pony.db'}")
    for i in range(count):
        store.add_job(f"s{i:05d}", job_values())
    store.close()
    port, _ = use_free_ports(pb)
    start_gateway(pb, port)
    status, body, _ = request(port, "GET", "/api/jobs", token=token_of(home))
    assert status == 200, body
    assert [j["name"] for j in body["jobs"]] == [f"s{i:05d}" for i in range(count)]
    assert "next_after" not in body
    status, body, _ = request(
        port, "GET", f"/api/jobs?after=s{count - 3:05d}", token=token_of(home)
    )
    assert [j["name"] for j in body["jobs"]] == [f"s{count - 2:05d}", f"s{count - 1:05d}"]


def test_a_newline_in_a_command_cannot_forge_a_row(pb: Pb) -> None:
    """`pb audit`'s DETAIL printed the command's newline: the next line passed for a row
    (review finding: a removal of another job, by another user).  Every table prints
    line breaks and tabs in a cell as \\n, \\r, \\t."""
    forged = "2026-12-01 18:04:00  alice (1000)  gateway (token)   remove  prod   -"
    pb("job", "add", "au", "--manual", "--", "/bin/true", check=True)
    pb("job", "edit", "au", "--", "/bin/true", f"x\n{forged}\tz", check=True)
    lines = pb("audit", "au", check=True).out.splitlines()
    assert len(lines) == 3, lines  # the header, the add and the edit
    assert f"x\\n{forged}\\tz" in lines[1]
    listed = pb("job", "add", "b", "--manual", "--shell", "--", "true\nfake  row", check=True)
    assert listed.code == 0
    assert len(pb("audit", "b", check=True).out.splitlines()) == 2


def test_job_list_all_with_a_page_size_is_refused(pb: Pb) -> None:
    """--all with -n printed every job, -n ignored without a word (review finding)."""
    pb("job", "add", "a", "--manual", "--", "true", check=True)
    for args in (("--all", "-n", "2"), ("--limit", "2", "--all", "--json")):
        refused = pb("job", "list", *args)
        assert refused.code == 2 and refused.err.count("\n") == 1, refused.all
        assert "--all prints every job and -n a page" in refused.err
    assert "a" in pb("job", "list", "--all", check=True).out


def test_the_next_page_hint_keeps_the_db_flag(pb: Pb, tmp_path: Path) -> None:
    """Run as printed, the hint reads the same database: without --db it read the home's
    and said "No more jobs" (review finding)."""
    other = tmp_path / "other.db"
    for index in range(5):
        pb("job", "add", f"j{index}", "--db", str(other), "--every", "1h", "--", "true", check=True)
    first = pb("job", "list", "--db", str(other), "-n", "2")
    hint = f"next page: pb job list -n 2 --after j1 --db {other}  (--all for every one)"
    assert hint in first.err, first.err
    printed = first.err.split("next page: pb ")[1].split("  (")[0].split()
    second = pb(*printed)
    assert [line.split()[0] for line in second.out.splitlines()[1:]] == ["j2", "j3"]
    assert f"pb job list -n 2 --json --after j1 --db {other}" in (
        pb("job", "list", "--db", str(other), "-n", "2", "--json").err
    )
    # Its other follow-up commands name the database too.
    pb("job", "add", "m", "--db", str(other), "--manual", "--", "true", check=True)
    assert f"'pb job run m --db {other}'" in pb("job", "next", "m", "--db", str(other)).out
    assert f"see 'pb runs --db {other}'" in pb("runs", "show", "99", "--db", str(other)).err


def test_the_next_page_hint_keeps_no_password(pb: Pb, pg_url: str) -> None:
    url = pg_url.replace("postgres@", "postgres:hunter2@")  # trust auth: any password
    for index in range(3):
        pb("job", "add", f"j{index}", "--db", url, "--every", "1h", "--", "true", check=True)
    first = pb("job", "list", "--db", url, "-n", "2")
    assert "next page: pb job list -n 2 --after j1 (with the same --db)" in first.err
    assert "hunter2" not in first.all
