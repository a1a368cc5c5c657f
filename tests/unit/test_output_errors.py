"""A write error is the output's (one line, exit 1) only when stdout failed: a full disk
met elsewhere stays a traceback, the bug it is."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator

import pytest

from pony_scheduler.cli import _output_error, _StdoutClosed, _StdoutFailed, write_stdout


@contextlib.contextmanager
def _stdout_on_dev_full() -> Iterator[None]:
    """fd 1 on /dev/full and sys.stdout a file on it (inside the test: pytest's capture
    takes fd 1 back between a fixture's setup and the test)."""
    saved, saved_fd = sys.stdout, os.dup(1)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, 1)
    os.close(full)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (restored below)
    try:
        yield
    finally:
        sys.stdout = saved
        os.dup2(saved_fd, 1)
        os.close(saved_fd)


def _caught(action: Callable[[], object]) -> OSError:
    try:
        action()
    except OSError as exc:
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize("data", ["text\n", b"bytes \xff"])
def test_a_failed_write_of_stdout_is_the_outputs(data: str | bytes) -> None:
    with _stdout_on_dev_full():
        error = _caught(lambda: write_stdout(data))
        failure = _output_error(error)
    assert error.errno == errno.ENOSPC
    assert isinstance(failure, _StdoutFailed)


def test_the_same_error_on_another_file_is_not() -> None:
    def full_disk() -> None:
        with open("/dev/full", "w") as other:
            other.write("x")
            other.flush()

    with _stdout_on_dev_full():  # even when stdout would fail too
        error = _caught(full_disk)
        failure = _output_error(error)
    assert error.errno == errno.ENOSPC
    assert failure is None


def test_a_closed_pipe_stays_141() -> None:
    assert isinstance(_output_error(BrokenPipeError(errno.EPIPE, "Broken pipe")), _StdoutClosed)
