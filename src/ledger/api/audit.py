"""Finance audit routes (``/v1/audit``) and key administration with a reason (``/v1/keys``).

Times in query strings: see ``ledger.api.times`` (ISO 8601, inside the calendar).
``reason_header`` is the one way routes read the operator's ``X-Ledger-Reason``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import QueryParameter
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.response import Stream

from ledger.api.accounts import customer_param
from ledger.api.auth import current_key, require_key
from ledger.api.docs import BEARER, CsvOrJsonLines
from ledger.api.params import (
    ACQUIRE_TIMEOUT,
    MAX_TEXT,
    CustomerPath,
    IdPath,
    Limit,
    OptionalPosition,
    OrderIdPath,
    Position,
    ProviderPath,
    Text,
)
from ledger.api.problems import KEYED, problem, responses
from ledger.api.times import AsOf, From, To, day_window, parse_time
from ledger.audit import asof, chain
from ledger.audit import index as audit
from ledger.audit.keys import KeyRing, list_keys, revoke_key
from ledger.audit.trail import ReasonRequired, append_in, check_reason, operator_event

REASON_HEADER = "x-ledger-reason"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = datetime(9999, 1, 1, tzinfo=UTC)


def reason_header(request: Request[Any, Any, Any]) -> str:
    """The operator's reason, or a 400 problem naming the header."""
    try:
        return check_reason(request.headers.get(REASON_HEADER))
    except ReasonRequired as exc:
        raise problem(
            400,
            "reason-required",
            "A reason is required",
            f"send why in the X-Ledger-Reason header ({exc})",
        ) from None


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
    providers: list[audit.ProviderDay]


def _dec(v: Any) -> str | None:
    return None if v is None else str(v)


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
        amount=_dec(r["amount"]),
        paid_amount=_dec(r["paid_amount"]),
        currency=r["currency"],
        body_sha256=r["body_sha256"],
        actor=r["actor"],
        target=r["target"],
        hash=None if r["hash"] is None else bytes(r["hash"]).hex(),
    )


async def _csv(pages: AsyncIterator[list[Any]]) -> AsyncIterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(audit.EXPORT_COLUMNS)
    yield buf.getvalue().encode()
    async for rows in pages:
        buf.seek(0)
        buf.truncate()
        writer.writerows(audit.export_values(r) for r in rows)
        yield buf.getvalue().encode()


