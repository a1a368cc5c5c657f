"""A run's output on the terminal or a pipe: `pb runs output` and `pb job run --follow`."""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

import click

from pony_scheduler.cli import write_stdout
from pony_scheduler.cli.common import get_run, pb_again, shown
from pony_scheduler.cli.options import settings_from
from pony_scheduler.errors import PonyError
from pony_scheduler.files import NEVER_CREATED


def missing_file(run: dict[str, object]) -> str:
    """Why the output file of `run` (a runs row as get_run gives it), which printed
    something, is not there: "never created" or "removed"."""
    return "never created" if NEVER_CREATED in str(run.get("reason") or "") else "removed"


def output_path_of(ctx: click.Context, run_id: int, follow_: bool) -> str | None:
    """Where run `run_id` writes its output; with `follow_`, waits for a queued or running
    run's path (written within moments of its start).  None if it has none and never will."""
    run = get_run(ctx, run_id)
    while not run.get("output_path") and follow_ and run["state"] in ("queued", "running"):
        time.sleep(0.2)
        run = get_run(ctx, run_id)
    return run.get("output_path") or None


def print_output(ctx: click.Context, run_id: int, path: str, follow_: bool, raw: bool) -> None:
    if follow_ and not _ours(ctx, path):
        _follow_elsewhere(ctx, run_id, path, raw)
        return
    handle = open_output(ctx, run_id, path, follow_)
    if handle is None:
        return
    out = OutputWriter(raw or not sys.stdout.isatty())
    while True:
        with handle:
            while True:
                out.write(handle.read())
                run = get_run(ctx, run_id)
                if not follow_ or run["state"] not in ("queued", "running"):
                    out.write(handle.read(), final=True)
                    _say_if_incomplete(run)
                    return
                if _replaced(handle, path):
                    break  # the keeper set aside a file that was not the run's
                time.sleep(0.2)
        reopened = open_output(ctx, run_id, path, follow_)
        if reopened is None:
            return
        handle = reopened


def _replaced(handle: BinaryIO, path: str) -> bool:
    """Does `path` now name another file than the one `handle` reads?"""
    try:
        now, held = os.stat(path, follow_symlinks=False), os.fstat(handle.fileno())
    except OSError:
        return False
    return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)


def _say_if_incomplete(run: dict[str, object]) -> None:
    """On stderr, after the bytes: the file holds less than the run wrote (a full disk,
    the 10 MiB cap), so that it is not taken for all of it (review finding)."""
    reason = str(run.get("reason") or "")
    for marker in ("output incomplete", "output truncated"):
        if marker in reason:
            note = reason[reason.index(marker) :]
            click.echo(f"⚠ Run {run['id']}: {shown(note, raw=False)}", err=True)
            return


def _ours(ctx: click.Context, path: str) -> bool:
    from pony_scheduler.files import below_runs

    return below_runs(settings_from(ctx, db=ctx.meta.get("db")).home, path) is not None


def _follow_elsewhere(ctx: click.Context, run_id: int, path: str, raw: bool) -> None:
    """Following a run whose file is in another home (a host sharing the database): its
    state is followed here, and its last 4 KiB (from the database) printed at its end."""
    click.echo(
        f"Run {run_id} writes its output in another home ({path}); it is read there: "
        "here, its last 4 KiB once it ends",
        err=True,
    )
    run = get_run(ctx, run_id, exact_tail=True)
    while run["state"] in ("queued", "running"):
        time.sleep(0.2)
        run = get_run(ctx, run_id, exact_tail=True)
    tail = run.get("output_tail") or b""
    OutputWriter(raw or not sys.stdout.isatty()).write(
        tail if isinstance(tail, bytes) else str(tail).encode(), final=True
    )


class OutputWriter:
    """A run's output on our stdout: the exact bytes when they go to a file or a pipe (or
    with --raw); on a terminal, text with control characters and escape sequences made
    visible.  Decoding is incremental, so a character split between two reads while
    following is never broken in two."""

    def __init__(self, exact: bool) -> None:
        import codecs

        self.exact = exact
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes, final: bool = False) -> None:
        if self.exact:
            write_stdout(data)
        else:
            write_stdout(shown(self.decoder.decode(data, final=final), raw=False))


def open_output(ctx: click.Context, run_id: int, path: str, follow_: bool) -> BinaryIO | None:
    """The run's output file once it exists; None for a run that printed nothing.

    The file is created at the run's first byte of output: it may not exist yet.  Only a
    file below HOME/runs is opened, never through a link (files.open_run_output).
    """
    from pony_scheduler.files import open_run_output, output_file_may_be_the_runs

    home = settings_from(ctx, db=ctx.meta.get("db")).home
    while True:
        try:
            handle = os.fdopen(open_run_output(home, path), "rb")  # the caller closes it
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise PonyError(
                f"cannot read output of run {run_id} at {path}: {exc.strerror}"
            ) from None
        else:
            run = get_run(ctx, run_id)
            if output_file_may_be_the_runs(
                str(run["state"]), run.get("output_tail"), run.get("reason")
            ):
                return handle
            handle.close()  # another database's: set aside once the run starts
            if not follow_ or run["state"] not in ("queued", "running"):
                click.echo(f"⚠ {shown(path, raw=False)} is not run {run_id}'s output", err=True)
                return None
            time.sleep(0.2)
            continue
        run = get_run(ctx, run_id)
        if os.path.exists(path):
            continue  # it printed since we looked: the state above may already be final
        if run.get("output_tail"):
            raise PonyError(
                f"the output file of run {run_id} was {missing_file(run)} ({path}); "
                f"`{pb_again(ctx, f'pb runs show {run_id}')}` has its end"
            )
        if not follow_ or run["state"] not in ("queued", "running"):
            return None
        time.sleep(0.2)
