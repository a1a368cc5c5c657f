"""Text from users and jobs, made safe for a log line or a terminal.

Job names, commands, run output and request paths are chosen by whoever defines a job or
sends a request.  Written raw, a newline forges a log line and an escape sequence
(`ESC ] 0 ; title BEL`, `ESC [ 2 J`) reaches the admin's terminal when the log or the
output is shown.  Two functions, one for each destination:

* `for_log(text)`: one log line.  Newlines, carriage returns, ESC and every other
  control character become Python-style escapes (`\\n`, `\\r`, `\\x1b`, `\\u202e`), so
  a record is exactly one line and contains nothing a terminal would interpret.
* `for_terminal(text)`: text shown on a terminal (`pb runs output`, `pb gateway logs`).
  Newlines, tabs and a carriage return that ends a line stay; other control
  characters are shown in caret notation as `cat -v` and `less` show them (`^[` for
  ESC, `^G` for BEL, `^?` for DEL) and invisible format characters (C1 controls, bidi
  overrides, zero-width characters) as `<U+202E>`.

Both are pure, cheap (one precompiled regular expression) and never raise.
"""

from __future__ import annotations

import functools
import re

# C0 and C1 controls, DEL, and the Unicode format characters that reorder or hide text
# (bidi embeddings/overrides/isolates, zero-width characters, line/paragraph separators,
# the byte-order mark): the "Trojan Source" set of CVE-2021-42574 plus line breakers.
_FORMAT = "\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
_LOG_UNSAFE = f"[\x00-\x1f\x7f-\x9f{_FORMAT}]"
# On a terminal: the same, except newline and tab, and a carriage return before a newline
# (CRLF output is common and harmless; a lone CR can overwrite what was printed).
_TERMINAL_UNSAFE = f"\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_FORMAT}]"


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    # On first use, not at import: `pb scheduler status` imports this module and may
    # never need either pattern (compiling the two costs about 1 ms).
    return re.compile(pattern)


_LOG_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _log_escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _LOG_NAMES:
        return _LOG_NAMES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _caret(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC (0x1b) -> ^[, BEL (0x07) -> ^G
    if code == 0x7F:
        return "^?"
    return f"<U+{code:04X}>"


def for_log(text: object) -> str:
    """`text` (anything; str() of it) as part of one log line: no control character,
    no line break, no bidi override survives raw.  Backslashes are left as they are."""
    return _compiled(_LOG_UNSAFE).sub(_log_escape, str(text))


def for_terminal(text: str) -> str:
    """`text` with every control character a terminal would act on made visible
    (caret notation, `<U+XXXX>`), newlines, tabs and CRLF line ends kept."""
    return _compiled(_TERMINAL_UNSAFE).sub(_caret, text)


def undecodable_shown(text: str) -> str:
    """`text` with the bytes that were not UTF-8 where it came from (argv, environment,
    file names: surrogates, as Python decodes them) written as `\\xNN`."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def has_unsafe(text: str) -> bool:
    """Would `for_terminal` change `text`?"""
    return _compiled(_TERMINAL_UNSAFE).search(text) is not None