async def _jsonl(pages: AsyncIterator[list[Any]]) -> AsyncIterator[bytes]:
    enc = msgspec.json.Encoder()
    cols = audit.EXPORT_COLUMNS
    async for rows in pages:
        out = bytearray()
        for r in rows:
            values = dict(zip(cols, audit.export_values(r), strict=True))
            values["position"] = r["cursor"]  # a number in JSON
            enc.encode_into(values, out, -1)
            out += b"\n"
        yield bytes(out)


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]
    guards = [require_key]
    opt = {"scopes": ("audit:read",)}
    security = BEARER

    @get(
        "/head",
        summary="The latest position and its chain hash (keep daily digests)",
        responses=responses(*KEYED),
    )
    async def head(self, request: Request[Any, Any, Any]) -> Head:
        async with request.app.state.services.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            position, digest = await chain.head(conn)
        return Head(position=position, hash=digest.hex() if digest else None)

    @get(
        "/events",
        summary="Search the log by provider, customer, order, type and time",
        responses=responses(*KEYED),
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
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
        filters = audit.Filters(
            provider=provider,
            customer=customer,
            order_id=order_id,
            type=type_,
            since=parse_time("from", from_),
            until=parse_time("to", to),
        )
        pool = request.app.state.services.pool
        await audit.catch_up(pool)
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            rows = await audit.search(conn, filters, after, limit + 1)
        has_more = len(rows) > limit
        rows = rows[:limit]
        return AuditPage(
            items=[_event(r) for r in rows],
            next_after=rows[-1]["position"] if rows else after,
            has_more=has_more,
        )

    @get(
        "/export",
        summary="Stream events received in [from, to) as CSV or JSON lines",
        operation_class=CsvOrJsonLines,
        responses=responses(*KEYED),
    )
    async def export(
        self,
        request: Request[Any, Any, Any],
        from_: From = None,
        to: To = None,
        format_: Annotated[Literal["csv", "jsonl"], QueryParameter(name="format")] = "csv",
    ) -> Stream:
        since = parse_time("from", from_) or _EPOCH
        until = parse_time("to", to) or _FAR
        pool = request.app.state.services.pool
        await audit.catch_up(pool)
        pages = audit.export_pages(pool, since, until)
        if format_ == "csv":
            # litestar adds "; charset=utf-8" to text/* types itself (once).
            body, media, ext = _csv(pages), "text/csv", "csv"
        else:
            body, media, ext = _jsonl(pages), "application/x-ndjson", "jsonl"
        name = f"ledger-{since.date().isoformat()}-{until.date().isoformat()}.{ext}"
        return Stream(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @get(
        "/orders/{provider:str}/{order_id:str}",
        summary="An order's deliveries and effects",
        responses=responses(*KEYED),
    )
    async def order_timeline(
        self,
        request: Request[Any, Any, Any],
        provider: ProviderPath,
        order_id: OrderIdPath,
        after: Position = 0,
        limit: Limit = 500,
        at_position: OptionalPosition = None,
        as_of: AsOf = None,
    ) -> Timeline:
        """``order_status`` is the status as of the cut-off (the whole log by default)."""
        return await _timeline(
            request,
            f"{provider}:{order_id}",
            "timeline_order",
            (provider, order_id),
            ("order", f"{provider}:{order_id}"),
            after,
            limit,
            at_position,
            as_of,
        )

    @get(
        "/customers/{customer:str}",
        summary="A customer's events and their effects",
        responses=responses(*KEYED),
    )
    async def customer_timeline(
        self,
        request: Request[Any, Any, Any],
        customer: CustomerPath,
        after: Position = 0,
        limit: Limit = 200,
        at_position: OptionalPosition = None,
        as_of: AsOf = None,
    ) -> Timeline:
        who = customer_param(customer)
        return await _timeline(
            request,
            who,
            "timeline_customer",
            (who,),
            ("customer", who),
            after,
            limit,
            at_position,
            as_of,
        )

    @get(
        "/customers/{customer:str}/balance",
        summary="Tokens as of a position or a time",
        responses=responses(*KEYED),
    )
    async def balance(
        self,
        request: Request[Any, Any, Any],
        customer: CustomerPath,
        at_position: OptionalPosition = None,
        as_of: AsOf = None,
    ) -> asof.BalanceAsOf:
        from ledger.projections.token_balances import PROJECTION  # the live read model's catalogue

        upto = parse_time("as_of", as_of)
        pool = request.app.state.services.pool
        await audit.catch_up(pool)
        async with (
            pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn,
            conn.transaction(isolation="repeatable_read"),
        ):
            position = await asof.cutoff(conn, at_position, upto)
            return await asof.balance_as_of(
                conn, customer_param(customer), position, PROJECTION.catalogue, upto
            )

    @get(
        "/customers/{customer:str}/subscriptions",
        summary="Subscriptions as of a point",
        responses=responses(*KEYED),
    )
    async def subscriptions(
        self,
        request: Request[Any, Any, Any],
        customer: CustomerPath,
        at_position: OptionalPosition = None,
        as_of: AsOf = None,
    ) -> asof.SubscriptionsAsOf:
        """Status (active, cancelled, expired) of each license right after the cut-off;
        expiry is judged at ``as_of``, or when the cut-off event was recorded."""
        upto = parse_time("as_of", as_of)
        pool = request.app.state.services.pool
        await audit.catch_up(pool)
        async with (
            pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn,
            conn.transaction(isolation="repeatable_read"),
        ):
            position = await asof.cutoff(conn, at_position, upto)
            at = await asof.evaluation_time(conn, position, at_position, upto)
            return await asof.subscriptions_as_of(conn, customer_param(customer), position, at)

    @get(
        "/summary",
        summary="Per provider for one day: deliveries, paid, refunds, failures",
        responses=responses(*KEYED),
    )
    async def summary(
        self,
        request: Request[Any, Any, Any],
        date_: Annotated[str, QueryParameter(name="date", max_length=10, description="YYYY-MM-DD")],
        tz: Annotated[
            str, QueryParameter(max_length=64, description="IANA time zone of the day")
        ] = "UTC",
    ) -> Summary:
        day, since, until = day_window(date_, tz)
        pool = request.app.state.services.pool
        await audit.catch_up(pool)
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            days = await audit.summary(conn, since, until)
        return Summary(
            date=day.isoformat(),
            tz=tz,
            since=since.isoformat(),
            until=until.isoformat(),
            providers=days,
        )


class Timeline(msgspec.Struct, kw_only=True):
    subject: str
    order_status: str | None
    entries: list[audit.TimelineEntry]
    next_after: int
    has_more: bool
    at_position: int | None = None
    as_of: str | None = None


async def _credits_schema(request: Request[Any, Any, Any]) -> str | None:
    """The live token_balances schema, or None where that projection never ran."""
    read_models = request.app.state.services.read_models
    try:
        schema: str = await read_models.live_schema("token_balances")
    except ProblemDetailsException:
        return None
    return schema


async def _timeline(
    request: Request[Any, Any, Any],
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
    pool = request.app.state.services.pool
    await audit.catch_up(pool)
    credits = await _credits_schema(request)
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
        rows = await conn.fetch(audit.SQL[query], *args, after, limit + 1, at_position, upto)
        has_more = len(rows) > limit
        rows = rows[:limit]
        entries = await audit.timeline(conn, rows, outbox_key, credits)
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


class KeyView(msgspec.Struct, kw_only=True):
    key_id: str
    name: str
    scopes: list[str]
    created_at: str
    revoked_at: str | None


class Revoked(msgspec.Struct, kw_only=True):
    key: KeyView
    revoked_now: bool
    position: int | None


def _key_view(k: Any) -> KeyView:
    return KeyView(
        key_id=k.key_id,
        name=k.name,
        scopes=list(k.scopes),
        created_at=k.created_at.isoformat(),
        revoked_at=k.revoked_at.isoformat() if k.revoked_at else None,
    )


class KeysController(Controller):
    path = "/v1/keys"
    tags = ["operators"]
    guards = [require_key]
    opt = {"scopes": ("ops:admin",)}
    security = BEARER

    @get(
        "/",
        summary="API keys: ids, names, scopes, created/revoked (never secrets)",
        responses=responses(*KEYED),
    )
    async def list_keys(self, request: Request[Any, Any, Any]) -> list[KeyView]:
        async with request.app.state.services.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            return [_key_view(k) for k in await list_keys(conn)]

    @post(
        "/{key_id:str}/revoke",
        status_code=200,
        summary="Revoke a key (X-Ledger-Reason)",
        responses=responses(*KEYED, 404, 413),
    )
    async def revoke(self, request: Request[Any, Any, Any], key_id: IdPath) -> Revoked:
        reason = reason_header(request)
        actor = current_key(request)
        services = request.app.state.services
        async with services.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn, conn.transaction():
            info, now = await revoke_key(conn, key_id)
            position = None
            if now:
                event = operator_event(
                    actor.key_id, "ops:admin", "key.revoke", f"api_key:{key_id}", reason
                )
                position = await append_in(conn, event)
        if info is None:
            raise problem(404, "key-not-found", "No such key", f"no API key {key_id!r}")
        keyring: KeyRing = services.keyring
        keyring.invalidate(key_id)
        return Revoked(key=_key_view(info), revoked_now=now, position=position)
