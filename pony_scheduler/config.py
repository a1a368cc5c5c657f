"""The one Settings object: defaults < config.toml < environment < command-line flags.

Every value remembers where it came from so that `pb config show` can say so.
"""

import contextlib
import errno
import os
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from pony_scheduler.errors import ConfigError, PonyError

if TYPE_CHECKING:
    from pathlib import Path

# Unix socket paths live in a 108-byte sun_path including the trailing NUL.
MAX_SOCKET_PATH = 107
# The documented ranges (pony-scheduler.conf(5)): the same whatever the database.
MAX_WORKERS = 1024  # worker threads of the scheduler; more is a typo, not a plan
MAX_SECONDS = 86400.0  # shutdown grace and --timeout: at most a day


def _positive_float(name: str, value: Any) -> float:
    """Seconds: a number, or a duration such as 30s, 2m, 1h30m; more than 0, at most a
    day (MAX_SECONDS)."""
    number = _seconds(name, value)
    if not 0 < number <= MAX_SECONDS:
        raise ConfigError(
            f"{name} must be more than 0 and at most {MAX_SECONDS:g} seconds (a day), "
            f"not {_shown(value)}"
        )
    return number


def _shown(value: Any) -> str:
    """A value as the user wrote it: TOML's true, not Python's True."""
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _seconds(name: str, value: Any) -> float:
    """A number of seconds or a duration (30s, 2m, 1h30m), unchecked for range (NaN and
    infinities included: the callers' ranges refuse them)."""
    number: float | None
    if isinstance(value, bool) or (isinstance(value, str) and not value.isascii()):
        number = None  # float() reads other scripts' digits ("٦٠"): not a setting's
    else:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = _duration(value)
    if number is None:
        raise ConfigError(
            f"{name} must be a positive number of seconds or a duration such "
            f"as 30s or 2m, not {_shown(value)}"
        )
    return number


def _duration(value: Any) -> float | None:
    from pony_scheduler.durations import parse_duration

    try:
        return parse_duration(str(value))
    except ConfigError:
        return None


def _whole(name: str, value: Any, low: int, high: int, what: str) -> int:
    """A whole number from `low` to `high`: an integer in the file, digits in the
    environment or a flag.  TOML's true/false and floats are refused (bool is an int in
    Python: `workers = true` would otherwise mean 1)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise ConfigError(
            f"{name} must be {what} (a whole number from {low} to {high}), not {_shown(value)}"
        )
    if not low <= number <= high:
        raise ConfigError(f"{name} must be {what} from {low} to {high}, not {_shown(value)}")
    return number


def _containment(name: str, value: Any) -> str:
    """How the run keeper contains a run's processes (docs/KEEPER.md)."""
    if value not in ("auto", "cgroup2", "cgroup1", "pgroup"):
        raise ConfigError(
            f"{name} must be one of auto, cgroup2, cgroup1, pgroup; not {_shown(value)}"
        )
    return str(value)


def _memory_accounting(name: str, value: Any) -> str:
    """Which runs get a memory group for their peak memory (docs/KEEPER.md)."""
    if value not in ("auto", "always"):
        raise ConfigError(f"{name} must be auto or always; not {_shown(value)}")
    return str(value)


def containment_kept(asked: object, keeper: Mapping[str, Any]) -> str:
    """Why the keeper's containment is not the one the scheduler asks for (`asked`, the
    containment setting), or '': a keeper that holds runs outlives a restart (live
    hand-over) and keeps the containment it started with (`keeper`: its keeper.json,
    containmentAsked and containment), so a changed setting waits for the next keeper
    (issue 12: status and the log say which containment is in force)."""
    in_force, started_with = keeper.get("containment"), keeper.get("containmentAsked")
    if asked in (None, in_force) or (asked == "auto" and in_force == "cgroup2"):
        return ""  # what it asks for is in force, or the best that auto would find
    if started_with is None and asked == "auto":
        return ""  # an older keeper that did not record its setting: cannot tell
    if asked == started_with:
        return ""  # the same setting: in_force is what this host allows
    return (
        f"{asked} asked for; the running keeper keeps {in_force} until it exits "
        "(pb scheduler stop, then start)"
    )


