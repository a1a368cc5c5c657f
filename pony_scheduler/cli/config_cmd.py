"""`pb config show`: the effective settings and where each came from."""

from __future__ import annotations

import json

import click

from pony_scheduler.cli import Group
from pony_scheduler.cli.options import settings_from

# Settings holds these paths as str under names of their own (config.Settings says why);
# they are the settings home and socket.
_SETTING_OF = {"home_dir": "home", "socket_path": "socket"}


@click.group(cls=Group, name="config")
def config_group() -> None:
    """Inspect the configuration (defaults < config.toml < environment < flags)."""


@config_group.command(name="show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print every effective setting and its source."""
    settings = settings_from(ctx)
    rows = []
    for field in type(settings)._fields:
        if field in ("sources", "config_path"):
            continue
        value = getattr(settings, field)
        name = _SETTING_OF.get(field, field)
        if name == "db":  # never print a password
            from pony_scheduler.store.engine import safe_url

            value = safe_url(value)
        if isinstance(value, tuple):  # allowed_hosts
            value = ", ".join(value) or "-"
        rows.append((name, str(value), settings.sources.get(name, "derived")))
    config_file = str(settings.config_file) if settings.config_file else None
    if as_json:
        click.echo(
            json.dumps(
                {
                    "configFile": config_file,
                    "settings": {
                        name: {"value": value, "source": source} for name, value, source in rows
                    },
                },
                indent=2,
            )
        )
        return
    click.echo(f"Configuration file: {config_file or '(none)'}")
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        click.echo(f"  {name:<{width}}  {value}  ({source})")
