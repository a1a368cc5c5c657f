"""contrib/: systemd units, logrotate, the init script, cron and shell completion, checked with
the real tools (systemd-analyze, logrotate, shellcheck, sh) and real daemons in a temporary
PONYBUNNY_HOME.  A test skips only when the tool it needs is not installed."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

from pony_scheduler.cli import cli
from pony_scheduler.config import FIELDS

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"
SYSTEMD = CONTRIB / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
LOGROTATE = CONTRIB / "logrotate" / "pony-scheduler"
INIT = CONTRIB / "init.d" / "pony-scheduler"
CRON = CONTRIB / "cron" / "pony-scheduler"
COMPLETION = CONTRIB / "completion"
SHELLS = ("bash", "zsh", "fish")

PACKAGED_HOME = "/var/lib/pony-scheduler"
PACKAGED_PB = "/usr/bin/pb"
PACKAGED_OWNER = "pony-scheduler pony-scheduler"  # user and group in logrotate's su/create
SERVICES = ("scheduler", "gateway", "debug")
DEFAULT_GRACE = float(FIELDS["shutdown_grace"][2])

# click 8.4.0 and 8.4.1 generate a fish script that fish cannot run (pallets/click#3502).


# --------------------------------------------------------------------------- helpers
def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):  # .ci/run installs every tool: missing there is a failure
            pytest.fail(f"{tool} is not installed (.ci/run must install it)")
        pytest.skip(f"{tool} is not installed")
    return path


def exec_reload(unit: dict[str, list[str]], main_pid: int) -> None:
    """Run ExecReload= as systemd would, $MAINPID filled in."""
    argv = shlex.split(one(unit, "Service.ExecReload").replace("$MAINPID", str(main_pid)))
    if not os.access(argv[0], os.X_OK):
        pytest.skip(f"{argv[0]} is not installed")
    result = run(argv)
    assert result.returncode == 0, result.stderr


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would point pb somewhere else."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PONYBUNNY_", "NOTIFY_SOCKET", "WATCHDOG_", "_PB_COMPLETE"))
    }
    env.update(extra)
    return env


def run(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def service_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for daemons in `home`; the HTTP services get free ports, not the defaults
    (18789, 18790) that a real installation on this machine may be using."""
    return clean_env(
        PONYBUNNY_HOME=str(home),
        PONYBUNNY_GATEWAY_PORT=free_port(),
        PONYBUNNY_DEBUG_PORT=free_port(),
        **extra,
    )


def run_pb(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return run(
        [sys.executable, "-m", "pony_scheduler", *args],
        env=env or clean_env(PONYBUNNY_HOME=str(home)),
        timeout=timeout,
    )


def write_pb_wrapper(directory: Path) -> Path:
    """An executable `pb` that runs this checkout with this interpreter, for tools that need a
    program path (systemd-analyze, the init script, cron lines, completion shims)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pb"
    path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pony_scheduler "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def pb_exe(tmp_path: Path) -> Path:
    return write_pb_wrapper(tmp_path / "bin")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


def proc_state(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2]


def alive(pid: int) -> bool:
    return proc_state(pid) not in (None, "Z")


def wait_for(predicate: Callable[[], object], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def pending_hup(pid: int) -> bool:
    """Whether SIGHUP is pending for `pid` (ShdPnd / SigPnd in /proc/PID/status, proc(5))."""
    fields = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    bit = 1 << (signal.SIGHUP - 1)
    return any(int(fields[name], 16) & bit for name in ("ShdPnd", "SigPnd"))


def read_pid(home: Path, service: str = "scheduler") -> int:
    return int((home / f"{service}.pid").read_text().strip())


def kill_ours(pid: int) -> None:
    """SIGKILL `pid` only if it still runs pony_scheduler (a daemon this test started)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"pony_scheduler" in cmdline and alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not alive(pid), 5)


@pytest.fixture
def daemons() -> Iterator[list[int]]:
    """PIDs of daemons a test started; whatever still runs at the end is killed, by PID."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            kill_ours(pid)


def log_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def logged(path: Path, text: str) -> Callable[[], bool]:
    return lambda: text in log_text(path)


def current_user_group() -> tuple[str, str]:
    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


# --------------------------------------------------------------------------- systemd
def parse_unit(path: Path) -> dict[str, list[str]]:
    """'Section.Key' -> values in order (systemd allows a key more than once)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def one(unit: dict[str, list[str]], key: str) -> str:
    values = unit.get(key, [])
    assert len(values) == 1, f"{key}: expected one value, found {values}"
    return values[0]


def words(unit: dict[str, list[str]], key: str) -> list[str]:
    return [word for value in unit.get(key, []) for word in value.split()]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"unexpected time span {value!r}"
    return float(match[1]) * (60 if match[2] in ("min", "m") else 1)


