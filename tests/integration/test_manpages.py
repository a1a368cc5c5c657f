"""The man pages in man/: they render without a warning, and they document exactly the
command tree that `pb` really has.

Which page documents which command (PAGE_FOR below):

    pb and its own options, plus a list of every top-level command   pb.1
    pb scheduler|gateway|debug|service ...                           pb-NAME.1
    pb job ... and pb runs ...                                        pb-job.1
    pb config ...                                                     pony-scheduler.conf.5

`pb config` lives in the configuration file's page because `pb config show` is how one
reads the settings that page describes; pb.1 lists it with the other commands.  A new
top-level command `pb foo` needs man/pb-foo.1 (or an entry in PAGE_FOR): the tree walk
below finds it, and its test fails until the page exists.

How a page documents a command, so that this test can read it (man(7) conventions):

* In an OPTIONS-like section (OPTIONS or COMMANDS), each command has a subsection whose
  heading names it: `.SS "pb scheduler start"`.  A heading may name several commands that
  share their options (`.SS "pb job add ..., pb job edit ..."`).  Text before the first
  subsection belongs to the page's own command (`pb` itself in pb.1).
* Each option is a `.TP` item whose tag holds its long form: `.BR \\-n ", " \\-\\-lines`.

The checks: every command is documented on its page with every long option it has; a
tag names no option that command lacks; a heading names no command that does not exist;
any `--option` written outside examples exists somewhere in `pb`; every `pb` command in an
example parses with click itself; every pb-*(1) page referred to (also by the systemd
units' Documentation=) exists; the keys of pony-scheduler.conf(5) are exactly
config.FIELDS; each page has the usual sections and names the package's version.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import click
import pytest

from pony_scheduler import __version__
from pony_scheduler.cli import cli
from pony_scheduler.config import FIELDS

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = sorted(p for p in MAN.iterdir() if re.fullmatch(r"[\w.-]+\.[1-8]", p.name))

ROOT_PAGE = "pb.1"
# Top-level commands whose page is not pb-NAME.1.
PAGE_FOR = {"job": "pb-job.1", "runs": "pb-job.1", "config": "pony-scheduler.conf.5"}
OPTION_SECTIONS = {"OPTIONS", "COMMANDS"}
REQUIRED_SECTIONS = {
    "1": [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SIGNALS",
        "EXAMPLES",
        "SEE ALSO",
    ],
    "5": ["NAME", "SYNOPSIS", "DESCRIPTION", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO"],
}
LONG_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
WORD = re.compile(r"[a-z][a-z0-9-]*")

Path_ = tuple[str, ...]  # a command path without the leading "pb": ("scheduler", "start")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(tool: str) -> str:
    """The tool's path; a missing tool skips on a workstation but fails in CI."""
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install {tool})"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


# --------------------------------------------------------------------------- the click tree
@cache
def commands() -> dict[Path_, click.Command]:
    """Every visible command by path, the root `pb` as ()."""
    found: dict[Path_, click.Command] = {}

    def walk(command: click.Command, path: Path_) -> None:
        found[path] = command
        if isinstance(command, click.Group):
            # list_commands/get_command, not .commands: pb's top-level groups load lazily.
            ctx = click.Context(command, info_name="pb")
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None and not sub.hidden:
                    walk(sub, (*path, name))

    walk(cli, ())
    return found


def long_options(command: click.Command, *, with_help: bool = False) -> set[str]:
    """The long option names of `command` (`--x`, `--no-x`), hidden ones left out."""
    ctx = click.Context(command, info_name="pb")
    names: set[str] = set()
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden:
            continue
        is_help = param is command.get_help_option(ctx)
        if is_help and not with_help:
            continue
        names.update(n for n in (*param.opts, *param.secondary_opts) if n.startswith("--"))
    return names


def all_long_options() -> set[str]:
    return set().union(*(long_options(c, with_help=True) for c in commands().values()))


def page_for(path: Path_) -> str:
    if not path:
        return ROOT_PAGE
    return PAGE_FOR.get(path[0], f"pb-{path[0]}.1")


def shown(path: Path_) -> str:
    return " ".join(("pb", *path))


# --------------------------------------------------------------------------- reading roff
NAMED_CHARS = {
    "aq": "'",
    "dq": '"',
    "ti": "~",
    "ha": "^",
    "em": "\u2014",
    "en": "\u2013",
    "bu": "\u2022",
    "oq": "\u2018",
    "cq": "\u2019",
    "+-": "\u00b1",
    "lq": "\u201c",
    "rq": "\u201d",
    "hy": "-",
    "mi": "-",
    "ga": "`",
    "rs": "\\",
}
ESCAPE = re.compile(r"\\(?:f(?:\[[^]]*\]|\(..|.)|\((..)|\[([^]]*)\]|(.))")


