"""Jobs get a defined environment: never the daemon's secrets; --env-file read at each run;
secret values redacted wherever a job is shown."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.conftest import Pb, wait_for


def finished_run(pb: Pb, job: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def done() -> bool:
        nonlocal found
        found = json.loads(pb("runs", job, "--json").out)
        return bool(found) and found[0]["state"] not in ("queued", "running")

    assert wait_for(done, 60), found
    return found[0]


def environ_of(pb: Pb, job: str) -> dict[str, str]:
    run = finished_run(pb, job)
    assert run["state"] == "succeeded", run
    out = pb("runs", "output", str(run["id"])).out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_jobs_never_see_the_daemons_environment(pb: Pb, home: Path) -> None:
    db = f"sqlite:///{home / 'pony.db'}"
    pb(
        "scheduler",
        "start",
        env={"PONYBUNNY_DB": db, "API_SECRET": "hunter2", "LANG": "C.UTF-8"},
        check=True,
    )
    pb("job", "add", "env", "--manual", "--env", "MINE=1", "--", "env", check=True)
    pb("job", "run", "env", check=True)
    seen = environ_of(pb, "env")
    assert "API_SECRET" not in seen and "PONYBUNNY_DB" not in seen
    assert seen["MINE"] == "1" and seen["LANG"] == "C.UTF-8" and seen["SHELL"] == "/bin/sh"
    assert seen["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert seen["HOME"] and seen["LOGNAME"] == seen["USER"]
    run = finished_run(pb, "env")
    assert seen["PONYBUNNY_RUN_ID"] == str(run["id"]) and seen["PONYBUNNY_ATTEMPT"] == "1"
    assert seen["PONYBUNNY_OCCURRENCE"] == run["occurrence"].replace("+00:00", "Z")


def test_env_file_is_read_at_each_run_and_checked(pb: Pb, tmp_path: Path) -> None:
    secrets = tmp_path / "job.env"
    secrets.write_text('# for the backup\nTOKEN="s3 cr3t"\n\nREGION=eu\n')
    secrets.chmod(0o600)
    pb("scheduler", "start", check=True)
    pb(
        "job",
        "add",
        "withfile",
        "--manual",
        "--env",
        "REGION=us",
        "--env-file",
        str(secrets),
        "--",
        "env",
        check=True,
    )
    assert "s3 cr3t" not in pb("job", "show", "withfile").out
    pb("job", "run", "withfile", check=True)
    seen = environ_of(pb, "withfile")
    assert seen["TOKEN"] == "s3 cr3t" and seen["REGION"] == "eu"  # the file wins over --env
    secrets.chmod(0o666)  # now anyone could plant variables in it
    pb("job", "run", "withfile", check=True)
    run = finished_run(pb, "withfile")
    assert run["state"] == "failed" and "writable by others (mode 0666)" in run["reason"]
    refused = pb("job", "add", "other", "--manual", "--env-file", str(secrets), "--", "true")
    assert refused.code != 0 and refused.err.count("\n") == 1
    assert f"chmod go-w {secrets}" in refused.err
    missing = pb(
        "job", "add", "other", "--manual", "--env-file", str(tmp_path / "nope"), "--", "true"
    )
    assert missing.code != 0 and "No such file" in missing.err
    link = tmp_path / "link.env"
    secrets.chmod(0o600)
    os.symlink(secrets, link)  # a link of our own is followed (another user's is not:
    # tests/integration/test_security.py)
    assert pb("job", "add", "other", "--manual", "--env-file", str(link), "--", "true").code == 0


def test_secret_values_are_redacted(pb: Pb) -> None:
    pb(
        "job",
        "add",
        "db",
        "--manual",
        "--env",
        "DB_PASSWORD=hunter2",
        "--env",
        "USER_=x",
        "--secret",
        "DB_PASSWORD",
        "--",
        "true",
        check=True,
    )
    shown = pb("job", "show", "db").out
    assert "DB_PASSWORD=(secret)" in shown and "hunter2" not in shown and "USER_=x" in shown
    assert "hunter2" not in pb("job", "list", "--json").out
    assert "hunter2" not in pb("job", "show", "db", "--json").out
    bad = pb("job", "edit", "db", "--secret", "not-a-name")
    assert bad.code != 0 and "is not a variable name" in bad.err


def test_a_secret_must_name_a_variable_of_the_job(pb: Pb) -> None:
    """`--secret a` for `--env A=1` would leave A in clear: refused, nothing added."""
    for secret, words in (
        (
            "a",
            "--secret a names no --env variable of the job (did you mean "
            "A? names are case-sensitive)",
        ),
        ("B", "--secret B names no --env variable of the job (its --env variables: A)"),
    ):
        refused = pb(
            "job", "add", "s", "--manual", "--env", "A=1", "--secret", secret, "--", "true"
        )
        assert (
            refused.code == 2 and refused.err == f"Error: {words}; give --env NAME=VALUE with it\n"
        ), refused.all
    assert pb("job", "show", "s").code != 0  # not added
    pb("job", "add", "s", "--manual", "--env", "A=1", "--", "true", check=True)
    # Checked against the job's environment after the edit: stored, or given with it.
    assert pb("job", "edit", "s", "--secret", "Z").code == 2
    pb("job", "edit", "s", "--secret", "A", check=True)
    assert "A=(secret)" in pb("job", "show", "s").out
    pb("job", "edit", "s", "--env", "Z=2", "--secret", "Z", check=True)
    assert "Z=(secret)" in pb("job", "show", "s").out


def test_env_file_cannot_set_the_runs_own_variables(pb: Pb, tmp_path: Path) -> None:
    """A PONYBUNNY_* line in an --env-file was dropped silently (the run's own values
    win): it is refused as --env refuses it, when the job is added and at a run's start
    if the file gains one later."""
    env_file = tmp_path / "job.env"
    env_file.write_text("A=1\nPONYBUNNY_RUN_ID=7\n")
    env_file.chmod(0o600)
    refused = pb("job", "add", "j", "--manual", "--env-file", str(env_file), "--", "env")
    assert refused.code == 2 and refused.err.count("\n") == 1, refused.all
    assert f"--env-file {env_file} line 2: PONYBUNNY_* variables" in refused.err
    assert pb("job", "show", "j").code != 0
    env_file.write_text("A=1\n")
    pb("job", "add", "j", "--manual", "--env-file", str(env_file), "--", "env", check=True)
    pb("scheduler", "start", check=True)
    env_file.write_text("A=1\nPONYBUNNY_JOB=other\n")
    pb("job", "run", "j", check=True)
    run = finished_run(pb, "j")
    assert run["state"] == "failed" and "line 2: PONYBUNNY_* variables" in run["reason"], run