def unit_environment(unit: dict[str, list[str]], home: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in unit.get("Service.Environment", []):
        for assignment in shlex.split(value):
            key, _, val = assignment.partition("=")
            env[key] = val.replace(PACKAGED_HOME, str(home))
    return env


def verify_units(
    paths: list[Path], *, user: bool = False, runtime_dir: Path | None = None
) -> tuple[int, list[str]]:
    """systemd-analyze verify; returns its exit code and the lines about these units."""
    tool = need("systemd-analyze")
    argv = [tool, *(["--user"] if user else []), "verify", "--man=no"]
    if "--recursive-errors" in run([tool, "--help"]).stdout:  # systemd >= 250
        argv.append("--recursive-errors=no")  # problems of the host's own units are not ours
    argv += map(str, paths)
    env = clean_env(SYSTEMD_LOG_COLOR="0", SYSTEMD_PAGER="cat")
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    result = run(argv, env=env)
    names = {path.name for path in paths} | {str(path.parent) for path in paths}
    output = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in output if any(n in line for n in names)]


def units_for_verify(directory: Path, pb_exe: Path) -> list[Path]:
    """Copies of the units whose ExecStart= names an existing pb (verify checks that)."""
    directory.mkdir()
    copies = []
    for unit in UNITS:
        text = unit.read_text()
        assert PACKAGED_PB in text
        copy = directory / unit.name
        copy.write_text(text.replace(PACKAGED_PB, str(pb_exe)))
        copies.append(copy)
    return copies


def test_there_are_the_four_units() -> None:
    assert [u.name for u in UNITS] == [
        "pony-debug.service",
        "pony-gateway.service",
        "pony-scheduler-forking.service",
        "pony-scheduler.service",
    ]


@pytest.mark.parametrize("unit", [u.name for u in UNITS])
def test_systemd_analyze_verify(unit: str, tmp_path: Path, pb_exe: Path) -> None:
    copies = units_for_verify(tmp_path / "units", pb_exe)
    # All copies share a directory, so Wants=/After= between them resolve as installed.
    code, about_unit = verify_units([c for c in copies if c.name == unit])
    assert code == 0 and not about_unit, "\n".join(about_unit)


def test_systemd_analyze_verify_catches_mistakes(tmp_path: Path, pb_exe: Path) -> None:
    """The check above is not vacuous: a typo and a missing program are both reported."""
    copies = units_for_verify(tmp_path / "units", pb_exe)
    unit = next(c for c in copies if c.name == "pony-scheduler.service")
    unit.write_text(
        unit.read_text()
        .replace("[Service]\n", "[Service]\nKilMode=mixed\n")
        .replace(str(pb_exe), str(tmp_path / "missing" / "pb"))
    )
    code, about_unit = verify_units([unit])
    assert code != 0
    assert any("KilMode" in line for line in about_unit), about_unit
    assert any("missing/pb" in line for line in about_unit), about_unit


def test_user_unit_in_readme_verifies(tmp_path: Path, pb_exe: Path) -> None:
    readme = (SYSTEMD / "README.md").read_text()
    match = re.search(
        r"```ini\n# ~/.config/systemd/user/pony-scheduler.service\n(.*?)```", readme, re.S
    )
    assert match, "the user unit example is missing from contrib/systemd/README.md"
    text = match[1]
    assert "Environment=PONYBUNNY_HOME=%h/.ponybunny" in text and "User=" not in text
    units = tmp_path / "user"
    units.mkdir()
    unit = units / "pony-scheduler.service"
    unit.write_text(text.replace("%h/.local/bin/pb", str(pb_exe)))
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    code, about_unit = verify_units([unit], user=True, runtime_dir=runtime)
    assert code == 0 and not about_unit, "\n".join(about_unit)