def unescape(text: str) -> str:
    """Roff text as a reader sees it: fonts dropped, escapes turned into characters."""

    def one(match: re.Match[str]) -> str:
        two, bracket, single = match.groups()
        if two is not None:
            return NAMED_CHARS.get(two, "?")
        if bracket is not None:
            if re.fullmatch(r"u[0-9A-Fa-f]{4,6}", bracket):
                return chr(int(bracket[1:], 16))
            return NAMED_CHARS.get(bracket, "?")
        if single is None:
            return ""  # a font change
        return {
            "-": "-",
            "e": "\\",
            " ": " ",
            "~": " ",
            "&": "",
            "|": "",
            "^": "",
            "c": "",
            '"': "",
        }.get(single, single)

    return ESCAPE.sub(one, text.split('\\"', 1)[0])


ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
FONT_MACROS = {"B", "I", "SM", "SB", *ALTERNATING}
ROFF_ARG = re.compile(r'"((?:[^"]|"")*)"?|((?:\\.|[^\s\\])+)')


def roff_args(args: str) -> list[str]:
    """A macro's arguments as roff splits them: by spaces, "double quotes" group."""
    return [
        m.group(1).replace('""', '"') if m.group(1) is not None else m.group(2)
        for m in ROFF_ARG.finditer(args.split('\\"', 1)[0])
    ]


def macro_text(name: str, args: str) -> str:
    """The words a font macro line prints (alternating macros join their arguments)."""
    words = [unescape(arg) for arg in roff_args(args)]
    return ("" if name in ALTERNATING else " ").join(words)


@dataclass
class Block:
    """One part of a page: its section, subsection heading, tags and text."""

    section: str
    heading: str = ""
    tags: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # filled text (outside .nf blocks)
    nofill: list[str] = field(default_factory=list)  # lines inside .nf ... .fi


@dataclass
class Page:
    path: Path
    th: list[str]
    blocks: list[Block]

    @property
    def name(self) -> str:
        return self.path.name

    def sections(self) -> list[str]:
        seen: list[str] = []
        for block in self.blocks:
            if block.section not in seen:
                seen.append(block.section)
        return seen

    def text_of(self, section: str) -> str:
        return "\n".join(line for b in self.blocks if b.section == section for line in b.text)

    def all_text(self) -> str:
        return "\n".join(line for b in self.blocks for line in b.text)


@cache
def parse(path: Path) -> Page:
    th: list[str] = []
    blocks = [Block(section="")]
    nofill = tag_next = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith(('.\\"', "'\\\"")) or raw.strip() == ".":
            continue
        macro = re.match(r"^[.']\s*(\S+)\s*(.*)$", raw)
        name, args = (macro.group(1), macro.group(2)) if macro else ("", raw)
        if name == "TH":
            th = [unescape(arg) for arg in roff_args(args)]
            continue
        if name == "SH":
            blocks.append(Block(section=macro_text("B", args).strip().upper()))
            continue
        if name == "SS":
            blocks.append(Block(section=blocks[-1].section, heading=macro_text("B", args)))
            continue
        if name in ("nf", "EX"):
            nofill = True
            continue
        if name in ("fi", "EE"):
            nofill = False
            continue
        if name == "TP":
            tag_next = True
            continue
        if macro and name not in FONT_MACROS:
            continue  # layout macros (.PP, .RS, .IP, .br ...) print no words of interest
        line = macro_text(name, args) if macro else unescape(raw)
        block = blocks[-1]
        if nofill:
            block.nofill.append(line)
        else:
            block.text.append(line)
        if tag_next:
            block.tags.append(line)
            tag_next = False
    return Page(path=path, th=th, blocks=blocks)


def page(name: str) -> Page:
    path = MAN / name
    assert path.exists(), f"man/{name} is missing"
    return parse(path)


def named_commands(heading: str) -> tuple[list[Path_], list[str]]:
    """Commands a heading names ("pb job add NAME, pb job edit NAME" names two), and the
    words that look like subcommands but are not."""
    tree = commands()
    tokens = re.split(r"[\s,]+", heading)
    found: list[Path_] = []
    unknown: list[str] = []
    for i, token in enumerate(tokens):
        if token != "pb":
            continue
        path: Path_ = ()
        for word in tokens[i + 1 :]:
            if (*path, word) in tree:
                path = (*path, word)
                continue
            if WORD.fullmatch(word) and isinstance(tree[path], click.Group) and word != "pb":
                unknown.append(f"{shown(path)} {word}")
            break
        found.append(path)
    return found, unknown


