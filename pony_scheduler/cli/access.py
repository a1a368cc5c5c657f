"""`pb gateway token` and `pb debug url`: the credentials of the API and the dashboard.

Light on purpose (no aiohttp, no SQLAlchemy): the token code and the login links live in
modules that only need the standard library.
"""

from __future__ import annotations

import click

from pony_scheduler.cli import Command
from pony_scheduler.cli.options import settings_from
from pony_scheduler.config import Settings
from pony_scheduler.errors import PonyError


@click.command(cls=Command, name="token")
@click.option(
    "--read-only",
    "read_only",
    is_flag=True,
    help="The read-only token (reads only: for monitoring) instead of the admin token.",
)
@click.option(
    "--rotate",
    is_flag=True,
    help="Replace the token with a new one: the old one is refused at once and "
    "every dashboard session ends.",
)
@click.pass_context
def gateway_token(ctx: click.Context, read_only: bool, rotate: bool) -> None:
    """Print the gateway's API token (made on first use), or --rotate it.

    Only the token goes to standard output, so that scripts can use
    "$(pb gateway token)"; notes go to standard error.
    """
    from pony_scheduler.gateway.token import Kind, ensure_tokens, new_token, token_path
    from pony_scheduler.lifecycle.daemonize import ensure_home

    settings = settings_from(ctx)
    ensure_home(settings.home)
    kind: Kind = "read" if read_only else "admin"
    path = token_path(settings.home, kind)
    if rotate:
        token = new_token(settings.home, kind)
        click.echo(
            f"✓ New {'read-only' if read_only else 'admin'} token in {path}; the old "
            "one is refused from now on and dashboard sessions have ended",
            err=True,
        )
    else:
        token = ensure_tokens(settings.home)[kind]
    click.echo(token)


def dashboard_address(settings: Settings) -> tuple[str, bool]:
    """Where the dashboard listens (its metadata when it runs) and whether it runs and is
    verified as ours: its pid file names a live process that its metadata describes
    (pidfile.inspect: /proc start time, boot id), that runs as our user and that holds
    the listening socket of that address (debug/listeners.py: before it binds or after
    it closes, another user may hold the port, and would read the login code)."""
    import os

    from pony_scheduler.lifecycle import pidfile
    from pony_scheduler.lifecycle.spec import DEBUG

    info = pidfile.inspect(DEBUG, settings.home)
    address = (info.meta or {}).get("address")
    if (
        info.state is pidfile.PidState.RUNNING
        and info.meta is not None
        and info.owner_uid == os.geteuid()
        and isinstance(address, str)
        and info.pid is not None
        and _listens(info.pid, address)
    ):
        return address, True
    if info.state is pidfile.PidState.RUNNING and isinstance(address, str):
        return address, False  # a live dashboard claims it, but does not hold it
    host = settings.debug_host
    return (
        f"http://[{host}]:{settings.debug_port}"
        if ":" in host
        else f"http://{host}:{settings.debug_port}"
    ), False


def _listens(pid: int, address: str) -> bool:
    """Does process `pid` hold a listening socket on the host and port of URL `address`?"""
    from pony_scheduler.debug.listeners import held_address

    try:
        return held_address(pid, address) is not None
    except (ValueError, OSError):
        return False


def new_login_url(settings: Settings, address: str) -> str:
    from pony_scheduler.debug.logins import login_url, new_code

    try:
        return login_url(address, new_code(settings.home))
    except OSError as exc:
        raise PonyError(
            f"cannot make a login link in {settings.home}: {exc.strerror or exc}"
        ) from None


@click.command(cls=Command, name="url")
@click.pass_context
def debug_url(ctx: click.Context) -> None:
    """Print a one-time login link for the dashboard (it works once, for 10 minutes)."""
    from pony_scheduler.lifecycle.daemonize import ensure_home

    settings = settings_from(ctx)
    ensure_home(settings.home)
    address, running = dashboard_address(settings)
    if not running:
        # Whoever holds the port meanwhile could read a live code from the page it is
        # opened on, and use it once the real dashboard starts: no code then.  Only the
        # address a live dashboard claims is named (review: a stopped one's default
        # port was named, not the one it had run on).
        from pony_scheduler.lifecycle import pidfile
        from pony_scheduler.lifecycle.spec import DEBUG

        if pidfile.inspect(DEBUG, settings.home).state is pidfile.PidState.RUNNING:
            raise PonyError(
                f"the dashboard does not hold its port ({address}), so no login link "
                "is made (another program could be listening there); 'pb debug "
                "restart' prints one"
            )
        raise PonyError(
            "the dashboard is not running, so no login link is made; start it with "
            "'pb debug start', which prints one"
        )
    click.echo(new_login_url(settings, address))


# By name: cli/service.py's EXTRA_COMMANDS says which service has which.
EXTRA_BUILT: dict[str, click.Command] = {"token": gateway_token, "url": debug_url}