def test_scheduler_unit_settings() -> None:
    unit = parse_unit(SYSTEMD / "pony-scheduler.service")
    assert one(unit, "Service.Type") == "notify"
    assert one(unit, "Service.ExecStart") == f"{PACKAGED_PB} scheduler start --foreground"
    assert one(unit, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert seconds(one(unit, "Service.WatchdogSec")) > 0
    assert "pony-gateway.service" in words(unit, "Unit.Wants")
    assert "pony-gateway.service" in words(unit, "Unit.After")
    assert "pony-scheduler-forking.service" in words(unit, "Unit.Conflicts")


@pytest.mark.parametrize("name", ["pony-scheduler.service", "pony-scheduler-forking.service"])
def test_scheduler_units_delegate_a_writable_cgroup(name: str) -> None:
    """Delegate=yes with ProtectControlGroups=yes gave the keeper a read-only
    /sys/fs/cgroup: pgroup containment under the unit that promised a cgroup per run
    (review finding; systemd-analyze verify accepts the pair)."""
    unit = parse_unit(SYSTEMD / name)
    assert one(unit, "Service.Delegate") == "yes"
    assert one(unit, "Service.KillMode") == "process"
    assert words(unit, "Service.ProtectControlGroups") in ([], ["no"])


def test_forking_unit_settings() -> None:
    unit = parse_unit(SYSTEMD / "pony-scheduler-forking.service")
    assert one(unit, "Service.Type") == "forking"
    assert one(unit, "Service.PIDFile") == f"{PACKAGED_HOME}/scheduler.pid"
    argv = shlex.split(one(unit, "Service.ExecStart"))
    assert argv[:3] == [PACKAGED_PB, "scheduler", "start"] and "--foreground" not in argv
    assert one(unit, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert "pony-scheduler.service" in words(unit, "Unit.Conflicts")
    assert "pony-gateway.service" in words(unit, "Unit.Wants")


@pytest.mark.parametrize("service", ["gateway", "debug"])
def test_gateway_and_debug_unit_settings(service: str) -> None:
    unit = parse_unit(SYSTEMD / f"pony-{service}.service")
    assert one(unit, "Service.ExecStart") == f"{PACKAGED_PB} {service} start --foreground"
    assert one(unit, "Service.Type") == "notify"  # the shared lifecycle sends READY=1
    # The gateway must not pull in the scheduler (the scheduler wants the gateway).
    assert "pony-scheduler.service" not in words(unit, "Unit.Wants")


@pytest.mark.parametrize("unit_path", UNITS, ids=[u.name for u in UNITS])
def test_every_unit_runs_as_the_service_user_in_its_home(unit_path: Path) -> None:
    unit = parse_unit(unit_path)
    assert one(unit, "Service.User") == "pony-scheduler"
    assert one(unit, "Service.Group") == "pony-scheduler"
    assert one(unit, "Service.StateDirectory") == "pony-scheduler"
    assert f"PONYBUNNY_HOME={PACKAGED_HOME}" in unit["Service.Environment"]
    assert one(unit, "Service.Restart") == "on-failure"
    if "scheduler" in unit_path.name:
        # The run keeper and the jobs are never signalled by systemd: on stop the scheduler
        # drains them (SIGTERM), on restart it hands them over (SIGUSR2), docs/KEEPER.md.
        assert one(unit, "Service.KillMode") == "process"
        assert one(unit, "Service.KillSignal") == "SIGTERM"
        assert one(unit, "Service.RestartKillSignal") == "SIGUSR2"
        assert one(unit, "Service.Delegate") == "yes"  # a cgroup per run below the unit's
    else:
        # SIGTERM to the daemon only; whatever is left gets SIGKILL.
        assert one(unit, "Service.KillMode") == "mixed"
    assert one(unit, "Install.WantedBy") == "multi-user.target"
    if "scheduler" in unit_path.name:
        # Room for the drain (shutdown_grace) plus terminating jobs and closing the database.
        assert seconds(one(unit, "Service.TimeoutStopSec")) >= DEFAULT_GRACE + 10


NOTIFY_UNITS = [u.name for u in UNITS if parse_unit(u)["Service.Type"] == ["notify"]]


@pytest.mark.parametrize("unit_name", NOTIFY_UNITS)
def test_notify_unit_behaves_as_systemd_expects(
    unit_name: str, tmp_path: Path, home: Path, daemons: list[int]
) -> None:
    """Run ExecStart= the way systemd runs a Type=notify service: READY=1 with the main PID
    once serving, WATCHDOG=1 when WatchdogSec= is set, ExecReload= (SIGHUP) is survived,
    SIGTERM stops it with exit status 0 within TimeoutStopSec= and removes the pid file."""
    unit = parse_unit(SYSTEMD / unit_name)
    argv = shlex.split(one(unit, "Service.ExecStart"))
    assert argv[0] == PACKAGED_PB
    service = argv[1]
    watchdog = unit.get("Service.WatchdogSec")
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        env = {
            **service_env(home),
            **unit_environment(unit, home),
            "NOTIFY_SOCKET": str(notify_path),
        }
        if watchdog:  # WatchdogSec=30s means a ping every 15 s; 0.4 s keeps the test short
            env["WATCHDOG_USEC"] = "400000"
        messages: list[str] = []

        def received(word: str) -> Callable[[], bool]:
            def check() -> bool:
                with contextlib.suppress(TimeoutError):
                    messages.append(notify.recv(4096).decode())
                return any(word in m.split("\n") for m in messages)

            return check

        journal = tmp_path / "journal"
        with journal.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pony_scheduler", *argv[1:]],
                env=env,
                cwd=home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        daemons.append(proc.pid)
        try:
            assert wait_for(received("READY=1"), 20), (messages, log_text(journal))
            ready = next(m for m in messages if "READY=1" in m.split("\n"))
            assert f"MAINPID={proc.pid}" in ready.split("\n")
            assert read_pid(home, service) == proc.pid  # the pid file works in this mode too
            if watchdog:
                assert wait_for(received("WATCHDOG=1"), 5), messages

            # ExecReload= (SIGHUP) must not stop it: killed by SIGHUP, it would not exit 0.
            exec_reload(unit, proc.pid)
            proc.send_signal(signal.SIGTERM)  # systemctl stop
            code = proc.wait(timeout=seconds(one(unit, "Service.TimeoutStopSec")))
            if service == "scheduler":  # issue 2: STOPPING=1 on SIGTERM
                assert wait_for(received("STOPPING=1"), 5), messages
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, "a clean stop must exit 0, or Restart=on-failure would restart it"
    assert not (home / f"{service}.pid").exists()


def test_forking_unit_behaves_as_systemd_expects(home: Path, daemons: list[int]) -> None:
    """Type=forking: when ExecStart= returns, PIDFile= exists and names the running daemon;
    ExecReload= reopens the log; SIGTERM to the main PID stops it and removes the pid file."""
    unit = parse_unit(SYSTEMD / "pony-scheduler-forking.service")
    argv = shlex.split(one(unit, "Service.ExecStart"))
    pid_file = Path(one(unit, "Service.PIDFile").replace(PACKAGED_HOME, str(home)))
    result = run(
        [sys.executable, "-m", "pony_scheduler", *argv[1:]],
        env=clean_env(**unit_environment(unit, home)),
        cwd=home,
    )
    with contextlib.suppress(OSError, ValueError):
        daemons.append(read_pid(home))
    assert result.returncode == 0, result.stdout + result.stderr
    main_pid = int(pid_file.read_text().strip())  # no waiting: it must be there already
    assert alive(main_pid)
    log = home / "scheduler.log"

    exec_reload(unit, main_pid)
    assert wait_for(lambda: "Reopened log file" in log_text(log)), log_text(log)

    os.kill(main_pid, signal.SIGTERM)
    assert wait_for(lambda: not alive(main_pid), seconds(one(unit, "Service.TimeoutStopSec")))
    assert not pid_file.exists()
    assert "Scheduler stopped (exit status 0)" in log_text(log)


# --------------------------------------------------------------------------- pb command lines
def contrib_command_lines() -> list[tuple[str, list[str]]]:
    """Every `pb ...` command line that contrib/ asks systemd or cron to run."""
    lines: list[tuple[str, list[str]]] = []
    for unit in UNITS:
        argv = shlex.split(one(parse_unit(unit), "Service.ExecStart"))
        assert argv[0] == PACKAGED_PB
        lines.append((unit.name, argv[1:]))
    for number, line in enumerate(CRON.read_text().splitlines(), start=1):
        match = re.search(r"(?:^|\s)pb (scheduler .*)$", line)
        if match:
            lines.append((f"cron:{number}", shlex.split(match[1])))
    return lines


def parse_pb(args: list[str]) -> click.Context:
    """Parse a pb command line exactly as Click would (options and values) without running it."""
    command: click.Command = cli
    ctx = command.make_context("pb", list(args))
    while isinstance(command, click.Group):
        pending = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
        name, sub, rest = command.resolve_command(ctx, [*pending, *ctx.args])
        assert name is not None and sub is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return ctx


COMMAND_LINES = contrib_command_lines()


@pytest.mark.parametrize("where,args", COMMAND_LINES, ids=[where for where, _ in COMMAND_LINES])
def test_contrib_pb_command_lines_are_valid(where: str, args: list[str]) -> None:
    """What systemd and cron will run parses with the real CLI: commands, options, values."""
    ctx = parse_pb(args)
    assert ctx.command.name == args[1]


# --------------------------------------------------------------------------- logrotate
def localized_logrotate(text: str, home: Path) -> str:
    """The shipped configuration pointed at a temporary home, as the current user."""
    assert text.count(PACKAGED_HOME) >= 6 and text.count(PACKAGED_OWNER) == 2
    user, group = current_user_group()
    return text.replace(PACKAGED_HOME, str(home)).replace(PACKAGED_OWNER, f"{user} {group}")


def user_example(text: str, home: Path) -> str:
    """The commented per-user example, uncommented and pointed at `home`."""
    lines = text.splitlines()
    start = lines.index("# /home/alice/.ponybunny/scheduler.log")
    block = []
    for line in lines[start:]:
        block.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        if line == "# }":
            break
    return "\n".join(block).replace("/home/alice/.ponybunny", str(home)) + "\n"


def postrotate_scripts(text: str) -> list[str]:
    return re.findall(r"^\s*postrotate\n(.*?)^\s*endscript", text, re.S | re.M)


def logrotate_debug(conf: Path, state: Path) -> tuple[int, list[str]]:
    result = run([need("logrotate"), "-d", "-f", "-s", str(state), str(conf)])
    output = (result.stdout + result.stderr).splitlines()
    problems = [
        line
        for line in output
        if line.startswith(("error", "warning")) and "debug mode" not in line
    ]
    return result.returncode, problems


def test_logrotate_config_settings() -> None:
    text = LOGROTATE.read_text()
    config = "\n".join(line.split("#")[0] for line in text.splitlines())
    directives = set(config.split())
    for needed in (
        "missingok",
        "notifempty",
        "compress",
        "delaycompress",
        "sharedscripts",
        "postrotate",
        "endscript",
    ):
        assert needed in directives, needed
    assert "copytruncate" not in config
    assert "create 0640 pony-scheduler pony-scheduler" in config
    for service in (*SERVICES, "keeper"):
        assert f"{PACKAGED_HOME}/{service}.log" in config
        assert f"{PACKAGED_HOME}/{service}.pid" in config
    assert "kill -HUP" in config


def test_logrotate_debug_run(tmp_path: Path, home: Path) -> None:
    for service in SERVICES:
        (home / f"{service}.log").write_text(f"{service} line\n")
    conf = tmp_path / "logrotate.conf"
    conf.write_text(localized_logrotate(LOGROTATE.read_text(), home))
    code, problems = logrotate_debug(conf, tmp_path / "state")
    assert code == 0 and not problems, problems


def test_logrotate_user_example_debug_run(tmp_path: Path, home: Path) -> None:
    (home / "scheduler.log").write_text("line\n")
    conf = tmp_path / "user-logrotate.conf"
    conf.write_text(user_example(LOGROTATE.read_text(), home))
    assert "kill -HUP" in conf.read_text()
    code, problems = logrotate_debug(conf, tmp_path / "state")
    assert code == 0 and not problems, problems


def test_logrotate_debug_run_catches_mistakes(tmp_path: Path, home: Path) -> None:
    (home / "scheduler.log").write_text("line\n")
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        localized_logrotate(LOGROTATE.read_text(), home).replace(
            "notifempty", "notifempty\n    copytrunc"
        )
    )
    _, problems = logrotate_debug(conf, tmp_path / "state")
    assert any("copytrunc" in line for line in problems), problems


READY_LINE = {
    "gateway": "Gateway ready",
    "scheduler": "Scheduler ready",
    "debug": "Debug Server ready",
}


def test_real_logrotate_run_moves_the_daemons_to_the_new_files(tmp_path: Path, home: Path) -> None:
    """All three daemons in the background, the shipped configuration, a forced rotation:
    each daemon writes to its new NAME.log afterwards, and the rotated file stays put."""
    logrotate = need("logrotate")
    env = service_env(home)
    log = {service: home / f"{service}.log" for service in SERVICES}
    rotated = {service: home / f"{service}.log.1" for service in SERVICES}
    pids: dict[str, int] = {}
    try:
        for service in ("gateway", "scheduler", "debug"):
            started = run_pb(home, service, "start", env=env)
            with contextlib.suppress(OSError, ValueError):
                pids[service] = read_pid(home, service)
            assert started.returncode == 0, started.stdout + started.stderr
        for service in SERVICES:
            assert wait_for(logged(log[service], READY_LINE[service])), service

        conf = tmp_path / "logrotate.conf"
        conf.write_text(localized_logrotate(LOGROTATE.read_text(), home))
        state = tmp_path / "logrotate.state"
        result = run([logrotate, "-f", "-s", str(state), str(conf)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stderr == ""

        for service in SERVICES:
            # create: a new log with the configured mode and owner; the old one renamed
            # and, with delaycompress, not compressed yet.
            assert READY_LINE[service] in log_text(rotated[service])
            assert stat.S_IMODE(log[service].stat().st_mode) == 0o640
            assert log[service].stat().st_uid == os.getuid()
            # postrotate's SIGHUP: the daemon reopened NAME.log and logs to the new file.
            assert wait_for(logged(log[service], "Reopened log file")), (
                service,
                log_text(log[service]),
            )
            assert "Reopened log file" not in log_text(rotated[service])

        # Whatever the scheduler logs now lands in the new file; the rotated one stays put.
        size = rotated["scheduler"].stat().st_size
        os.kill(pids["scheduler"], signal.SIGHUP)
        assert wait_for(lambda: log_text(log["scheduler"]).count("Reopened log file") == 2)
        assert rotated["scheduler"].stat().st_size == size

        # A second rotation compresses the first (delaycompress) and moves them again.
        result = run([logrotate, "-f", "-s", str(state), str(conf)])
        assert result.returncode == 0, result.stdout + result.stderr
        for service in SERVICES:
            assert (home / f"{service}.log.2.gz").exists()
            assert wait_for(logged(log[service], "Reopened log file")), service
            assert alive(pids[service])

        stopped = run_pb(home, "scheduler", "stop", env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "Scheduler stopped (exit status 0)" in log_text(log["scheduler"])
        assert "Scheduler stopped" not in log_text(rotated["scheduler"])
        for service in ("debug", "gateway"):
            assert run_pb(home, service, "stop", env=env).returncode == 0
    finally:
        for pid in pids.values():
            kill_ours(pid)


def test_real_logrotate_run_moves_the_keeper_to_its_new_log(tmp_path: Path, home: Path) -> None:
    """The run keeper (started by the scheduler in every mode) logs to keeper.log: rotated
    with the others, it reopens its log on the postrotate SIGHUP."""
    from pony_scheduler.keeper.client import ensure_keeper

    logrotate = need("logrotate")
    client = ensure_keeper(home, idle_exit_s=60)
    try:
        log = home / "keeper.log"
        assert wait_for(logged(log, "ready"))
        conf = tmp_path / "logrotate.conf"
        conf.write_text(localized_logrotate(LOGROTATE.read_text(), home))
        result = run([logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ready" in log_text(home / "keeper.log.1")
        assert stat.S_IMODE(log.stat().st_mode) == 0o640
        assert wait_for(logged(log, "Reopened log file")), log_text(log)
        assert client.status().pid == client.welcome.pid  # SIGHUP did not stop it
    finally:
        client.release_exit(10)
        client.close()


def test_logrotate_never_signals_a_foreign_or_dead_pid(tmp_path: Path, home: Path) -> None:
    """Missing daemons are no error, and a pid file left by a crash whose PID now belongs to
    another program must not get that program killed by SIGHUP."""
    logrotate = need("logrotate")
    for service in SERVICES:
        (home / f"{service}.log").write_text(f"{service} line\n")
    # The bystander blocks SIGHUP (the mask survives exec), so a SIGHUP sent to it stays
    # pending, visible in /proc at once: no sleep, and no race with its death.
    sleep = shutil.which("sleep") or "/bin/sleep"
    bystander_pid = os.posix_spawn(
        sleep, ["sleep", "60"], dict(os.environ), setsigmask={signal.SIGHUP}
    )
    try:
        finished = subprocess.Popen(["true"])
        finished.wait()
        (home / "scheduler.pid").write_text(f"{bystander_pid}\n")  # PID reused by another program
        (home / "gateway.pid").write_text(f"{finished.pid}\n")  # dead
        (home / "debug.pid").write_text("garbage\n")
        conf = tmp_path / "logrotate.conf"
        conf.write_text(localized_logrotate(LOGROTATE.read_text(), home))
        result = run([logrotate, "-f", "-s", str(tmp_path / "state"), str(conf)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stderr == ""
        assert not pending_hup(bystander_pid), "the bystander got SIGHUP"
        for service in SERVICES:
            assert (home / f"{service}.log.1").exists()
    finally:
        os.kill(bystander_pid, signal.SIGKILL)
        os.waitpid(bystander_pid, 0)


# --------------------------------------------------------------------------- shell scripts
def shell_scripts(tmp_dir: Path) -> dict[str, Path]:
    """Every shell script in contrib/, the logrotate scripts written out as files."""
    scripts = {"init.d/pony-scheduler": INIT, "completion/generate.sh": COMPLETION / "generate.sh"}
    text = LOGROTATE.read_text()
    bodies = postrotate_scripts(text) + postrotate_scripts(user_example(text, Path("/h")))
    assert len(bodies) == 2
    for number, body in enumerate(bodies):
        path = tmp_dir / f"postrotate-{number}.sh"
        path.write_text("#!/bin/sh\n" + body)
        scripts[f"logrotate postrotate #{number}"] = path
    return scripts


SCRIPT_NAMES = [
    "init.d/pony-scheduler",
    "completion/generate.sh",
    "logrotate postrotate #0",
    "logrotate postrotate #1",
]


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_shellcheck(name: str, tmp_path: Path) -> None:
    shellcheck = need("shellcheck")
    script = shell_scripts(tmp_path)[name]
    result = run([shellcheck, "--shell=sh", "--severity=style", str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_sh_n(name: str, tmp_path: Path) -> None:
    script = shell_scripts(tmp_path)[name]
    result = run([need("sh"), "-n", str(script)])
    assert result.returncode == 0, result.stderr


def test_scripts_are_executable() -> None:
    for script in (INIT, COMPLETION / "generate.sh"):
        assert os.access(script, os.X_OK), f"chmod +x {script}"
        assert script.read_text().startswith("#!/bin/sh\n")


# --------------------------------------------------------------------------- init script
def lsb_header(text: str) -> dict[str, str]:
    block = text.split("### BEGIN INIT INFO\n", 1)[1].split("### END INIT INFO\n", 1)[0]
    fields: dict[str, str] = {}
    key = ""
    for line in block.splitlines():
        assert line.startswith("#"), line
        match = re.match(r"# ([A-Za-z-]+):\s*(.*)$", line)
        if match:
            key = match[1]
            fields[key] = match[2]
        else:
            assert re.match(r"#(\t|  )", line), f"bad continuation line: {line!r}"
            fields[key] += " " + line[1:].strip()
    return fields


def test_init_script_lsb_header() -> None:
    fields = lsb_header(INIT.read_text())
    assert fields["Provides"] == "pony-scheduler"
    for key in ("Required-Start", "Required-Stop", "Short-Description", "Description"):
        assert fields.get(key), key
    assert "$remote_fs" in fields["Required-Start"] and "$network" in fields["Required-Start"]
    assert fields["Default-Start"].split() == ["2", "3", "4", "5"]
    assert fields["Default-Stop"].split() == ["0", "1", "6"]


def init_script(
    action: str, home: Path, pb_path: Path | str, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = clean_env(PB=str(pb_path), PONYBUNNY_HOME=str(home), PONY_USER="", **extra)
    return run([need("sh"), str(INIT), action], env=env)


def test_init_script_status_with_nothing_running_exits_3(home: Path, pb_exe: Path) -> None:
    result = init_script("status", home, pb_exe)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Not running" in result.stdout


def test_init_script_round_trip(home: Path, pb_exe: Path, daemons: list[int]) -> None:
    log = home / "scheduler.log"
    started = init_script("start", home, pb_exe)
    with contextlib.suppress(OSError, ValueError):
        daemons.append(read_pid(home))
    assert started.returncode == 0, started.stdout + started.stderr
    assert "Starting pony-scheduler: done" in started.stdout
    pid = read_pid(home)
    assert init_script("status", home, pb_exe).returncode == 0

    again = init_script("start", home, pb_exe)  # LSB: start on a running service succeeds
    assert again.returncode == 0 and "already running" in again.stdout
    assert read_pid(home) == pid

    assert init_script("reload", home, pb_exe).returncode == 0
    assert wait_for(lambda: "Reopened log file" in log_text(log)), log_text(log)

    restarted = init_script("force-reload", home, pb_exe)
    with contextlib.suppress(OSError, ValueError):
        daemons.append(read_pid(home))
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert not alive(pid) and read_pid(home) != pid
    pid = read_pid(home)

    stopped = init_script("stop", home, pb_exe)
    assert stopped.returncode == 0 and "Stopping pony-scheduler: done" in stopped.stdout
    assert not alive(pid) and not (home / "scheduler.pid").exists()
    assert init_script("status", home, pb_exe).returncode == 3
    assert init_script("stop", home, pb_exe).returncode == 0  # LSB: stopping a stopped one
    assert init_script("reload", home, pb_exe).returncode == 7  # LSB: not running
    assert init_script("try-restart", home, pb_exe).returncode == 0
    assert not (home / "scheduler.pid").exists()


def test_init_script_dead_daemon_with_pid_file_is_status_1(home: Path, pb_exe: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    (home / "scheduler.pid").write_text(f"{finished.pid}\n")
    assert init_script("status", home, pb_exe).returncode == 1


def test_init_script_usage_and_missing_pb(home: Path, tmp_path: Path) -> None:
    assert init_script("frobnicate", home, tmp_path / "pb").returncode == 2
    assert init_script("", home, tmp_path / "pb").returncode == 2
    missing = tmp_path / "not-installed" / "pb"
    assert init_script("status", home, missing).returncode == 4  # LSB status: unknown
    assert init_script("start", home, missing).returncode == 5  # LSB: not installed
    assert init_script("stop", home, missing).returncode == 5


STUB = """#!/bin/sh
echo "stub user=$(id -un) home=$PONYBUNNY_HOME args=$*"
case $2 in
    status) exit "${STUB_STATUS:-3}" ;;
    start) exit "${STUB_START:-0}" ;;
esac
exit 0
"""


@pytest.fixture
def stub_dir() -> Iterator[Path]:
    """A world-readable directory (tmp_path's parents are 0700), so that the user the init
    script switches to may run the stub."""
    path = Path(tempfile.mkdtemp(prefix="pony-init-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_init_script_runs_pb_as_the_service_user_and_maps_exit_codes(stub_dir: Path) -> None:
    stub = stub_dir / "pb"
    stub.write_text(STUB)
    stub.chmod(0o755)
    home = stub_dir / "home"
    if os.getuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user, group = nobody.pw_name, grp.getgrgid(nobody.pw_gid).gr_name
        switch = {"PONY_USER": user, "PONY_GROUP": group}
    else:  # not root: pb runs as the caller, whoever PONY_USER names
        user, switch = current_user_group()[0], {"PONY_USER": "pony-scheduler"}

    def init(action: str, **extra: str) -> subprocess.CompletedProcess[str]:
        env = clean_env(PB=str(stub), PONYBUNNY_HOME=str(home), **switch, **extra)
        return run([need("sh"), str(INIT), action], env=env)

    for pb_code, lsb_code in ((0, 0), (1, 1), (3, 3), (4, 4), (2, 4), (75, 4)):
        result = init("status", STUB_STATUS=str(pb_code))
        assert result.returncode == lsb_code, (pb_code, result.stdout + result.stderr)
        assert f"stub user={user} home={home} args=scheduler status" in result.stdout

    started = init("start", START_OPTS="--db /srv/pony/pony.db")
    assert started.returncode == 0, started.stdout + started.stderr
    assert (
        f"stub user={user} home={home} args=scheduler start --quiet --timeout 30 "
        "--db /srv/pony/pony.db"
    ) in started.stdout
    if os.getuid() == 0:  # the init script made the home for the service user
        info = home.stat()
        assert pwd.getpwuid(info.st_uid).pw_name == user
        assert stat.S_IMODE(info.st_mode) == 0o750

    failed = init("start", STUB_START="75")  # pb: not ready within --timeout
    assert failed.returncode == 1 and "failed" in failed.stdout
    running = init("start", STUB_STATUS="0")
    assert running.returncode == 0 and "args=scheduler start" not in running.stdout


# --------------------------------------------------------------------------- cron
def cron_entries() -> list[tuple[str, str, str]]:
    """(schedule, user, command) for each job line; environment lines are checked too."""
    entries = []
    for line in CRON.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.match(r"^[A-Z_]+=", line):
            continue
        match = re.match(r"^(@reboot|(?:\S+\s+){4}\S+)\s+(\S+)\s+(.+)$", line)
        assert match, f"not a cron.d line: {line!r}"
        entries.append((match[1], match[2], match[3]))
    return entries


def test_cron_file_format() -> None:
    entries = cron_entries()
    schedules = [schedule for schedule, _, _ in entries]
    assert "@reboot" in schedules and len(entries) == 2
    for schedule, user, command in entries:
        assert user == "pony-scheduler"
        assert command.startswith("pb scheduler start ") and "--quiet" in command
        if schedule != "@reboot":
            assert "--force" in command
            fields = schedule.split()
            assert fields[2:] == ["*", "*", "*"], "nightly"
    text = CRON.read_text()
    assert f"PONYBUNNY_HOME={PACKAGED_HOME}" in text.splitlines()
    for _, _, command in entries:  # the user crontab example runs the same commands
        assert re.search(rf"^#\s+\S+(\s+\S+){{0,4}}\s+{re.escape(command)}$", text, re.M)


def test_cron_commands_work_as_cron_runs_them(home: Path, pb_exe: Path, daemons: list[int]) -> None:
    """Run each line with sh -c and the file's environment: silent on success (cron mails
    any output), and the nightly one replaces the running daemon."""
    env_lines = dict(
        line.split("=", 1) for line in CRON.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    env = clean_env(**env_lines)
    env["PONYBUNNY_HOME"] = env["PONYBUNNY_HOME"].replace(PACKAGED_HOME, str(home))
    env["PATH"] = f"{pb_exe.parent}:{env['PATH']}"
    commands = {schedule: command for schedule, _, command in cron_entries()}
    at_boot = commands.pop("@reboot")
    (nightly,) = commands.values()

    def cron(command: str) -> int:
        result = run([env_lines["SHELL"], "-c", command], env=env, cwd=home)
        with contextlib.suppress(OSError, ValueError):
            daemons.append(read_pid(home))
        assert result.returncode == 0 and result.stdout + result.stderr == "", result
        return read_pid(home)

    first = cron(at_boot)
    second = cron(nightly)
    assert second != first and not alive(first) and alive(second)
    assert run_pb(home, "scheduler", "stop").returncode == 0
    assert not alive(second)


# --------------------------------------------------------------------------- completion
def generated(shell: str) -> str:
    result = run(
        [sys.executable, "-m", "pony_scheduler"], env=clean_env(_PB_COMPLETE=f"{shell}_source")
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def completion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scripts as a packager makes them: generate.sh with the installed pb."""
    out = tmp_path_factory.mktemp("completion")
    result = run(
        [need("sh"), str(COMPLETION / "generate.sh"), str(out)],
        env=clean_env(PB=f"{sys.executable} -m pony_scheduler"),
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("shell", SHELLS)
def test_generate_script_writes_what_pb_generates(completion_dir: Path, shell: str) -> None:
    assert (completion_dir / f"pb.{shell}").read_text() == generated(shell)


def completion_env(pb_exe: Path) -> dict[str, str]:
    return clean_env(PATH=f"{pb_exe.parent}:{os.environ['PATH']}")


def test_bash_completion_completes(pb_exe: Path, completion_dir: Path) -> None:
    bash = need("bash")
    script = (
        f"source {shlex.quote(str(completion_dir / 'pb.bash'))}\n"
        "complete -p pb\n"
        "COMP_WORDS=(pb scheduler st); COMP_CWORD=2; _pb_completion pb\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = run([bash, "--norc", "--noprofile", "-c", script], env=completion_env(pb_exe))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "_pb_completion" in lines[0]
    assert sorted(lines[1:]) == ["start", "status", "stop"]


def test_zsh_completion_loads(pb_exe: Path, completion_dir: Path) -> None:
    zsh = need("zsh")
    path = completion_dir / "pb.zsh"
    syntax = run([zsh, "-n", str(path)])
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    # -D: no ~/.zcompdump; -u: do not question the ownership of fpath directories.
    script = (
        f"autoload -Uz compinit && compinit -u -D && "
        f"source {shlex.quote(str(path))} && print -r -- $_comps[pb]"
    )
    result = run([zsh, "-f", "-c", script], env=completion_env(pb_exe))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "_pb_completion", result.stdout + result.stderr


def test_fish_completion_completes(pb_exe: Path, completion_dir: Path) -> None:
    fish = need("fish")
    path = completion_dir / "pb.fish"
    script = f"source {shlex.quote(str(path))}; complete -C 'pb scheduler st'"
    result = run([fish, "--no-config", "-c", script], env=completion_env(pb_exe))
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert sorted(line.split("\t")[0] for line in result.stdout.splitlines()) == [
        "start",
        "status",
        "stop",
    ]


# --------------------------------------------------------------------------- README
def test_contrib_readme_lists_every_file() -> None:
    readme = (CONTRIB / "README.md").read_text()
    for path in sorted(CONTRIB.rglob("*")):
        if path.is_file() and path != CONTRIB / "README.md":
            relative = path.relative_to(CONTRIB).as_posix()
            assert f"`{relative}`" in readme, f"contrib/README.md does not mention {relative}"
