"""Reads on a streaming replica (ADR 0019): its typed errors and how far behind it is.

A ``ReadModels`` built with ``primary=`` reads on a replica (``LEDGER_READ_DATABASE_URL``).
A replica replays the primary's WAL, so a position it has applied is exactly the primary's
state at that position: ``?min_position=N`` waits until the replica's own tracking row
shows N (it polls: LISTEN/NOTIFY do not reach a hot standby), else ``ReplicaLagging``.
Connection failures and queries the replay cancelled become ``ReplicaUnavailable``: both
answer 503 with Retry-After, never 500, and the primary (webhooks, spends) is unaffected.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from ledger.database import (
    APP_ROLE,
    UNREACHABLE,
    Conn,
    Logins,
    PrivilegeError,
    create_pool,
    rights_of,
    session_rights,
    with_user,
)
from ledger.errors import ProjectionLagging
from ledger.sql import package_sql
from ledger.store.eventstore import UNAVAILABLE_ERRORS, StoreUnavailable

SQL = package_sql("replica")
log = logging.getLogger(__name__)

# What a query on a replica may meet besides an outage: replay cancelled it (a conflict
# with recovery, SQLSTATE 40001/40P01), or the session was refused at connect time.
_FAILURES: tuple[type[BaseException], ...] = (
    *UNAVAILABLE_ERRORS,
    *UNREACHABLE,
    asyncpg.TransactionRollbackError,
    PrivilegeError,
)


class ReplicaUnavailable(StoreUnavailable):
    """The read replica cannot answer now (down, starting, or replay cancelled the query);
    nothing was read. Retry later."""


class ReplicaLagging(ProjectionLagging):
    """The replica has not replayed the position a reader asked for (yet)."""

    def __init__(
        self, name: str, reached: int, wanted: int, *, behind: int, seconds: float | None
    ) -> None:
        super().__init__(name, reached, wanted)
        self.behind = behind  # the primary's head minus the replica's
        self.seconds = seconds  # age of the last replayed commit; None: unknown

    @property
    def retry_after(self) -> int:
        """Seconds a client should wait: about the replay lag, from 1 to 30."""
        if self.seconds is None:
            return 1
        return max(1, min(30, math.ceil(self.seconds)))


@dataclass(frozen=True, slots=True)
class ReplayLag:
    head: int  # the replica's log head
    seconds: float | None


async def replay_lag(conn: Conn) -> ReplayLag:
    """How far the server behind ``conn`` is: its head and its replay lag in seconds."""
    row = await conn.fetchrow(SQL["replay_lag"])
    assert row is not None
    seconds = row["seconds"]
    return ReplayLag(int(row["head"]), None if seconds is None else round(float(seconds), 3))


@asynccontextmanager
async def answering() -> AsyncIterator[None]:
    """Around a replica query: its failures become ``ReplicaUnavailable`` (a 503)."""
    try:
        yield
    except _FAILURES as exc:
        if isinstance(exc, PrivilegeError):  # a deployment fault: say so where operators look
            log.error("%s", exc)
        raise ReplicaUnavailable(f"the read replica failed: {type(exc).__name__}") from exc


# --- The replica's pool -------------------------------------------------------------------


async def _replica_login(read_url: str, logins: Logins, *, production: bool) -> str:
    """The URL the replica pool logs in with: ``read_url`` when it is a plain login; in
    development a superuser/owner URL is swapped for ``ledger_app``, whose role and password
    the replica has replayed from the primary (a replica is read only: nothing to set)."""
    try:
        rights = await rights_of(read_url)
    except UNREACHABLE:
        # A replica that is down must not stop the service: webhooks never need it. Every
        # pooled session is checked when it connects (``_refuse_privileged``).
        log.warning("LEDGER_READ_DATABASE_URL does not answer yet; reads answer 503 until it does")
        return read_url
    if not rights.privileged:
        return read_url
    if production:
        raise PrivilegeError(
            "refusing to start in production: LEDGER_READ_DATABASE_URL logs in as "
            f"{rights.describe()}. Use the login role of LEDGER_DATABASE_URL (granted "
            f"{APP_ROLE}); the replica has it already"
        )
    log.warning(
        "LEDGER_READ_DATABASE_URL logs in as %s: development reads as %s instead",
        rights.describe(),
        APP_ROLE,
    )
    password = urlsplit(logins.app).password
    return with_user(read_url, APP_ROLE, None if password is None else unquote(password))


async def _refuse_privileged(conn: asyncpg.Connection) -> None:
    # Production, on every new replica session: the check startup could not make when the
    # replica was down then.
    rights = await session_rights(conn)
    if rights.privileged:
        raise PrivilegeError(
            f"the replica pool logs in as {rights.describe()}; refusing it in production"
        )


async def replica_pool(
    read_url: str, logins: Logins, *, production: bool = False, **kw: Any
) -> asyncpg.Pool:
    """The pool for ``LEDGER_READ_DATABASE_URL``: sessions run as ``ledger_app`` like the
    primary's, and production refuses a login that is a superuser or may act as the owner.
    It opens connections on demand, so a replica that is down costs reads a 503 (the
    caller maps the connection errors), never the service its start."""
    url = await _replica_login(read_url, logins, production=production)
    init = _refuse_privileged if production else None
    return await create_pool(url, min_size=0, init=init, **kw)
