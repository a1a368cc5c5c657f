"""Parameter types and helpers shared by the commands."""

from __future__ import annotations

import math
from typing import Any

import click

from pony_scheduler.config import MAX_SECONDS, Settings, load_settings


class PositiveFloat(click.ParamType):
    """Seconds: more than 0, at most MAX_SECONDS (a day; select() cannot wait for 1e300)."""

    name = "SECONDS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not number > 0 or math.isinf(number):
            self.fail(f"{value!r} is not a positive number of seconds", param, ctx)
        if number > MAX_SECONDS:
            self.fail(f"{value!r} is more than {MAX_SECONDS:g} seconds (a day)", param, ctx)
        return number


POSITIVE_SECONDS = PositiveFloat()


def settings_from(ctx: click.Context, *, outputs: bool = True, **overrides: Any) -> Settings:
    """The settings for a command; `outputs` False for commands that use no job output
    (config.load_settings)."""
    root = ctx.find_root()
    config_file: str | None = (root.obj or {}).get("config_file")
    return load_settings(overrides, config_file=config_file, outputs=outputs)
