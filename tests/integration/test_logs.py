"""`pb scheduler logs`: the last lines, and following like `tail -F`."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from tests.conftest import Pb, wait_for


def test_no_log_yet(pb: Pb) -> None:
    result = pb("scheduler", "logs")
    assert result.code == 0 and "No scheduler log yet" in result.err


def test_last_n_lines(pb: Pb, home: Path) -> None:
    (home / "scheduler.log").write_text("".join(f"line {i}\n" for i in range(200)))
    assert pb("scheduler", "logs", "-n", "3").out == "line 197\nline 198\nline 199\n"
    assert pb("scheduler", "logs").out.count("\n") == 50
    assert pb("scheduler", "logs", "-n", "0").out == ""
    bad = pb("scheduler", "logs", "-n", "-1")
    assert bad.code == 2 and bad.err.count("\n") == 1


class Collector:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.text = ""
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.text += line


def test_follow_across_rotation_and_truncation(pb: Pb, home: Path) -> None:
    pb("scheduler", "start", check=True)
    pid = pb.pid()
    log = home / "scheduler.log"
    follower = pb.popen("scheduler", "logs", "-f", "-n", "5", stdout=subprocess.PIPE)
    seen = Collector(follower)
    try:
        assert wait_for(lambda: "Scheduler ready" in seen.text, 60)
        # logrotate's create + postrotate: rename, the daemon reopens on SIGHUP
        log.rename(home / "scheduler.log.1")
        os.kill(pid, signal.SIGHUP)
        assert wait_for(lambda: "Reopened log file" in seen.text, 60), seen.text
        # copytruncate-style truncation: following starts again at the top
        with open(log, "r+") as handle:
            handle.truncate(0)
        with open(log, "a") as handle:
            handle.write("after truncation\n")
        assert wait_for(lambda: "after truncation" in seen.text, 60), seen.text
        follower.send_signal(signal.SIGINT)  # Ctrl-C
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    pb("scheduler", "stop", check=True)
