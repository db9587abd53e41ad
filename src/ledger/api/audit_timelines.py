"""Audit timelines and as-of views (``/v1/audit/orders/...``, ``/v1/audit/customers/...``):
an order's or a customer's deliveries with their effects, and tokens or subscriptions as of a
position or a time. Search, export and the summary are in ``ledger.api.audit``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from litestar.di import NamedDependency

from ledger.api.accounts import customer_param
from ledger.api.audit import AuditReader
from ledger.api.auth import keyed_get
from ledger.api.params import (
    ACQUIRE_TIMEOUT,
    CustomerPath,
    Limit,
    OptionalPosition,
    OrderIdPath,
    Position,
    ProviderPath,
)
from ledger.api.times import AsOf, parse_time
from ledger.audit import asof, queries
from ledger.audit import index as audit
from ledger.database import Conn
from ledger.errors import ProjectionUnavailable
from ledger.readmodels.access import ReadModels


class Timeline(msgspec.Struct, kw_only=True):
    subject: str
    order_status: str | None
    entries: list[queries.TimelineEntry]
    next_after: int
    has_more: bool
    at_position: int | None = None
    as_of: str | None = None


async def _credits_schema(read_models: ReadModels) -> str | None:
    """The live token_balances schema, or None where that projection never ran."""
    try:
        return await read_models.live_schema("token_balances")
    except ProjectionUnavailable:
        return None


async def _timeline(
    pool: asyncpg.Pool,
    read_models: ReadModels,
    subject: str,
    query: str,
    args: tuple[Any, ...],
    outbox_key: tuple[str, str],
    after: int,
    limit: int,
    at_position: int | None,
    as_of: str | None,
) -> Timeline:
    upto = parse_time("as_of", as_of)
    reads = await read_models.audit_pool(await audit.catch_up(pool))
    credits = await _credits_schema(read_models)
    async with reads.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        rows = await conn.fetch(queries.SQL[query], *args, after, limit + 1, at_position, upto)
        has_more = len(rows) > limit
        rows = rows[:limit]
        entries = await queries.timeline(conn, rows, outbox_key, credits)
    statuses = [e.order_status_after for e in entries if e.order_status_after]
    return Timeline(
        subject=subject,
        order_status=statuses[-1] if query == "timeline_order" and statuses else None,
        entries=entries,
        next_after=entries[-1].position if entries else after,
        has_more=has_more,
        at_position=at_position,
        as_of=upto.isoformat() if upto else None,
    )


@asynccontextmanager
async def _snapshot(
    pool: asyncpg.Pool, read_models: ReadModels, at_position: int | None, upto: datetime | None
) -> AsyncIterator[tuple[Conn, int]]:
    """A connection in one repeatable-read snapshot of the caught-up index (on the replica
    when one is configured), and the last position at the cut-off (``at_position`` or
    ``upto``), so an as-of answer reads one state."""
    reads = await read_models.audit_pool(await audit.catch_up(pool))
    async with (
        reads.acquire(timeout=ACQUIRE_TIMEOUT) as conn,
        conn.transaction(isolation="repeatable_read"),
    ):
        yield conn, await asof.cutoff(conn, at_position, upto)


class AuditTimelinesController(AuditReader):
    @keyed_get("/orders/{provider:str}/{order_id:str}", "An order's deliveries and effects")
    async def order_timeline(
        self,
        pool: NamedDependency[asyncpg.Pool],
        read_models: NamedDependency[ReadModels],
        provider: ProviderPath,
        order_id: OrderIdPath,
        after: Position = 0,
        limit: Limit = 500,
        at_position: OptionalPosition = None,
        as_of: AsOf = None,
    ) -> Timeline:
        """``order_status`` is the status as of the cut-off (the whole log by default)."""
        return await _timeline(
            pool,
            read_models,
            f"{provider}:{order_id}",
            "timeline_order",
            (provider, order_id),
            ("order", f"{provider}:{order_id}"),
            after,
            limit,
            at_position,
            as_of,
        )

    @keyed_get("/customers/{customer:str}", "A customer's events and their effects")
    async def customer_timeline(
        self,
        pool: NamedDependency[asyncpg.Pool],
        read_models: NamedDependency[ReadModels],
        customer: CustomerPath,
        after: Position = 0,
        limit: Limit = 200,
        at_position: OptionalPosition = None,
        as_of: AsOf = None,
    ) -> Timeline:
        who = customer_param(customer)
        return await _timeline(
            pool,
            read_models,
            who,
            "timeline_customer",
            (who,),
            ("customer", who),
            after,
            limit,
            at_position,
            as_of,
        )

    @keyed_get("/customers/{customer:str}/balance", "Tokens as of a position or a time")
    async def balance(
        self,
        pool: NamedDependency[asyncpg.Pool],
        read_models: NamedDependency[ReadModels],
        customer: CustomerPath,
        at_position: OptionalPosition = None,
        as_of: AsOf = None,
    ) -> asof.BalanceAsOf:
        upto = parse_time("as_of", as_of)
        # The live read model's catalogue, so the as-of answer credits as it does.
        catalogue = read_models.catalogue("token_balances")
        async with _snapshot(pool, read_models, at_position, upto) as (conn, position):
            return await asof.balance_as_of(
                conn, customer_param(customer), position, catalogue, upto
            )

    @keyed_get("/customers/{customer:str}/subscriptions", "Subscriptions as of a point")
    async def subscriptions(
        self,
        pool: NamedDependency[asyncpg.Pool],
        read_models: NamedDependency[ReadModels],
        customer: CustomerPath,
        at_position: OptionalPosition = None,
        as_of: AsOf = None,
    ) -> asof.SubscriptionsAsOf:
        """Status (active, cancelled, expired) of each license right after the cut-off;
        expiry is judged at ``as_of``, or when the cut-off event was recorded."""
        upto = parse_time("as_of", as_of)
        async with _snapshot(pool, read_models, at_position, upto) as (conn, position):
            at = await asof.evaluation_time(conn, position, at_position, upto)
            return await asof.subscriptions_as_of(conn, customer_param(customer), position, at)
