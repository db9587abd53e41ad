"""Finance's view of the log: the audit index (queries over it: ``ledger.audit.queries``).

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

``interpret`` is the reference reading of an event; a catch-up reads deliveries by the fast
path of ``ledger.audit.rows`` (the same rows, held to ``interpret`` by tests), COPYs each
page while it is interpreted and reads the next page ahead (``ledger.audit.pages``, ADR 0023).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from base64 import b64decode
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
import msgspec

from ledger.audit.pages import ReadAhead, all_rows, stream_rows, write
from ledger.audit.rows import Row, delivery_row
from ledger.domain.events import (
    CHECKED_TOPIC,
    OPERATOR_ACTION_TOPIC,
    decode_checked,
    decode_operator_action,
)
from ledger.domain.orders import REGISTERED_TOPIC, decode_registered
from ledger.payments.customers import customer_key
from ledger.payments.facts import payment_fact
from ledger.payments.orderstatus import RANK
from ledger.readmodels import poison
from ledger.readmodels.contract import Conn
from ledger.reconcile import answers
from ledger.sql import package_sql
from ledger.store.eventstore import UNAVAILABLE_ERRORS, StoredRecord, StoreUnavailable

SQL = package_sql("audit")
log = logging.getLogger("ledger.audit.index")
INDEX_PAGE = 5_000
_READING_AHEAD: set[int] = set()  # the pools (ids) a catch-up of this process reads ahead on
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
    if rec.topic == CHECKED_TOPIC and (checked := _reconciliation(rec)) is not None:
        return checked
    if rec.topic == REGISTERED_TOPIC and (registered := _registration(rec)) is not None:
        return registered
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


def _reconciliation(rec: StoredRecord) -> IndexRow | None:
    """A provider's status API answered (ADR 0017): category ``reconciliation``, so the
    timelines show the fact came from reconciliation, not from a webhook. ``kind`` is our
    reading (a status, ``unknown_order``, ``unverified``, ``refused``); ``status`` only for
    a verified status (what the orders projection folds)."""
    try:
        st = decode_checked(rec.state)
    except msgspec.DecodeError:
        return None  # indexed like any other event
    applied = st.reading in RANK
    amount: str | None = None
    paid: str | None = None
    if applied:
        with contextlib.suppress(msgspec.DecodeError, ValueError):
            p = answers.payment(st.provider, st.order_id, b64decode(st.body_b64))
            amount, paid = p.amount, p.paid_amount
    return IndexRow(
        position=rec.position,
        event_id=rec.id,
        topic=rec.topic,
        received_at=st.timestamp,
        category="reconciliation",
        provider=st.provider,
        kind=st.reading,
        order_id=st.order_id,
        status=st.reading if applied else None,
        amount=_decimal(amount),
        paid_amount=_decimal(paid),
        body_sha256=st.body_sha256,
    )


def _registration(rec: StoredRecord) -> IndexRow | None:
    """The merchant registered an order (ADR 0016): category ``registration``; ``amount``
    is the expected amount, which the export and the summary prefer to a provider's."""
    try:
        st = decode_registered(rec.state)
    except msgspec.DecodeError:
        return None  # indexed like any other event
    return IndexRow(
        position=rec.position,
        event_id=rec.id,
        topic=rec.topic,
        received_at=st.timestamp,
        category="registration",
        provider=st.provider,
        kind="registered",
        customer=st.customer,
        order_id=st.order_id,
        amount=_decimal(st.amount),
        currency=st.currency,
        actor=st.key_id or None,
    )


def index_row(
    position: int,
    event_id: uuid.UUID,
    version: int,
    topic: str,
    state: bytes,
    chain_hash: bytes | None,
) -> Row:
    """One event's ``audit_index`` row (``rows.COLUMNS`` order): a delivery's by the fast
    path (``rows.delivery_row``), any other event's (or an odd delivery's) by ``interpret``."""
    row = delivery_row(position, event_id, topic, state, chain_hash)
    if row is not None:
        return row
    r = interpret(StoredRecord(position, event_id, version, topic, state))
    return (
        r.position, r.event_id, r.topic, r.received_at, r.category, r.provider, r.kind,
        r.dedup_key, r.customer, r.order_id, r.status, r.amount, r.paid_amount, r.currency,
        r.body_sha256, r.actor, r.target, chain_hash,
    )  # fmt: skip


async def _index(
    conn: Conn, hashes: dict[int, bytes | None], records: Sequence[StoredRecord]
) -> None:
    """Interpret and insert ``records`` (``hashes``: chain hash by position)."""
    rows = [
        index_row(r.position, r.id, r.version, r.topic, r.state, hashes.get(r.position))
        for r in records
    ]
    await write(conn, rows, lambda: rows)


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
    if state is None or state["head"] - state["position"] <= page or id(pool) in _READING_AHEAD:
        return await _catch_up(pool, page, attempts, backoff, None)
    # More than a page behind: a second connection reads ahead. It is taken before any
    # lock and kept to the end, so the lock holder never waits for the pool; one catch-up
    # per pool at a time does so (the others, queued on the tracking lock, hold one
    # connection each, as before).
    _READING_AHEAD.add(id(pool))
    try:
        async with pool.acquire() as reader:
            ahead = ReadAhead(reader, page)
            try:
                return await _catch_up(pool, page, attempts, backoff, ahead)
            finally:
                await ahead.close()
    finally:
        _READING_AHEAD.discard(id(pool))


async def _catch_up(
    pool: asyncpg.Pool, page: int, attempts: int, backoff: float, ahead: ReadAhead | None
) -> int:
    failures = 0
    first_failure: datetime | None = None
    while True:
        try:
            async with pool.acquire() as conn, conn.transaction():
                position: int = await conn.fetchval(SQL["index_lock"])
                rows = None if ahead is None else await ahead.take(position)
                if rows is None:
                    rows = await conn.fetch(SQL["index_source"], position, page)
                if not rows:
                    return position
                last: int = rows[-1][0]
                if ahead is not None and len(rows) == page:
                    ahead.start(last)
                if failures + 1 >= attempts:
                    records = [StoredRecord(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]
                    apply = functools.partial(_index, conn, {r[0]: r[5] for r in rows})
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
                    row = index_row  # looked up once per page (tests replace it)
                    # Closed here even when the COPY stops early (an error of PostgreSQL).
                    async with contextlib.aclosing(stream_rows(rows, row)) as stream:
                        await write(conn, stream, functools.partial(all_rows, rows, row))
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