def _lease(name: str, value: Any) -> float:
    """Seconds a claimed run stays a scheduler's without renewal (10 s to 1 h)."""
    seconds = _seconds(name, value)
    if not 10 <= seconds <= 3600:  # NaN fails this too
        raise ConfigError(f"{name} must be from 10 seconds to 1 hour, not {_shown(value)}")
    return seconds


def _workers(name: str, value: Any) -> int:
    return _whole(name, value, 1, MAX_WORKERS, "a number of workers")


def _port(name: str, value: Any) -> int:
    return _whole(name, value, 1, 65535, "a TCP port")


def _log_level(name: str, value: Any) -> str:
    level = str(value).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{name} must be one of debug, info, warning, error; not {_shown(value)}")
    return level


def _utf8(name: str, value: str) -> None:
    """ConfigError when `value` holds bytes that are not UTF-8 (surrogates, as Python
    decodes such arguments and environment values): the settings are stored and shown
    as text (review: "must not contain control characters" was said of them)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        from pony_scheduler.textsafe import undecodable_shown

        shown = undecodable_shown(value)
        raise ConfigError(f"{name} '{shown}' is not UTF-8; use a path or value that is") from None


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, not {_shown(value)}")
    _utf8(name, value)
    if not value.isprintable():
        raise ConfigError(f"{name} must not contain control characters, not {value!r}")
    return value


# A pattern, not a compiled one: re compiles (and caches) it only where hosts are given.
_HOST_NAME = (
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$"
)


def _hosts(name: str, value: Any) -> tuple[str, ...]:
    """Host names (a TOML array, or comma-separated in the environment) that the gateway
    and the dashboard answer to besides the loopback names: the name a reverse proxy
    forwards (`pony.example.com`).  Names only, no ports, no wildcards."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{name} must be a list of host names, not {_shown(value)}")
    hosts = []
    for item in items:
        host = item.strip().lower() if isinstance(item, str) else item
        if not isinstance(host, str) or not re.match(_HOST_NAME, host):
            raise ConfigError(
                f"{name}: {item!r} is not a host name (such as "
                "pony.example.com; no port, no wildcard)"
            )
        hosts.append(host)
    return tuple(hosts)


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


# key -> (environment variable, converter, default).  Defaults that depend on the home
# (db, socket) are None here and filled in by Settings.
FIELDS: dict[str, tuple[str, Any, Any]] = {
    "db": ("PONYBUNNY_DB", _text, None),
    "socket": ("PONYBUNNY_SOCKET", _text, None),
    "workers": ("PONYBUNNY_WORKERS", _workers, 4),
    "shutdown_grace": ("PONYBUNNY_SHUTDOWN_GRACE", _positive_float, 30.0),
    "lease": ("PONYBUNNY_LEASE", _lease, 60.0),
    "containment": ("PONYBUNNY_CONTAINMENT", _containment, "auto"),
    "memory_accounting": ("PONYBUNNY_MEMORY_ACCOUNTING", _memory_accounting, "auto"),
    "log_level": ("PONYBUNNY_LOG_LEVEL", _log_level, "INFO"),
    "gateway_host": ("PONYBUNNY_GATEWAY_HOST", _text, "127.0.0.1"),
    "gateway_port": ("PONYBUNNY_GATEWAY_PORT", _port, 18789),
    "debug_host": ("PONYBUNNY_DEBUG_HOST", _text, "127.0.0.1"),
    "debug_port": ("PONYBUNNY_DEBUG_PORT", _port, 18790),
    "allowed_hosts": ("PONYBUNNY_ALLOWED_HOSTS", _hosts, ()),
    "anonymous_read": ("PONYBUNNY_ANONYMOUS_READ", _flag, False),
}


