"""Packaging: `python -m build` makes an sdist and a wheel that carry the man pages and
contrib/, and the wheel installs into a fresh virtual environment where `pb` runs and
`man -M VENV/share/man` finds the pages.

The build runs on a copy of the source tree, so it neither writes build/ or *.egg-info
into the work tree nor races with someone editing it; the wheel is built from the sdist
(what `python -m build` does by default), which also proves the sdist is complete.

The virtual environment is made with --system-site-packages and the wheel installed with
--no-deps --ignore-installed: the dependencies (click, python-daemon, SQLAlchemy, ...) come
from the environment running the tests, so the test needs no index and stays fast, while
pony_scheduler itself, `pb` and every data file come from the wheel alone (checked below:
the imported package lives inside the venv, not in the work tree's editable install).

Building and installing take about 20 s together, so those tests are marked slow (which
only labels them: CI runs them, and `-m "not slow"` leaves them out on a workstation).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pony_scheduler import __version__

ROOT = Path(__file__).resolve().parents[2]
DIST_NAME = "pony_scheduler"
# What MANIFEST.in grafts into the sdist, beside the package.
SDIST_DIRS = ("man", "contrib", "tests", "bench", "docs")
SDIST_FILES = (
    "README.md",
    "setup.cfg",
    "setup.py",
    "pyproject.toml",
    "MANIFEST.in",
    "pony_scheduler/keeper/_spawn.c",
)
JUNK = re.compile(r"(^|/)(__pycache__|\.[^/]*)(/|$)|(\.py[cod]|~|\.tmp|\.swp|\.orig|\.rej)$")
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    "*.so",
    ".venv",
    "venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    ".benchmarks",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (apt-get install {package})"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def files_under(root: Path, *dirs: str) -> list[str]:
    """Paths (relative to root, POSIX) of the real files in dirs, editor and build debris
    left out."""
    found = []
    for name in dirs:
        base = root / name
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and not JUNK.search(relative):
                found.append(relative)
    return found


def data_files(root: Path = ROOT) -> dict[str, list[str]]:
    """[options.data_files] of setup.cfg: target directory -> source files."""
    parser = configparser.ConfigParser(
        interpolation=None, comment_prefixes=("#", ";"), inline_comment_prefixes=None
    )
    parser.read(root / "setup.cfg", encoding="utf-8")
    assert parser.has_section("options.data_files"), "setup.cfg has no [options.data_files]"
    return {
        target: [f for f in re.split(r"[,\s]+", value) if f]
        for target, value in parser.items("options.data_files")
    }


def expected_target(source: str) -> str:
    """Where a file of man/ or contrib/ belongs: man pages by section, contrib by folder."""
    if source.startswith("man/"):
        return f"share/man/man{source.rsplit('.', 1)[-1]}"
    return f"share/pony-scheduler/{source.rsplit('/', 1)[0]}"


# --------------------------------------------------------------------------- setup.cfg
def test_every_man_page_and_contrib_file_is_installed() -> None:
    listed = {source: target for target, sources in data_files().items() for source in sources}
    problems = []
    for source in files_under(ROOT, "man", "contrib"):
        if source not in listed:
            problems.append(
                f"{source} is not in [options.data_files] of setup.cfg "
                f"(add it under {expected_target(source)} =)"
            )
        elif listed[source] != expected_target(source):
            problems.append(
                f"{source} is installed to {listed[source]}, not {expected_target(source)}"
            )
    for source in listed:
        if not (ROOT / source).is_file():
            problems.append(f"setup.cfg [options.data_files] lists {source}, which does not exist")
        if not source.startswith(("man/", "contrib/")):
            problems.append(
                f"setup.cfg [options.data_files] lists {source}, outside man/ and contrib/"
            )
    assert not problems, "\n".join(problems)
    assert any(t == "share/man/man1" for t in data_files()), "no man pages in share/man/man1"


# --------------------------------------------------------------------------- build
@dataclass(frozen=True)
class Built:
    source: Path  # the copy of the tree that was built
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("packaging")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=COPY_IGNORE)
    out = work / "dist"
    # An isolated build, as pip and distributions do it: setuptools and wheel are fetched
    # into a fresh build environment (from the index pip is configured with).
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=work,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout}\n{result.stderr}"
    sdists = list(out.glob(f"{DIST_NAME}-{__version__}.tar.gz"))
    # A platform wheel where the optional C part (keeper/_spawn.c) was built.
    wheels = list(out.glob(f"{DIST_NAME}-{__version__}-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, (
        f"unexpected build output: {sorted(out.iterdir())}"
    )
    return Built(source=source, sdist=sdists[0], wheel=wheels[0])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sdist_carries_pages_contrib_tests_and_docs(built: Built) -> None:
    prefix = f"{DIST_NAME}-{__version__}/"
    with tarfile.open(built.sdist) as archive:
        names = {name.removeprefix(prefix) for name in archive.getnames()}
    expected = [*SDIST_FILES, *files_under(built.source, *SDIST_DIRS)]
    missing = [name for name in expected if name not in names]
    assert not missing, f"the sdist lacks (see MANIFEST.in): {missing}"
    assert any(n.startswith("man/") for n in names) and any(n.startswith("contrib/") for n in names)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_carries_pages_and_contrib_as_data(built: Built) -> None:
    data = f"{DIST_NAME}-{__version__}.data/data/"
    with zipfile.ZipFile(built.wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"{DIST_NAME}-{__version__}.dist-info/entry_points.txt")
    missing = [
        f"{data}{target}/{Path(source).name}"
        for target, sources in data_files(built.source).items()
        for source in sources
        if f"{data}{target}/{Path(source).name}" not in names
    ]
    assert not missing, f"the wheel lacks: {missing}"
    assert re.search(rb"^pb\s*=\s*pony_scheduler\.cli:main", entry_points, re.M), entry_points


# --------------------------------------------------------------------------- install
@dataclass(frozen=True)
class Venv:
    root: Path
    env: dict[str, str]

    def run(self, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**self.env, **env},
            cwd=self.root,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture(scope="module")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    root = tmp_path_factory.mktemp("venv")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PONYBUNNY_", "PYTHON", "VIRTUAL_ENV", "MAN"))
    }
    env.update(
        PONYBUNNY_HOME=str(root / "home"),
        VIRTUAL_ENV=str(root),
        PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}",
    )
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    pip = subprocess.run(
        [
            str(root / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--ignore-installed",
            str(built.wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=root,
    )
    assert pip.returncode == 0, f"pip install of the wheel failed:\n{pip.stdout}\n{pip.stderr}"
    yield Venv(root=root, env=env)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_and_pb_runs_from_the_venv(venv: Venv) -> None:
    where = venv.run(
        venv.root / "bin" / "python", "-c", "import pony_scheduler; print(pony_scheduler.__file__)"
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv.root), (
        f"pony_scheduler was imported from {where.stdout.strip()}, not from the venv"
    )
    version = venv.run(venv.root / "bin" / "pb", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"pb (pony-scheduler) {__version__}"
    status = venv.run(venv.root / "bin" / "pb", "scheduler", "status")
    assert status.returncode == 3, status.stdout + status.stderr  # LSB: not running
    assert "Not running" in status.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_data_files_land_under_the_prefix(venv: Venv) -> None:
    for target, sources in data_files().items():
        for source in sources:
            installed = venv.root / target / Path(source).name
            assert installed.is_file(), f"{source} was not installed as {installed}"
            if os.stat(ROOT / source).st_mode & stat.S_IXUSR:
                assert os.stat(installed).st_mode & stat.S_IXUSR, f"{installed} lost its x bit"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_man_finds_the_installed_pages(venv: Venv) -> None:
    man = need("man", "man-db")
    manpath = venv.root / "share" / "man"
    for section, page in (("1", "pb-scheduler"), ("1", "pb"), ("5", "pony-scheduler.conf")):
        found = venv.run(man, "-M", manpath, "-w", section, page)
        assert found.returncode == 0, f"man -M {manpath} -w {section} {page}: {found.stderr}"
        assert Path(found.stdout.strip()) == manpath / f"man{section}" / f"{page}.{section}"
    shown = venv.run(man, "-M", manpath, "pb-scheduler", MANPAGER="cat", MANWIDTH="80")
    assert shown.returncode == 0, shown.stderr
    assert "pb scheduler start" in re.sub(r".\x08", "", shown.stdout)
