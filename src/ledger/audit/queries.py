"""Finance's queries over the audit index: search, streaming export, daily summary, timelines.

Every query reads ``audit_index`` (kept by ``ledger.audit.index``); the routes call
``catch_up`` first, so answers include everything committed before the request.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any

import asyncpg
import msgspec

from ledger.ingest.providers import mayar
from ledger.payments.amounts import plain, plain_or_none
from ledger.payments.customers import customer_key
from ledger.payments.orderstatus import RANK, held
from ledger.readmodels.contract import Conn
from ledger.sql import package_sql

SQL = package_sql("audit")
EXPORT_PAGE = 2_000
EXPORT_CSV_PAGE = 10_000

EXPORT_COLUMNS = (
    "position",
    "event_id",
    "received_at",
    "category",
    "provider",
    "kind",
    "dedup_key",
    "customer",
    "order_id",
    "status",
    "expected_amount",
    "paid_amount",
    "currency",
    "body_sha256",
    "hash",
)


@dataclass(frozen=True, slots=True)
class Filters:
    provider: str | None = None
    customer: str | None = None
    order_id: str | None = None
    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def search(conn: Conn, filters: Filters, after: int, limit: int) -> list[asyncpg.Record]:
    """Index rows (with the chain hash) after ``after`` matching every given filter."""
    customer = customer_key(filters.customer) if filters.customer else None
    if filters.customer and customer is None:
        return []  # not an address: no indexed customer can match (every one is a key)
    result: list[asyncpg.Record] = await conn.fetch(
        SQL["search"],
        after,
        limit,
        filters.provider,
        customer,
        filters.order_id,
        filters.type,
        filters.since,
        filters.until,
    )
    return result


async def export_pages(
    pool: asyncpg.Pool, since: datetime, until: datetime, *, page: int = EXPORT_PAGE
) -> AsyncIterator[list[asyncpg.Record]]:
    """Rows received in [since, until), position order, one bounded page at a time (each
    page on a short-lived connection, so a slow client holds no transaction open). The
    first ``len(EXPORT_COLUMNS)`` values of a row are the export's text columns."""
    async with pool.acquire() as conn:
        bounds = await conn.fetchrow(SQL["time_bounds"], since, until)
    if bounds is None or bounds["lo"] is None:
        return
    after, hi = bounds["lo"] - 1, bounds["hi"]
    while after < hi:
        async with pool.acquire() as conn:
            rows = await conn.fetch(SQL["export_page"], after, hi, page)
        if not rows:
            return
        after = rows[-1]["cursor"]
        kept = [r for r in rows if since <= r["at"] < until]
        if kept:
            yield kept


async def export_csv(
    pool: asyncpg.Pool, since: datetime, until: datetime, *, page: int = EXPORT_CSV_PAGE
) -> AsyncIterator[bytes]:
    """The CSV rows (no header) of ``export_pages``, in position order: the bytes
    ``csv.writer`` writes for ``export_values`` of the same rows (ADR 0024), formatted by
    PostgreSQL. Pages are position ranges ``page`` wide, each read on a short-lived
    connection (a slow client holds no transaction open); the next page is read while this
    one is sent, on a second connection, so two server processes format at once."""
    async with pool.acquire() as conn:
        bounds = await conn.fetchrow(SQL["time_bounds"], since, until)
    if bounds is None or bounds["lo"] is None:
        return
    lo, hi = bounds["lo"] - 1, bounds["hi"]

    async def read(after: int) -> bytes | None:
        async with pool.acquire() as conn:
            body: bytes | None = await conn.fetchval(
                SQL["export_csv_page"], after, min(after + page, hi), since, until, CSV_QUOTED
            )
        return body

    starts = iter(range(lo, hi, page))
    ahead = deque(asyncio.ensure_future(read(a)) for a in islice(starts, 2))
    try:
        while ahead:
            body = await ahead.popleft()
            for a in islice(starts, 1):
                ahead.append(asyncio.ensure_future(read(a)))
            if body:
                yield body
    finally:
        for task in ahead:
            task.cancel()
        await asyncio.gather(*ahead, return_exceptions=True)