class Settings(NamedTuple):
    """Every setting, resolved (load_settings).  A NamedTuple rather than a frozen
    dataclass: every `pb` command builds this class at import, and a dataclass of this
    size costs about 1 ms to create (`pb scheduler status` is measured against
    `import click`, docs/BENCHMARKS.md).

    The paths are held as str (home_dir, socket_path, config_path) and given as Path by
    the properties home, socket and config_file, which import pathlib when first used:
    pathlib imports urllib.parse and ipaddress, about 16 million instructions (a tenth of
    `import click`) on every `pb scheduler status`, which needs only os.path."""

    home_dir: str  # absolute
    db: str  # an SQLAlchemy URL; plain paths are turned into sqlite:/// URLs
    socket_path: str  # absolute
    workers: int
    shutdown_grace: float
    lease: float
    containment: str
    log_level: str
    gateway_host: str
    gateway_port: int
    debug_host: str
    debug_port: int
    # Host names accepted besides the loopback ones (a reverse proxy's), see _hosts.
    allowed_hosts: tuple[str, ...] = ()
    # The documented opt-in: the gateway answers reads without a token (trusted hosts).
    anonymous_read: bool = False
    # "always": every run gets a memory group for its peak memory, a v1 one included
    # (a hybrid host: about 0.5 ms more per run); "auto": where it costs nothing more
    # (the v2 memory controller), else only runs with --memory-max.
    memory_accounting: str = "auto"
    config_path: str | None = None  # absolute; None when no configuration file was read
    # Where each value came from (`pb config show`); never changed once built.
    sources: Mapping[str, str] = MappingProxyType({})

    @property
    def debug(self) -> bool:
        return self.log_level == "DEBUG"

    @property
    def home(self) -> "Path":
        from pathlib import Path

        return Path(self.home_dir)

    @property
    def socket(self) -> "Path":
        from pathlib import Path

        return Path(self.socket_path)

    @property
    def config_file(self) -> "Path | None":
        from pathlib import Path

        return Path(self.config_path) if self.config_path is not None else None


def default_home() -> str:
    return os.path.expanduser(os.environ.get("PONYBUNNY_HOME") or "~/.ponybunny")


def _clean_path(path: str) -> str:
    """`path` as str(pathlib.Path(path)) writes it, without importing pathlib: no empty
    or '.' component, no trailing slash; '..' is kept (a symbolic link may be before it)."""
    root = "//" if path[:2] == "//" and path[:3] != "///" else "/" if path[:1] == "/" else ""
    return root + "/".join(part for part in path.split("/") if part not in ("", ".")) or "."


def _absolute_path(path: str | os.PathLike[str], base: str | None = None) -> str:
    """As Path(path).expanduser().absolute(), relative to `base` (default: the working
    directory), as str.  Raises ConfigError for '~user' of a user that does not exist
    (pathlib raises RuntimeError; os.path would leave a relative '~user' under the
    working directory, a home nobody meant)."""
    text = os.path.expanduser(_clean_path(os.fspath(path)))  # as pathlib: ./~ is ~ too
    if text.startswith("~"):
        user = text[1:].split("/", 1)[0]
        why = (
            f"no user named '{user}' on this host"
            if user
            else "this user's home directory is unknown (HOME is not set, and the "
            "password database has no entry for this uid)"
        )
        raise ConfigError(f"cannot expand '{os.fspath(path)}': {why}; give the path in full")
    if not os.path.isabs(text):
        text = os.path.join(base or os.getcwd(), text)
    return _clean_path(text)


def db_url(value: str, base: str | None = None) -> str:
    """A `--db` value as an SQLAlchemy URL: URLs pass through, paths become sqlite:///."""
    if "://" in value:
        return value
    return f"sqlite:///{_absolute_path(value, base)}"


