"""Projection generations: the schema of each (projection, generation) and its lifecycle.

A projection seen for the first time gets generation 1 (``register``); a rebuild adds
generation N+1 folding from position 0 in its own schema (``start_rebuild``, blue/green,
ADR 0005); a generation neither live nor building is dropped after a grace period
(``retire``). ``lock_key`` is the advisory lock one worker holds while applying a generation.
"""

from __future__ import annotations

import functools
import hashlib
import logging

import asyncpg

from ledger.database import APP_ROLE, Conn
from ledger.readmodels import poison
from ledger.readmodels.contract import Projection, schema_name
from ledger.sql import package_sql

log = logging.getLogger("ledger.readmodels.runner")
SQL = package_sql("runner")


def lock_key(name: str, generation: int) -> int:
    """The advisory-lock key of one projection generation (a stable signed 64-bit int)."""
    digest = hashlib.blake2b(f"ledger.projection:{name}:{generation}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


async def connect(url: str, app_name: str = "ledger-runner") -> asyncpg.Connection:
    """A dedicated connection running as the application role (not from the pool)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url, server_settings={"application_name": app_name, "role": APP_ROLE}
    )
    return conn


async def create_generation(conn: Conn, proj: Projection, generation: int) -> None:
    """Create the generation's schema and tables (call inside a transaction)."""
    schema = schema_name(proj.name, generation)
    if await conn.fetchval(SQL["schema_exists"], schema):
        return
    await conn.execute(SQL["create_schema"], schema)
    await conn.execute(f"SET LOCAL search_path TO {schema}, public")
    await conn.execute(proj.schema_sql)
    await conn.execute("SET LOCAL search_path TO public")


async def register(conn: Conn, proj: Projection) -> None:
    """Give a projection seen for the first time generation 1 (idempotent, race-safe)."""
    async with conn.transaction():
        if await conn.fetchval(SQL["register"], proj.name, proj.version):
            await conn.execute(SQL["add_generation"], proj.name, 1)
            await create_generation(conn, proj, 1)


async def start_rebuild(conn: Conn, proj: Projection) -> tuple[int, bool]:
    """Start a blue/green rebuild: a new generation folding from position 0.

    Returns ``(generation, started)``; when a rebuild is already in progress its
    generation is returned with ``started=False`` (asking twice is harmless).
    """
    await register(conn, proj)
    async with conn.transaction():
        row = await conn.fetchrow(SQL["lock_projection"], proj.name)
        assert row is not None  # registered above
        if row["building_generation"] is not None:
            return int(row["building_generation"]), False
        highest = await conn.fetchval(SQL["max_generation"], proj.name)
        generation = max(int(highest), int(row["live_generation"])) + 1
        await conn.execute(SQL["add_generation"], proj.name, generation)
        await create_generation(conn, proj, generation)
        await conn.execute(SQL["start_building"], proj.name, generation)
        await conn.execute(SQL["notify_progress"], f"{proj.name}:{generation}:rebuild")
    return generation, True


async def retry_poisoned(conn: Conn, proj: Projection) -> list[poison.RetryOutcome]:
    """Re-apply ``proj``'s poisoned events in its live and building generations (call in a
    transaction; an operator action). Each generation's tracking row is locked first, as a
    batch does, so a retry and the runner never apply at once. Applying an old event after
    later ones is correct because projections are order-independent folds (ADR 0008)."""
    outcomes: list[poison.RetryOutcome] = []
    info = await conn.fetchrow(SQL["get_projection"], proj.name)
    if info is None:
        return outcomes
    for generation in (info["live_generation"], info["building_generation"]):
        if generation is None:
            continue
        if await conn.fetchval(SQL["lock_tracking"], proj.name, generation) is None:
            continue
        schema = schema_name(proj.name, generation)
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        outcome = await poison.retry(
            conn, proj.name, int(generation), functools.partial(proj.apply, conn)
        )
        await conn.execute("SET LOCAL search_path TO public")
        outcomes.append(outcome)
    return outcomes


async def retire(conn: Conn, name: str, generation: int) -> None:
    """Drop a generation that is neither live nor building (after the grace period)."""
    schema = schema_name(name, generation)
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '2s'")
        await conn.execute(SQL["drop_tracking"], name, generation)
        await poison.drop_generation(conn, name, generation)
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    log.info("projection %s: dropped retired generation %d", name, generation)
