"""Finance's view of the log: the audit index, search, streaming export, daily summary.

The index (``audit_index``, migration 0008) holds one row per event with the interpreted
fields finance filters by. Deliveries are interpreted with ``ledger.payments.facts.payment_fact``
(the providers' own decoders and the status mapping of providers.md); operator actions
carry their actor, action and target; other events keep their ``customer`` when they have
one. ``catch_up`` folds new log events into it page by page, each page and the tracking
position in one transaction, under a row lock, so any number of processes may call it and
none double-counts. Every audit query calls it first: answers include everything committed
before the request. An event the index cannot hold (e.g. a value PostgreSQL ``text``
rejects) is retried a few times, then set aside as poisoned (``ledger.readmodels.poison``, consumer
``audit_index``) in the transaction that moves the position past it; ``retry_poisoned``
indexes it after a fix (ADR 0010).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
import msgspec

from ledger.audit.trail import decode_operator_action
from ledger.domain.events import OPERATOR_ACTION_TOPIC
from ledger.payments.amounts import plain, plain_or_none
from ledger.payments.customers import customer_key
from ledger.payments.facts import payment_fact
from ledger.payments.orderstatus import RANK
from ledger.readmodels import poison
from ledger.readmodels.contract import Conn
from ledger.sql import package_sql
from ledger.store.eventstore import UNAVAILABLE_ERRORS, StoredRecord, StoreUnavailable

SQL = package_sql("audit")
log = logging.getLogger("ledger.audit.index")
INDEX_PAGE = 5_000
EXPORT_PAGE = 2_000

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
    "amount",
    "currency",
    "body_sha256",
    "hash",
)

_generic = msgspec.json.Decoder()


@dataclass(slots=True)
class IndexRow:
    """One ``audit_index`` row (column order of ``index_insert``)."""

    position: int
    event_id: uuid.UUID
    topic: str
    received_at: datetime
    category: str
    provider: str | None = None
    kind: str | None = None
    dedup_key: str | None = None
    customer: str | None = None
    order_id: str | None = None
    status: str | None = None
    amount: Decimal | None = None
    paid_amount: Decimal | None = None
    currency: str | None = None
    body_sha256: str | None = None
    actor: str | None = None
    target: str | None = None
    hash: bytes | None = None


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _timestamp(raw: Any) -> datetime | None:
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            return None
    return None


def interpret(rec: StoredRecord) -> IndexRow:
    """The index row for one stored event. Never raises on odd data: an event whose state
    cannot be read is still indexed by position, id and topic."""
    fact = payment_fact(rec)
    if fact is not None:
        state = msgspec.json.decode(rec.state)
        return IndexRow(
            position=rec.position,
            event_id=rec.id,
            topic=rec.topic,
            received_at=datetime.fromisoformat(fact.recorded_at),
            category=fact.state,
            provider=fact.provider,
            kind=fact.kind,
            dedup_key=state.get("dedup_key"),
            customer=fact.customer,
            order_id=fact.order_id,
            status=fact.status,
            amount=_decimal(fact.amount),
            paid_amount=_decimal(fact.paid_amount),
            currency=fact.currency,
            body_sha256=state.get("body_sha256"),
        )
    if rec.topic == OPERATOR_ACTION_TOPIC:
        op = decode_operator_action(rec.state)
        return IndexRow(
            position=rec.position,
            event_id=rec.id,
            topic=rec.topic,
            received_at=op.timestamp,
            category="operator",
            kind=op.action,
            actor=op.key_id,
            target=op.target,
        )
    try:
        data = _generic.decode(rec.state)
    except msgspec.DecodeError:
        data = None
    data = data if isinstance(data, dict) else {}
    customer = data.get("customer")
    return IndexRow(
        position=rec.position,
        event_id=rec.id,
        topic=rec.topic,
        received_at=_timestamp(data.get("timestamp")) or datetime.fromtimestamp(0, UTC),
        category="other",
        kind=rec.topic.rpartition(":")[2] or None,
        customer=customer_key(customer) if isinstance(customer, str) else None,
    )


def _columns(rows: Sequence[IndexRow]) -> list[list[Any]]:
    fields = IndexRow.__slots__
    return [[getattr(r, f) for r in rows] for f in fields]


async def _index(
    conn: Conn, hashes: dict[int, bytes | None], records: Sequence[StoredRecord]
) -> None:
    """Interpret and insert ``records`` (``hashes``: chain hash by position)."""
    indexed = []
    for rec in records:
        row = interpret(rec)
        row.hash = hashes.get(rec.position)
        indexed.append(row)
    await conn.execute(SQL["index_insert"], *_columns(indexed))


async def catch_up(
    pool: asyncpg.Pool,
    *,
    page: int = INDEX_PAGE,
    attempts: int = poison.ATTEMPTS,
    backoff: float = 0.05,
) -> int:
    """Index every committed event not indexed yet; return the index position.

    A page that fails for a reason other than database trouble is tried ``attempts``
    times (``backoff`` seconds, doubling, between tries, outside any transaction); the last
    try sets aside the events that fail on their own and indexes the rest."""
    async with pool.acquire() as conn:
        state = await conn.fetchrow(SQL["index_behind"])
    if state is not None and state["position"] >= state["head"]:
        return int(state["position"])
    failures = 0
    first_failure: datetime | None = None
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                position: int = await conn.fetchval(SQL["index_lock"])
                rows = await conn.fetch(SQL["index_source"], position, page)
                if not rows:
                    return position
                records = [StoredRecord(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]
                apply = functools.partial(_index, conn, {r[0]: r[5] for r in rows})
                if failures + 1 >= attempts:
                    bad = await poison.isolate(conn, records, apply)
                    for rec, exc in bad:
                        await poison.record(
                            conn, poison.AUDIT_INDEX, 0, rec, exc, failures + 1, first_failure
                        )
                        log.warning(
                            "audit index: set aside the event at position %d: %s",
                            rec.position,
                            poison.error_text(exc),
                        )
                else:
                    await apply(records)
                last: int = rows[-1][0]
                await conn.execute(SQL["index_advance"], last)
        except Exception as exc:
            # Database trouble, a fault of the code, a page where every event failed, or
            # the isolating try failing: not for this loop (the indexer retries later).
            if (
                not poison.may_poison(exc)
                or isinstance(exc, poison.NotTheEvents)
                or failures + 1 >= attempts
            ):
                raise
            failures += 1
            first_failure = first_failure or datetime.now(UTC)
            log.warning(
                "audit index: a page failed (attempt %d of %d): %s",
                failures,
                attempts,
                poison.error_text(exc),
            )
            await asyncio.sleep(backoff * 2 ** (failures - 1))
            continue
        failures, first_failure = 0, None
        if len(rows) < page:
            return last


async def retry_poisoned(conn: Conn) -> poison.RetryOutcome:
    """Index the audit index's poisoned events after a fix (call in a transaction; an
    operator action). The tracking row is locked as a catch-up does; the index is keyed
    by position, so indexing an old event late is exactly what an in-order pass writes."""
    await conn.fetchval(SQL["index_lock"])

    async def apply(records: Sequence[StoredRecord]) -> None:
        hashes = {
            r["notification_id"]: r["hash"]
            for r in await conn.fetch(SQL["index_hashes"], [rec.position for rec in records])
        }
        await _index(conn, hashes, records)

    return await poison.retry(conn, poison.AUDIT_INDEX, 0, apply)


# The index is derived data: any database trouble (and a fault that is not an event's) is
# retried on the next tick.
RETRYABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    StoreUnavailable,
    poison.NotTheEvents,
    *UNAVAILABLE_ERRORS,
)


class AuditIndexer:
    """Background component: keeps the index near the head (every ``interval`` seconds), so
    a query rarely has more than a few events to fold first. Errors are logged and retried:
    the index is derived data and every query catches up by itself anyway."""

    def __init__(self, pool: asyncpg.Pool, *, interval: float = 1.0) -> None:
        self.pool = pool
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-indexer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await catch_up(self.pool)
            except RETRYABLE as exc:
                log.warning("audit index catch-up failed (will retry): %s", type(exc).__name__)
            except Exception:  # a bug must not end the indexer: report it, retry next tick
                log.exception("audit index catch-up failed (will retry)")
            await asyncio.sleep(self.interval)


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
    failures: int
    refunds: int
    chargebacks: int


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
    ids = [r["event_id"] for r in rows]
    effects: dict[uuid.UUID, list[Effect]] = {i: [] for i in ids}
    if credits_schema is not None and ids:
        # The schema name comes from ledger.readmodels.contract.schema_name (a trusted identifier).
        credits = await conn.fetch(
            f"SELECT event_id, tokens, package FROM {credits_schema}.credits "
            "WHERE event_id = ANY($1::uuid[])",
            ids,
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
    out = []
    for r in rows:
        entry = TimelineEntry(
            position=r["position"],
            event_id=str(r["event_id"]),
            received_at=r["received_at"].isoformat(),
            category=r["category"],
            provider=r["provider"],
            kind=r["kind"],
            order_id=r["order_id"],
            customer=r["customer"],
            status=r["status"],
            amount=plain_or_none(r["amount"]),
            body_sha256=r["body_sha256"],
            hash=None if r["hash"] is None else bytes(r["hash"]).hex(),
            raw=f"/v1/events/{r['event_id']}/raw",
            effects=effects[r["event_id"]],
        )
        status = r["status"]
        if r["order_id"] is not None and r["category"] == "received" and status in RANK:
            key = (r["provider"], r["order_id"])
            before = best.get(key)
            entry.late = before is not None and RANK[status] < RANK[before]
            if before is None or RANK[status] > RANK[before]:
                best[key] = status
            entry.order_status_after = best[key]
        out.append(entry)
    return out