def _csv_quoted() -> str:
    """A regular expression class of the characters that make ``csv.writer`` (as the export
    uses it) quote a field, as this Python's csv module decides it (3.11 quotes ``\n`` but
    not ``\r``, for one)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    quoted = []
    for code in range(1, 128):
        buf.seek(0)
        buf.truncate()
        writer.writerow(["a" + chr(code) + "b", "c"])
        if buf.getvalue().startswith('"'):
            quoted.append(f"\\x{code:02x}")
    return "[" + "".join(quoted) + "]"


CSV_QUOTED = _csv_quoted()


def export_values(r: asyncpg.Record) -> tuple[Any, ...]:
    """One export row in ``EXPORT_COLUMNS`` order (text or None)."""
    values: tuple[Any, ...] = r[: len(EXPORT_COLUMNS)]
    return values


class ProviderDay(msgspec.Struct, kw_only=True):
    provider: str
    deliveries: int
    received: int
    quarantined: int
    conflicted: int
    paid_notifications: int
    paid_orders: int
    paid_amount: str
    # What the paid orders were expected to bring (registered, else stated: ADR 0016), and
    # how many of them were paid short or over it.
    expected_amount: str
    partially_paid_orders: int
    overpaid_orders: int
    failures: int
    refunds: int
    chargebacks: int
    # Orders whose status-API answers that day were (orders projection, ``order_checks``):
    # missed (a webhook that never came, recovered), unconfirmed (a held notification the
    # provider contradicted, not applied), mismatch (any other disagreement).
    recovered: int = 0
    unconfirmed: int = 0
    mismatched: int = 0


async def summary(conn: Conn, since: datetime, until: datetime) -> list[ProviderDay]:
    """Per provider, deliveries received in [since, until) and the money they moved."""
    counts = await conn.fetch(SQL["summary_counts"], since, until)
    paid = {r["provider"]: r for r in await conn.fetch(SQL["summary_paid"], since, until)}
    days = []
    for c in counts:
        p = paid.get(c["provider"])
        days.append(
            ProviderDay(
                provider=c["provider"],
                deliveries=c["deliveries"],
                received=c["received"],
                quarantined=c["quarantined"],
                conflicted=c["conflicted"],
                paid_notifications=c["paid_notifications"],
                paid_orders=p["paid_orders"] if p else 0,
                paid_amount=plain(p["paid_amount"]) if p else "0",
                expected_amount=plain(p["expected_amount"]) if p else "0",
                partially_paid_orders=p["partially_paid_orders"] if p else 0,
                overpaid_orders=p["overpaid_orders"] if p else 0,
                failures=c["failures"],
                refunds=c["refunds"],
                chargebacks=c["chargebacks"],
            )
        )
    return days


class Effect(msgspec.Struct, kw_only=True):
    """Something an event caused: a token credit, or an outbox message and its outcome."""

    type: str  # token_credit | outbox
    tokens: int | None = None
    package: str | None = None
    message_id: str | None = None
    kind: str | None = None
    target: str | None = None
    state: str | None = None
    attempts: int | None = None
    last_outcome: str | None = None
    last_status: int | None = None


class TimelineEntry(msgspec.Struct, kw_only=True):
    """One event, linked to its raw bytes (``raw``, ``body_sha256``), its interpretation
    (``kind``, ``status``, ``amount``) and its effects (order status, credits, messages)."""

    position: int
    event_id: str
    received_at: str
    category: str
    provider: str | None
    kind: str | None
    order_id: str | None
    customer: str | None
    status: str | None
    amount: str | None
    body_sha256: str | None
    hash: str | None
    raw: str
    order_status_after: str | None = None
    late: bool = False
    # A notification held until the provider's status API confirms it (ADR 0016): it does
    # not change the order by itself (a confirming answer later in the timeline does).
    held: bool = False
    effects: list[Effect] = msgspec.field(default_factory=list)


async def timeline(
    conn: Conn,
    rows: Sequence[asyncpg.Record],
    outbox_key: tuple[str, str],
    credits_schema: str | None,
) -> list[TimelineEntry]:
    """Entries for index ``rows`` (log order) with their effects. ``outbox_key`` names the
    indexed outbox column to match (``order`` or ``customer``) and its value;
    ``credits_schema`` is the live token_balances schema (None: not running here)."""
    effects: dict[uuid.UUID, list[Effect]] = {r["event_id"]: [] for r in rows}
    # Only a paid Mayar delivery can have caused a credit (the token_balances fold skips
    # every other event): look those up, not every entry (an index probe each).
    paying = [
        r["event_id"]
        for r in rows
        if r["category"] == "received"
        and r["provider"] == "mayar"
        and r["kind"] in mayar.PAID_EVENTS
    ]
    if credits_schema is not None and paying:
        # The schema name comes from ledger.readmodels.contract.schema_name (a trusted identifier).
        credits = await conn.fetch(
            f"SELECT event_id, tokens, package FROM {credits_schema}.credits "
            "WHERE event_id = ANY($1::uuid[])",
            paying,
        )
        for c in credits:
            effects[c["event_id"]].append(
                Effect(type="token_credit", tokens=c["tokens"], package=c["package"])
            )
    which, value = outbox_key
    for m in await conn.fetch(SQL[f"outbox_for_{which}"], value):
        if m["source_event_id"] in effects:
            effects[m["source_event_id"]].append(
                Effect(
                    type="outbox",
                    message_id=str(m["id"]),
                    kind=m["kind"],
                    target=m["target"],
                    state=m["state"],
                    attempts=m["attempts"],
                    last_outcome=m["outcome"],
                    last_status=m["status"],
                )
            )
    best: dict[tuple[str | None, str | None], str] = {}
    holds: dict[tuple[str | None, str], bool] = {}  # held() per (provider, status)
    out = []
    for r in rows:
        event_id = r["event_id"]
        eid = str(event_id)
        digest = r["hash"]
        category = r["category"]
        provider = r["provider"]
        status = r["status"]
        order_id = r["order_id"]
        entry = TimelineEntry(
            position=r["position"],
            event_id=eid,
            received_at=r["received_at"].isoformat(),
            category=category,
            provider=provider,
            kind=r["kind"],
            order_id=order_id,
            customer=r["customer"],
            status=status,
            amount=plain_or_none(r["amount"]),
            body_sha256=r["body_sha256"],
            hash=None if digest is None else bytes(digest).hex(),
            raw=f"/v1/events/{eid}/raw",
            effects=effects[event_id],
        )
        folded = category in ("received", "reconciliation")  # as the orders view does
        if category == "received":
            hk = (provider, status or "")
            is_held = holds.get(hk)
            if is_held is None:
                is_held = holds[hk] = held(provider, status or "")
            entry.held = is_held
        if order_id is not None and folded and status in RANK:
            key = (provider, order_id)
            if entry.held:
                entry.order_status_after = best.get(key)
                out.append(entry)
                continue
            before = best.get(key)
            entry.late = before is not None and RANK[status] < RANK[before]
            if before is None or RANK[status] > RANK[before]:
                best[key] = status
            entry.order_status_after = best[key]
        out.append(entry)
    return out


_CHECK_FIELDS = {"missed": "recovered", "unconfirmed": "unconfirmed", "mismatch": "mismatched"}


def with_check_counts(days: list[ProviderDay], counts: Sequence[Any]) -> list[ProviderDay]:
    """``days`` with the orders projection's ``check_counts`` rows (provider, state, orders)
    added; a provider with checks but no delivery that day gets a row of its own."""
    by_provider = {d.provider: d for d in days}
    for r in counts:
        name = _CHECK_FIELDS.get(r["state"])
        if name is None:
            continue
        day = by_provider.get(r["provider"])
        if day is None:
            day = ProviderDay(
                provider=r["provider"],
                deliveries=0,
                received=0,
                quarantined=0,
                conflicted=0,
                paid_notifications=0,
                paid_orders=0,
                paid_amount="0",
                expected_amount="0",
                partially_paid_orders=0,
                overpaid_orders=0,
                failures=0,
                refunds=0,
                chargebacks=0,
            )
            by_provider[r["provider"]] = day
            days.append(day)
        setattr(day, name, getattr(day, name) + int(r["orders"]))
    return days
