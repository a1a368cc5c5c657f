"""`pb config show`: the effective settings and where each came from."""

from __future__ import annotations

import json

import click

from pony_scheduler.cli import Group
from pony_scheduler.cli.options import settings_from


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
    for name in type(settings)._fields:
        if name in ("sources", "config_file"):
            continue
        value = getattr(settings, name)
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