# --------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_mandoc_lint_has_no_warning(path: Path) -> None:
    mandoc = need("mandoc")
    result = subprocess.run(
        [mandoc, "-Tlint", "-W", "warning", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        f"mandoc -Tlint -W warning {path.name}:\n{result.stdout}{result.stderr}"
    )


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_groff_renders_without_warning(path: Path) -> None:
    groff = need("groff")
    # -Tutf8: the pages print the ✓/✗/⚠ that pb prints, which the default PostScript
    # device has no glyph for.
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-z", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), (
        f"groff -man -Tutf8 -ww -z {path.name}:\n{result.stderr}"
    )


# --------------------------------------------------------------------------- page structure
def test_there_are_pages() -> None:
    names = {p.name for p in PAGES}
    expected = {page_for(path) for path in commands() if len(path) <= 1}
    assert expected <= names, f"missing man pages: {sorted(expected - names)}"


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_page_documents_an_existing_command(path: Path) -> None:
    """A page for a command that does not exist (any more) is an error too."""
    documented = {page_for(p) for p in commands() if len(p) <= 1}
    assert path.name in documented, (
        f"man/{path.name} is not the page of any pb command (commands: "
        f"{sorted(' '.join(p) for p in commands() if len(p) == 1)}); remove it or map it "
        "in PAGE_FOR"
    )


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_header_and_sections(path: Path) -> None:
    doc = parse(path)
    stem, _, section = path.name.rpartition(".")
    assert len(doc.th) >= 4, f"{path.name}: .TH needs title, section, date and source"
    assert doc.th[0] == stem.upper(), f"{path.name}: .TH title {doc.th[0]!r}, not {stem.upper()!r}"
    assert doc.th[1] == section, f"{path.name}: .TH section {doc.th[1]!r}, not {section!r}"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc.th[2]), f"{path.name}: .TH date {doc.th[2]!r}"
    assert doc.th[3] == f"pony-scheduler {__version__}", (
        f"{path.name}: .TH source {doc.th[3]!r}; the package is at {__version__}: update the "
        "page (and its date) for this release"
    )
    name_line = doc.text_of("NAME").strip()
    assert name_line.startswith(f"{stem} - "), f"{path.name}: NAME reads {name_line!r}"
    missing = [s for s in REQUIRED_SECTIONS.get(section, []) if s not in doc.sections()]
    assert not missing, f"{path.name}: sections missing: {missing}"


def test_cross_references_exist() -> None:
    names = {p.name for p in PAGES}
    for doc in map(parse, PAGES):
        text = doc.all_text() + "\n".join(t for b in doc.blocks for t in b.nofill)
        for ref, section in re.findall(r"\b(pb(?:-[a-z]+)?|pony-scheduler\.conf)\((\d)\)", text):
            assert f"{ref}.{section}" in names, f"{doc.name} refers to {ref}({section}): no page"
    # The systemd units name these pages in Documentation= (systemctl help shows them).
    for unit in sorted((ROOT / "contrib").rglob("*.service")):
        for ref, section in re.findall(r"man:((?:pb|pony)[\w.-]*)\((\d)\)", unit.read_text()):
            assert f"{ref}.{section}" in names, f"{unit.name} refers to man:{ref}({section})"


# --------------------------------------------------------------------------- commands and options
def documented(doc: Page) -> Iterator[tuple[list[Path_], list[str], Block]]:
    """(commands in scope, unknown subcommands named, block) for each OPTIONS-like block."""
    mine = [p for p in commands() if page_for(p) == doc.name]
    if not mine:
        return  # a page of no command: test_page_documents_an_existing_command says so
    primary = min(mine, key=len)
    for block in doc.blocks:
        if block.section not in OPTION_SECTIONS:
            continue
        if not block.heading:
            yield [primary], [], block
            continue
        scope, unknown = named_commands(block.heading)
        yield (scope or [primary]), unknown, block


def test_every_command_and_option_is_on_its_page() -> None:
    problems: list[str] = []
    tree = commands()
    for path, command in tree.items():
        doc = page(page_for(path))
        tagged: set[str] = set()
        headed = False
        for scope, _, block in documented(doc):
            if path in scope:
                headed = headed or bool(block.heading)
                tagged.update(o for tag in block.tags for o in LONG_OPTION.findall(tag))
        leaf = not isinstance(command, click.Group)
        if leaf and not headed:
            problems.append(
                f"{shown(path)}: no subsection names it in {doc.name} "
                f'(.SS "{shown(path)}" under OPTIONS or COMMANDS)'
            )
        if not leaf and shown(path) not in doc.all_text():
            problems.append(f"{shown(path)}: not mentioned in {doc.name}")
        for option in sorted(long_options(command) - tagged):
            problems.append(f"{shown(path)} {option}: not documented (a .TP item) in {doc.name}")
    assert not problems, "\n".join(problems)


