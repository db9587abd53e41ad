"""What every ``ledger`` command shares: settings, the one ledger it works on, a session."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import click

from ledger.config import ConfigError, Settings, load_settings
from ledger.database import resolve_database_url


def cli_settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return settings


def ledger_url(settings: Settings, *, create: bool = False) -> str:
    """The database URL; without ``create``, only an existing ledger's (see ``require_ledger``)."""
    if not create:
        require_ledger(settings)
    return resolve_database_url(settings.database_url, settings.home_path)


def require_ledger(settings: Settings) -> None:
    """Fail unless LEDGER_DATABASE_URL is set or ``$LEDGER_HOME/pgdata`` exists.

    Starting the embedded server here would create an empty ledger beside the real one: a key
    created there is unknown to the running server, a count there reads zero.
    """
    if settings.database_url:
        return
    pgdata = settings.home_path / "pgdata"
    if not pgdata.is_dir():
        raise click.ClickException(
            f"no ledger here: {pgdata} does not exist and LEDGER_DATABASE_URL is not set. "
            "Run this command in the directory where `ledger serve` runs (its ./.ledger), "
            "or set LEDGER_HOME to the server's home, or LEDGER_DATABASE_URL to its database "
            "(only `ledger serve` and `ledger migrate` create a new one)"
        )


async def session_login(url: str) -> tuple[str, dict[str, str]]:
    """The URL and session settings of a CLI session: like the service, logged in as
    ``ledger_app``, never as the owner (ADR 0011)."""
    from ledger.database import APP_ROLE, logins_for

    logins = await logins_for(url, cli_settings())
    return logins.app, {"application_name": "ledger-cli", "role": APP_ROLE}


async def connect(url: str) -> asyncpg.Connection:
    """A CLI session (``session_login``)."""
    login, settings = await session_login(url)
    conn: asyncpg.Connection = await asyncpg.connect(login, server_settings=settings)
    return conn


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def log_format() -> Any:
    try:
        return load_settings().log_format
    except ConfigError:  # the command itself reports it (_settings); log in the default format
        return "console"
