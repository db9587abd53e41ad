"""Finance audit routes (``/v1/audit``): the chain head, search, export and the daily summary.

Order and customer timelines and the as-of views are in ``ledger.api.audit_timelines``.
Times in query strings: see ``ledger.api.times`` (ISO 8601, inside the calendar).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Stream

from ledger.api.auth import KeyedController, keyed_get
from ledger.api.docs import CsvOrJsonLines
from ledger.api.params import (
    ACQUIRE_TIMEOUT,
    MAX_TEXT,
    Limit,
    Position,
    Text,
)
from ledger.api.reads import ON_REPLICA
from ledger.api.times import From, To, day_window, parse_time
from ledger.audit import chain, queries
from ledger.audit import index as audit
from ledger.errors import ProjectionUnavailable
from ledger.payments.amounts import plain_or_none
from ledger.readmodels.access import ReadModels

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = datetime(9999, 1, 1, tzinfo=UTC)


class AuditEvent(msgspec.Struct, kw_only=True):
    position: int
    event_id: str
    topic: str
    received_at: str
    category: str
    provider: str | None
    kind: str | None
    dedup_key: str | None
    customer: str | None
    order_id: str | None
    status: str | None
    amount: str | None
    paid_amount: str | None
    currency: str | None
    body_sha256: str | None
    actor: str | None
    target: str | None
    hash: str | None


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditEvent]
    next_after: int
    has_more: bool


class Head(msgspec.Struct, kw_only=True):
    position: int
    hash: str | None


class Summary(msgspec.Struct, kw_only=True):
    date: str
    tz: str
    since: str
    until: str
    providers: list[queries.ProviderDay]


def _event(r: Any) -> AuditEvent:
    return AuditEvent(
        position=r["position"],
        event_id=str(r["event_id"]),
        topic=r["topic"],
        received_at=r["received_at"].isoformat(),
        category=r["category"],
        provider=r["provider"],
        kind=r["kind"],
        dedup_key=r["dedup_key"],
        customer=r["customer"],
        order_id=r["order_id"],
        status=r["status"],
        amount=plain_or_none(r["amount"]),
        paid_amount=plain_or_none(r["paid_amount"]),
        currency=r["currency"],
        body_sha256=r["body_sha256"],
        actor=r["actor"],
        target=r["target"],
        hash=None if r["hash"] is None else bytes(r["hash"]).hex(),
    )


def _csv_header() -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(queries.EXPORT_COLUMNS)
    return buf.getvalue().encode()


async def _csv(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The header, then the rows PostgreSQL formats (``queries.export_csv``)."""
    yield _csv_header()
    async for chunk in body:
        yield chunk


async def _jsonl(pages: AsyncIterator[list[Any]]) -> AsyncIterator[bytes]:
    enc = msgspec.json.Encoder()
    cols = queries.EXPORT_COLUMNS
    async for rows in pages:
        out = bytearray()
        for r in rows:
            values = dict(zip(cols, queries.export_values(r), strict=True))
            values["position"] = r["cursor"]  # a number in JSON
            enc.encode_into(values, out, -1)
            out += b"\n"
        yield bytes(out)


class AuditReader(KeyedController):
    """``/v1/audit``, for keys with ``audit:read``: this controller and the timelines'."""

    path = "/v1/audit"
    tags = ["audit"]
    opt = {"scopes": ("audit:read",)}
    # Queries run on the read replica when one is configured (ADR 0019); ``pool`` stays
    # the primary's: the audit index catches up there, then the replica is waited for.
    dependencies = ON_REPLICA


class AuditController(AuditReader):
    @keyed_get("/head", "The latest position and its chain hash (keep daily digests)")
    async def head(self, pool: NamedDependency[asyncpg.Pool]) -> Head:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            position, digest = await chain.head(conn)
        return Head(position=position, hash=digest.hex() if digest else None)

    @keyed_get("/events", "Search the log by provider, customer, order, type and time")
    async def events(
        self,
        pool: NamedDependency[asyncpg.Pool],
        read_models: NamedDependency[ReadModels],
        provider: Text = None,
        customer: Text = None,
        order_id: Text = None,
        type_: Annotated[
            str | None,
            QueryParameter(name="type", max_length=MAX_TEXT, description="kind, topic or name"),
        ] = None,
        from_: From = None,
        to: To = None,
        after: Position = 0,
        limit: Limit = 100,
    ) -> AuditPage:
        filters = queries.Filters(
            provider=provider,
            customer=customer,
            order_id=order_id,
            type=type_,
            since=parse_time("from", from_),
            until=parse_time("to", to),
        )
        reads = await read_models.audit_pool(await audit.catch_up(pool))
        async with reads.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            rows = await queries.search(conn, filters, after, limit + 1)
        has_more = len(rows) > limit
        rows = rows[:limit]
        return AuditPage(
            items=[_event(r) for r in rows],
            next_after=rows[-1]["position"] if rows else after,
            has_more=has_more,
        )

    @keyed_get(
        "/export",
        "Stream events received in [from, to) as CSV or JSON lines",
        operation_class=CsvOrJsonLines,
    )
    async def export(
        self,
        pool: NamedDependency[asyncpg.Pool],
        read_models: NamedDependency[ReadModels],
        from_: From = None,
        to: To = None,
        format_: Annotated[Literal["csv", "jsonl"], QueryParameter(name="format")] = "csv",
    ) -> Stream:
        since = parse_time("from", from_) or _EPOCH
        until = parse_time("to", to) or _FAR
        reads = await read_models.audit_pool(await audit.catch_up(pool))
        if format_ == "csv":
            # litestar adds "; charset=utf-8" to text/* types itself (once).
            body = _csv(queries.export_csv(reads, since, until))
            media, ext = "text/csv", "csv"
        else:
            body = _jsonl(queries.export_pages(reads, since, until))
            media, ext = "application/x-ndjson", "jsonl"
        name = f"ledger-{since.date().isoformat()}-{until.date().isoformat()}.{ext}"
        return Stream(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @keyed_get("/summary", "Per provider for one day: deliveries, paid, refunds, failures")
    async def summary(
        self,
        pool: NamedDependency[asyncpg.Pool],
        read_models: NamedDependency[ReadModels],
        date_: Annotated[str, QueryParameter(name="date", max_length=10, description="YYYY-MM-DD")],
        tz: Annotated[
            str, QueryParameter(max_length=64, description="IANA time zone of the day")
        ] = "UTC",
    ) -> Summary:
        day, since, until = day_window(date_, tz)
        reads = await read_models.audit_pool(await audit.catch_up(pool))
        async with reads.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            days = await queries.summary(conn, since, until)
        try:  # reconciliation: recovered, unconfirmed and mismatched orders (orders model)
            async with read_models.reading("orders") as conn:
                checks = await conn.fetch(read_models.query("orders", "check_counts"), since, until)
        except ProjectionUnavailable:
            checks = []
        days = queries.with_check_counts(days, checks)
        return Summary(
            date=day.isoformat(),
            tz=tz,
            since=since.isoformat(),
            until=until.isoformat(),
            providers=days,
        )