def test_pages_document_no_option_or_command_that_does_not_exist() -> None:
    problems: list[str] = []
    tree = commands()
    everywhere = all_long_options()
    for doc in map(parse, PAGES):
        for scope, unknown, block in documented(doc):
            problems += [
                f"{doc.name}: {block.heading!r} names {u!r}, which does not exist" for u in unknown
            ]
            real = set().union(*(long_options(tree[p], with_help=True) for p in scope))
            for tag in block.tags:
                for option in LONG_OPTION.findall(tag):
                    if option not in real:
                        where = ", ".join(shown(p) for p in scope)
                        problems.append(
                            f"{doc.name}: documents {option} for {where}, which has no such option"
                        )
        # Prose anywhere (examples aside, which are parsed below) may only mention options
        # that pb has.
        for option in sorted(set(LONG_OPTION.findall(doc.all_text())) - everywhere):
            problems.append(f"{doc.name}: mentions {option}, which no pb command has")
    assert not problems, "\n".join(problems)


def test_root_page_lists_every_top_level_command() -> None:
    text = page(ROOT_PAGE).text_of("COMMANDS")
    missing = [shown(p) for p in commands() if len(p) == 1 and shown(p) not in text]
    assert not missing, f"{ROOT_PAGE} COMMANDS does not list: {missing}"


# --------------------------------------------------------------------------- examples
PB_CALL = re.compile(r"(?:^|(?<=[\s=/]))pb\s+(?=\S)")


def example_calls(doc: Page) -> Iterator[str]:
    """Each `pb ...` command line in the page's no-fill blocks (continuations joined)."""
    for block in doc.blocks:
        joined: list[str] = []
        for line in block.nofill:
            if joined and joined[-1].endswith("\\"):
                joined[-1] = joined[-1][:-1] + " " + line.strip()
            else:
                joined.append(line)
        for line in joined:
            code = line.split(" #", 1)[0]
            for match in PB_CALL.finditer(code):
                yield code[match.end() :]


def pb_arguments(text: str) -> list[str]:
    """The arguments of one `pb` call: up to a shell operator or redirection."""
    text = re.sub(r"(?<=\s)\d+(?=[<>])", " ", text)  # the 2 of 2>/dev/null
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;()<>")
    lexer.whitespace_split = True
    args: list[str] = []
    for token in lexer:
        if set(token) <= set("|&;()<>"):
            break
        args.append(token)
    return args


def check_parses(args: list[str]) -> None:
    """Parse like `pb args` would, without running anything: unknown options, bad values
    and unknown commands raise click's usage errors."""
    command: click.Command = cli
    ctx = cli.make_context("pb", list(args))
    while isinstance(command, click.Group):
        # click 8.2 renamed protected_args (the subcommand and what follows it).
        protected = getattr(ctx, "_protected_args", None)
        rest = [*(ctx.protected_args if protected is None else protected), *ctx.args]
        if not rest:
            return
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        command = sub
        ctx = sub.make_context(name, rest, parent=ctx)


def test_examples_use_real_commands_and_options() -> None:
    problems: list[str] = []
    calls = 0
    for doc in map(parse, PAGES):
        for text in example_calls(doc):
            args = pb_arguments(text)
            if not args:
                continue
            calls += 1
            try:
                check_parses(args)
            except click.exceptions.Exit:
                pass  # --version, --help
            except click.ClickException as exc:
                problems.append(f"{doc.name}: pb {shlex.join(args)}: {exc.format_message()}")
    assert calls >= 10, f"found only {calls} pb commands in the examples; is the parser broken?"
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- configuration
def test_configuration_page_documents_exactly_the_keys() -> None:
    doc = page("pony-scheduler.conf.5")
    keys = {tag.split()[0] for b in doc.blocks if b.section == "KEYS" for tag in b.tags}
    assert keys == set(FIELDS), (
        f"undocumented keys: {sorted(set(FIELDS) - keys)}; "
        f"documented keys that do not exist: {sorted(keys - set(FIELDS))}"
    )
    text = doc.all_text()
    env = {variable for variable, _, _ in FIELDS.values()} | {"PONYBUNNY_HOME", "PONYBUNNY_CONFIG"}
    missing = sorted(v for v in env if v not in text)
    assert not missing, f"pony-scheduler.conf.5 does not name {missing}"
    missing = sorted(v for v in env if v not in page(ROOT_PAGE).text_of("ENVIRONMENT"))
    assert not missing, f"{ROOT_PAGE} ENVIRONMENT does not list {missing}"