def _exists(path: str) -> bool:
    """As Path.exists: False when missing, PermissionError (and other errors) raised."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise
    except ValueError:  # an embedded NUL
        return False
    return True


MAX_CONFIG = 1 << 20  # bytes: a configuration file is small


def _read_config_file(path: str, explicit: bool) -> dict[str, Any]:
    from pony_scheduler.files import open_beneath, verify_fd
    from pony_scheduler.pathtrust import read_checked

    try:
        if explicit:  # checked on the descriptor it is read from (pathtrust)
            raw = read_checked(path, "the configuration file", limit=MAX_CONFIG)
        else:  # HOME/config.toml: check_home vetted the home; never follow a link to it
            directory, name = os.path.split(path)
            fd = open_beneath(directory, name, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as handle:
                verify_fd(handle.fileno(), path)
                raw = handle.read(MAX_CONFIG + 1)
    except (FileNotFoundError, NotADirectoryError):
        return {}  # a home that is not a directory is reported by the command that needs it
    except IsADirectoryError:
        raise ConfigError(
            f"configuration file {path} is a directory; remove it or name a file with --config"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG:
        raise ConfigError(f"configuration file {path} is larger than 1 MiB; name the right file")
    import tomllib  # here: most homes have no config file (its import is ~1.5 ms)

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    for key in data:
        if key not in FIELDS:
            line = _line_of(text, key)
            known = ", ".join(sorted(FIELDS))
            raise ConfigError(f"{path}:{line}: unknown key {key!r} (known keys: {known})")
        if _quoted_number(key, data[key]):
            raise ConfigError(
                f"{path}:{_line_of(text, key)}: {key} = {data[key]!r} is a "
                f"string, and {key} is a number; write it without quotes "
                f"({key} = {data[key].strip()})"
            )
        if key in _BOOLEANS and not isinstance(data[key], bool):
            # The environment's 1/yes/on are for the environment, which has only
            # strings; in the file a switch that opens the gateway is a TOML boolean.
            raise ConfigError(
                f"{path}:{_line_of(text, key)}: {key} must be true or false (a TOML "
                f"boolean, without quotes), not {data[key]!r}"
            )
    return data


# Keys whose values are numbers: in the file, TOML numbers (README, pony-scheduler.conf(5)),
# never strings, which only the environment gives (it has nothing else).  Other strings
# are left to the converters, which say what the value must be ("30s" is a duration).
_NUMBERS = ("workers", "gateway_port", "debug_port", "lease", "shutdown_grace")
_BOOLEANS = ("anonymous_read",)


def _quoted_number(key: str, value: Any) -> bool:
    """A number written as a TOML string (`workers = "4"`, `lease = "30"`)."""
    if not isinstance(value, str) or key not in _NUMBERS or not value.isascii():
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _line_of(text: str, key: str) -> int:
    pattern = re.compile(rf"^\s*(\[\s*)?[\"']?{re.escape(key)}[\"']?\s*[=\]]")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return 1


def load_settings(
    overrides: dict[str, Any] | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    outputs: bool = True,
) -> Settings:
    """Resolve every setting; `overrides` holds command-line flags (None = not given).
    `outputs`: whether the home's check covers the jobs' output directories
    (files.check_home).  Raises ConfigError, UnsafePath."""
    home_source = "flag" if home else ("env" if os.environ.get("PONYBUNNY_HOME") else "default")
    home_dir = _absolute_path(home or default_home())
    _utf8("the home (PONYBUNNY_HOME)", home_dir)
    from pony_scheduler.files import check_home

    # StrictModes: before anything in the home (its config.toml first) is read.
    check_home(home_dir, outputs=outputs)
    if config_file is None and os.environ.get("PONYBUNNY_CONFIG"):
        config_file = os.environ["PONYBUNNY_CONFIG"]
    explicit_config = config_file is not None
    config_path = _absolute_path(
        config_file if config_file is not None else os.path.join(home_dir, "config.toml")
    )
    try:
        missing = explicit_config and not _exists(config_path)
    except PermissionError:  # a directory on the way we may not enter: read says why
        missing = False
    if missing:
        raise ConfigError(f"configuration file {config_path} does not exist")
    from_file = _read_config_file(config_path, explicit_config)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {"home": home_source}
    bases: dict[str, str] = {}  # relative paths are relative to where they were written
    for key, (env_name, convert, default) in FIELDS.items():
        flag = (overrides or {}).get(key)
        if flag is not None:
            values[key], sources[key] = convert(flag_name(key), flag), "flag"
        elif os.environ.get(env_name):
            values[key], sources[key] = convert(env_name, os.environ[env_name]), "env"
        elif key in from_file:
            values[key] = convert(f"{config_path}: {key}", from_file[key])
            sources[key] = f"file {config_path}"
            bases[key] = os.path.dirname(config_path)
        else:
            values[key], sources[key] = default, "default"

    with _naming("db", sources, config_path):
        values["db"] = db_url(values["db"] or os.path.join(home_dir, "pony.db"), bases.get("db"))
    socket = values.pop("socket") or os.path.join(home_dir, "gateway.sock")
    with _naming("socket", sources, config_path):
        socket_path = _absolute_path(socket, bases.get("socket"))
    return Settings(
        home_dir=home_dir,
        socket_path=socket_path,
        config_path=config_path if _exists(config_path) else None,
        sources=sources,
        **values,
    )


@contextlib.contextmanager
def _naming(key: str, sources: dict[str, str], config_path: str) -> Iterator[None]:
    """A ConfigError about setting `key`'s value says where it was set: the flag, the
    variable or config.toml (a '~nosuch/x.db' there named no setting)."""
    try:
        yield
    except ConfigError as exc:
        source = sources.get(key, "default")
        if source == "default":
            raise
        where = {"flag": flag_name(key), "env": FIELDS[key][0]}.get(source, f"{config_path}: {key}")
        raise ConfigError(f"{where}: {exc}") from None


# The services' flags that are not named after their setting (--host, not --debug-host).
_FLAGS = {
    "gateway_host": "--host",
    "gateway_port": "--port",
    "debug_host": "--host",
    "debug_port": "--port",
}


def flag_name(key: str) -> str:
    """The command-line flag that sets setting `key` ('--host' for debug_host)."""
    return _FLAGS.get(key, f"--{key.replace('_', '-')}")


def where_set(settings: Settings, key: str) -> str:
    """Where setting `key` came from, as an error message names it: its flag
    ('--host'), its variable ('PONYBUNNY_DEBUG_HOST'), 'debug_host (file PATH)', or
    'debug_host (the default)'."""
    source = settings.sources.get(key, "default")
    if source == "flag":
        return flag_name(key)
    if source == "env":
        return FIELDS[key][0]
    return f"{key} ({'the default' if source == 'default' else source})"


def check_listen_host(settings: Settings, key: str) -> list[str]:
    """The host setting `key` (gateway_host, debug_host) must resolve here
    (getaddrinfo(3), passive): else ConfigError naming where it was set, one line before
    a service forks rather than a failed start with its log's tail (review finding).  A
    name may wait on the resolver (resolv.conf's timeout).  Returns every address it
    resolves to (as strings: '127.0.0.1', '::1', '0.0.0.0')."""
    import socket  # here: status and most commands never resolve anything

    host = getattr(settings, key)
    option = where_set(settings, key)

    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise ConfigError(
            f"{option} {host!r}: not an address or a name this host resolves ({why}); "
            "give an IP address (127.0.0.1, ::1) or a resolvable name"
        ) from None
    # An address of another machine (192.0.2.1) resolves but cannot be listened on: a
    # bind to a port the kernel picks says so without touching the service's own port
    # (which a running one holds during a restart).  Closed at once, before the fork.
    errors = []
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            try:
                probe.bind(address)
                # One usable address is enough (as for localhost without ::1).
                return [str(info[4][0]) for info in infos]
            except OSError as exc:
                errors.append(exc.strerror or str(exc))
    raise ConfigError(
        f"{option} {host!r}: no address of this host ({'; '.join(sorted(set(errors)))}); "
        "give one of its addresses (ip address shows them), 127.0.0.1 or ::1"
    )


def check_port_for_replacement(
    settings: Settings, host_key: str, port_key: str, held: object
) -> None:
    """restart / start --force of the gateway or the dashboard, before the running one is
    stopped: a port other than the one it holds (`held`, its published address) must be
    free now, or the replacement fails after the running one is gone (review finding).
    Its own port is left to the hand-over.  Raises PonyError (exit 1: left alone)."""
    import socket

    host, port = getattr(settings, host_key), getattr(settings, port_key)
    if isinstance(held, str) and held.rsplit(":", 1)[-1] == str(port):
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        return  # said by check_listen_host
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PonyError(
                        f"port {port} on {host} is in use by another program, so the "
                        "running one was left alone: stop that program or choose another "
                        "--port"
                    ) from None


def validate_socket_path(path: "Path") -> None:
    """The gateway socket must fit in sun_path and live in an existing directory."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(
            f"socket path is {size} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket "
            f"allows: {path}; choose a shorter --socket"
        )
    if not path.parent.is_dir():
        raise ConfigError(
            f"socket directory {path.parent} does not exist; create it or choose another --socket"
        )
