"""`pb runs output` on a terminal: a character split between two reads is never broken."""

from __future__ import annotations

import io
import sys

import pytest

from pony_scheduler.cli.output import OutputWriter


class FakeStdout(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


def test_a_character_split_between_reads_is_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    out = FakeStdout(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    writer = OutputWriter(exact=False)
    for chunk in (b"price: \xe2\x82", b"\xac 5\x1b[2J", b"\n\xff"):
        writer.write(chunk)
    writer.write(b"", final=True)
    out.flush()
    assert out.buffer.getvalue().decode() == "price: € 5^[[2J\n\ufffd"  # type: ignore[attr-defined]


def test_exact_bytes_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", out)
    writer = OutputWriter(exact=True)
    writer.write(b"a\0b\xe2\x82")
    writer.write(b"\xac\x1b", final=True)
    assert out.buffer.getvalue() == b"a\0b\xe2\x82\xac\x1b"  # type: ignore[attr-defined]
