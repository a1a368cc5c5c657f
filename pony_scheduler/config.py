"""The one Settings object: defaults < config.toml < environment < command-line flags.

Every value remembers where it came from so that `pb config show` can say so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pony_scheduler.errors import ConfigError

# Unix socket paths live in a 108-byte sun_path including the trailing NUL.
MAX_SOCKET_PATH = 107


def _positive_float(name: str, value: Any) -> float:
    """Seconds: a number, or a duration such as 30s, 2m, 1h30m."""
    number: float | None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = _duration(value)
    if number is None:
        raise ConfigError(f"{name} must be a positive number of seconds or a duration such "
                          f"as 30s or 2m, not {value!r}")
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    return number


def _duration(value: Any) -> float | None:
    from pony_scheduler.scheduler.timeparse import parse_duration

    try:
        return parse_duration(str(value))
    except ConfigError:
        return None


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive whole number, not {value!r}") from None
    if number <= 0 or isinstance(value, float):
        raise ConfigError(f"{name} must be a positive whole number, not {value!r}")
    return number


def _port(name: str, value: Any) -> int:
    port = _positive_int(name, value)
    if port > 65535:
        raise ConfigError(f"{name} must be a TCP port (1-65535), not {value!r}")
    return port


def _log_level(name: str, value: Any) -> str:
    level = str(value).upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"{name} must be one of debug, info, warning, error; not {value!r}")
    return level


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, not {value!r}")
    return value


# key -> (environment variable, converter, default).  Defaults that depend on the home
# (db, socket) are None here and filled in by Settings.
FIELDS: dict[str, tuple[str, Any, Any]] = {
    "db": ("PONYBUNNY_DB", _text, None),
    "socket": ("PONYBUNNY_SOCKET", _text, None),
    "workers": ("PONYBUNNY_WORKERS", _positive_int, 4),
    "shutdown_grace": ("PONYBUNNY_SHUTDOWN_GRACE", _positive_float, 30.0),
    "log_level": ("PONYBUNNY_LOG_LEVEL", _log_level, "INFO"),
    "gateway_host": ("PONYBUNNY_GATEWAY_HOST", _text, "127.0.0.1"),
    "gateway_port": ("PONYBUNNY_GATEWAY_PORT", _port, 18789),
    "debug_host": ("PONYBUNNY_DEBUG_HOST", _text, "127.0.0.1"),
    "debug_port": ("PONYBUNNY_DEBUG_PORT", _port, 18790),
}


@dataclass(frozen=True)
class Settings:
    home: Path
    db: str  # an SQLAlchemy URL; plain paths are turned into sqlite:/// URLs
    socket: Path
    workers: int
    shutdown_grace: float
    log_level: str
    gateway_host: str
    gateway_port: int
    debug_host: str
    debug_port: int
    config_file: Path | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def debug(self) -> bool:
        return self.log_level == "DEBUG"


def default_home() -> Path:
    return Path(os.environ.get("PONYBUNNY_HOME") or Path.home() / ".ponybunny").expanduser()


def db_url(value: str, base: Path) -> str:
    """A `--db` value as an SQLAlchemy URL: URLs pass through, paths become sqlite:///."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base / path
    return f"sqlite:///{path}"


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}  # a home that is not a directory is reported by the command that needs it
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    import tomllib  # here: most homes have no config file (its import is ~1.5 ms)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    for key in data:
        if key not in FIELDS:
            line = _line_of(text, key)
            known = ", ".join(sorted(FIELDS))
            raise ConfigError(f"{path}:{line}: unknown key {key!r} (known keys: {known})")
    return data


def _line_of(text: str, key: str) -> int:
    pattern = re.compile(rf"^\s*(\[\s*)?[\"']?{re.escape(key)}[\"']?\s*[=\]]")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return 1


def load_settings(
    overrides: dict[str, Any] | None = None,
    *,
    home: Path | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Resolve every setting; `overrides` holds command-line flags (None = not given)."""
    home_source = "flag" if home else ("env" if os.environ.get("PONYBUNNY_HOME") else "default")
    home = (home or default_home()).expanduser().absolute()
    if config_file is None and os.environ.get("PONYBUNNY_CONFIG"):
        config_file = Path(os.environ["PONYBUNNY_CONFIG"])
    explicit_config = config_file is not None
    config_path = (config_file or home / "config.toml").expanduser().absolute()
    if explicit_config and not config_path.exists():
        raise ConfigError(f"configuration file {config_path} does not exist")
    from_file = _read_config_file(config_path)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {"home": home_source}
    bases: dict[str, Path] = {}  # relative paths are relative to where they were written
    for key, (env_name, convert, default) in FIELDS.items():
        flag = (overrides or {}).get(key)
        if flag is not None:
            values[key], sources[key] = convert(f"--{key.replace('_', '-')}", flag), "flag"
        elif os.environ.get(env_name):
            values[key], sources[key] = convert(env_name, os.environ[env_name]), "env"
        elif key in from_file:
            values[key] = convert(f"{config_path}: {key}", from_file[key])
            sources[key] = f"file {config_path}"
            bases[key] = config_path.parent
        else:
            values[key], sources[key] = default, "default"

    values["db"] = db_url(values["db"] or str(home / "pony.db"), bases.get("db", Path.cwd()))
    socket = Path(values["socket"] or home / "gateway.sock").expanduser()
    values["socket"] = socket if socket.is_absolute() else bases.get("socket", Path.cwd()) / socket
    return Settings(home=home, config_file=config_path if config_path.exists() else None,
                    sources=sources, **values)


def validate_socket_path(path: Path) -> None:
    """The gateway socket must fit in sun_path and live in an existing directory."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(
            f"socket path is {size} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket "
            f"allows: {path}; choose a shorter --socket")
    if not path.parent.is_dir():
        raise ConfigError(f"socket directory {path.parent} does not exist; create it or "
                          "choose another --socket")
