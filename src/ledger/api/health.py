"""``/health`` (the process answers) and ``/ready`` (database reachable, schema current)."""

from __future__ import annotations

from typing import Any

import asyncpg
from litestar import get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.response import Response

from ledger import migrate
from ledger.store.eventstore import SQL as STORE_SQL
from ledger.store.eventstore import UNAVAILABLE_ERRORS

RETRY = {"Retry-After": "5"}


@get("/health", tags=["health"], summary="Liveness")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/ready",
    tags=["health"],
    summary="Readiness: database reachable and migrated",
    responses={
        503: ResponseSpec(
            data_container=dict[str, Any],
            description="The database is unreachable or migrations are pending",
            generate_examples=False,
        )
    },
)
async def ready(pool: NamedDependency[asyncpg.Pool]) -> Response[dict[str, Any]]:
    try:
        async with pool.acquire(timeout=2) as conn:
            todo = await migrate.pending(conn)
            head = await conn.fetchval(STORE_SQL["head"])
    except UNAVAILABLE_ERRORS as exc:
        return Response(
            {"status": "unavailable", "database": type(exc).__name__},
            status_code=503,
            headers=RETRY,
        )
    if todo:
        return Response(
            {"status": "migrations-pending", "pending": todo}, status_code=503, headers=RETRY
        )
    return Response({"status": "ready", "position": head})
