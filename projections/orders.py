"""Order status per provider order: Midtrans ``order_id``, Xendit ``external_id``, partner
``booking_id``. A Xendit order is also found by Xendit's own invoice ``id`` (``provider_ref``).

Each notification becomes a history row with its provider status and the order status it
maps to (``ledger.payments.orderstatus``). The order is folded from its rows when read
(``ledger.payments.orderstatus.decide``: precedence, ties broken by event id), so any arrival order
gives the same answer, and a batch is one insert (rebuilds stay fast). A ``pending`` or
``expire`` that arrives after ``paid`` is kept in the history and reads as late (computed from
positions); it never downgrades the order.

Registered orders (ADR 0016) are kept beside the history (``order_registrations``): the
customer and the expected amount the merchant's app declared. A notification that lowers
what the merchant keeps, from a provider whose signature does not cover its status
(Midtrans), is stored ``held``: it does not count until the provider's status API confirms
it. Each answer of a status API (ADR 0017) is also judged against what the ledger knew
before it (``order_checks``: missed, unconfirmed, mismatch or ok), in log order, so a
rebuild judges the same way.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import msgspec

from ledger.database import Conn
from ledger.domain.events import CHECKED_TOPIC, RECEIVED_TOPIC, decode_checked
from ledger.domain.orders import REGISTERED_TOPIC, decode_registered
from ledger.payments import orderstatus
from ledger.payments.facts import ORDER_PROVIDERS, read_payment
from ledger.payments.rules import (
    DeliveryHead,
    columns,
    delivery_head,
    opt_text,
    pg_text,
    table_digest,
)
from ledger.reconcile import answers
from ledger.sql import load
from ledger.store.eventstore import StoredRecord

SQL = load(Path(__file__).with_suffix(".sql"))
# ``order_history``'s columns in ``Note``'s order: a batch's notes are COPYed as they are.
HISTORY_COLUMNS = (
    "event_id",
    "provider",
    "order_id",
    "position",
    "provider_status",
    "status",
    "amount",
    "currency",
    "payment_method",
    "customer",
    "provider_ref",
    "source",
    "total_amount",
    "paid_amount",
    "held",
)


class Note(NamedTuple):
    """One notification about an order, in the columns of ``order_history``."""

    event_id: uuid.UUID
    provider: str
    order_id: str
    position: int
    provider_status: str
    status: str
    amount: str | None
    currency: str | None
    payment_method: str | None
    customer: str | None
    provider_ref: str | None  # the provider's own id for the order (Xendit's invoice id)
    source: str = "notification"  # or "reconciliation": a provider's status API answered
    total_amount: str | None = None  # the order's total, as the provider states it
    paid_amount: str | None = None  # what the provider says was paid
    held: bool = False  # awaiting the provider's confirmation (ADR 0016)


def note(rec: StoredRecord, state: DeliveryHead) -> Note | None:
    """The order notification a delivery carries, or None (not an order provider).

    The body is read by ``ledger.payments.facts`` like everywhere else; what cannot be read
    (or has no order status) raises, and the runner sets the event aside as poison."""
    if state.provider not in ORDER_PROVIDERS:
        return None
    # binascii directly: what ``base64.b64decode`` does for a str, without its checks.
    return _note(rec, state.provider, binascii.a2b_base64(state.body_b64))


class _BodyHead(msgspec.Struct, frozen=True):
    """``DeliveryHead`` with the body's base64 decoded by msgspec while it parses the state
    (one pass, no intermediate str). A state it refuses goes the reference way (``note``
    of ``delivery_head``), which gives the same note or raises the same error as before."""

    provider: str
    kind: str
    dedup_key: str
    body: bytes = msgspec.field(name="body_b64")
    fault: str | None = None
    original_event_id: str | None = None


_body_head = msgspec.json.Decoder(_BodyHead)


def _note(rec: StoredRecord, provider: str, body: bytes) -> Note:
    p = read_payment(provider, body)
    if p is None or p.order_id is None or p.status is None:
        raise orderstatus.UnknownStatus(f"{provider} status {p and p.provider_status!r}")
    # ``_text`` is ``opt_text`` for the ``str | None`` a ``Payment`` holds (``str()`` of a str
    # is itself), inlined: a rebuild makes millions of these.
    return Note(
        rec.id,
        provider,
        pg_text(p.order_id),
        rec.position,
        pg_text(p.provider_status),
        p.status,
        _text(p.noted_amount),
        _text(p.currency),
        _text(p.payment_method),
        p.customer,
        _text(p.invoice_id),
        "notification",
        _text(p.amount),
        _text(p.paid_amount),
        p.status in _HELD.get(provider, _NONE),
    )


_HELD = orderstatus.CONFIRMED_BY_API  # orderstatus.held of a notification
_NONE: frozenset[str] = frozenset()


def _text(value: str | None) -> str | None:
    return value if value is None or "\x00" not in value else pg_text(value)


def reconciled(rec: StoredRecord) -> Note | None:
    """The order status a provider's status API gave (ADR 0017), or None: only a verified
    status is folded; unknown orders, refusals and unverified answers stay in the log."""
    st = decode_checked(rec.state)
    if st.reading not in orderstatus.RANK or st.provider not in ORDER_PROVIDERS:
        return None
    p = answers.payment(st.provider, st.order_id, base64.b64decode(st.body_b64))
    return Note(
        rec.id,
        st.provider,
        pg_text(st.order_id),
        rec.position,
        pg_text(p.provider_status),
        st.reading,
        opt_text(p.noted_amount),
        opt_text(p.currency),
        opt_text(p.payment_method),
        p.customer,
        opt_text(p.invoice_id),
        "reconciliation",
        opt_text(p.amount),
        opt_text(p.paid_amount),
    )


def order_note(rec: StoredRecord) -> Note | None:
    if rec.topic == CHECKED_TOPIC:
        return reconciled(rec)
    try:
        head = _body_head.decode(rec.state)
    except msgspec.DecodeError:  # (ValidationError too) the reference path decides
        return note(rec, delivery_head(rec.state))
    if head.provider not in ORDER_PROVIDERS:
        return None
    return _note(rec, head.provider, head.body)


def registration_row(rec: StoredRecord) -> tuple[Any, ...]:
    st = decode_registered(rec.state)
    expires = None if st.expires_at is None else datetime.fromisoformat(st.expires_at)
    return (
        st.provider,
        st.order_id,
        rec.id,
        rec.position,
        st.timestamp,
        st.customer,
        st.amount,
        st.currency,
        st.package,
        st.booking_id,
        expires,
        msgspec.json.encode(st.metadata).decode(),
    )


def judge(reading: str, before: Sequence[Any]) -> tuple[str | None, str, str]:
    """What an answer of a status API meant, given the order's rows before it:
    (the ledger's status then, state, resolution). ``before`` rows are ``history_before``."""
    counted = [r for r in before if not r["held"]]
    ledger = orderstatus.fold(r["status"] for r in counted) if counted else None
    waiting = orderstatus.awaiting(before)
    if reading == "unverified":
        return ledger, "mismatch", "the answer's signature does not verify; nothing applied"
    if reading == "unknown_order":
        if ledger is None:
            return ledger, "ok", "neither the ledger nor the provider knows a payment"
        return ledger, "mismatch", f"the provider knows no such order; the ledger's {ledger} stands"
    if waiting:
        if reading in waiting:
            return (
                ledger,
                "ok",
                f"confirmed the held {reading} notification; the order is {reading}",
            )
        held_ = ", ".join(sorted(set(waiting)))
        return (
            ledger,
            "unconfirmed",
            f"the provider says {reading}: the held {held_} notification is not applied",
        )
    if ledger is None or orderstatus.rank(reading) > orderstatus.rank(ledger):
        return ledger, "missed", f"recovered: the order becomes {reading}"
    if reading == ledger:
        return ledger, "ok", "the ledger agrees"
    return ledger, "mismatch", f"the provider says {reading}; the ledger's {ledger} ranks above it"


async def _insert_history(conn: Conn, notes: list[Note]) -> None:
    """The batch's notes, by binary COPY (a rebuild writes millions; ``unnest`` of 15
    arrays cost asyncpg a type check per value). A replayed note (its key already there)
    makes the COPY fail as a whole: that batch is written again with the ``ON CONFLICT DO
    NOTHING`` insert, under the savepoint the COPY was tried in."""
    try:
        async with conn.transaction():  # a savepoint
            await conn.copy_records_to_table(
                "order_history", records=notes, columns=HISTORY_COLUMNS
            )
    except asyncpg.UniqueViolationError:
        await conn.execute(SQL["insert_history"], *columns(notes))


class Orders:
    name = "orders"
    # 2: the order is folded when read; 3: one index (the key); 4: customers (0009);
    # 5: Xendit's invoice id (provider_ref), so an order is found by either id;
    # 6: answers of the providers' status APIs (source 'reconciliation', ADR 0017);
    # 7: registered orders, total and paid amounts, held notifications, judged answers
    version = 7
    topics: tuple[str, ...] = (RECEIVED_TOPIC, CHECKED_TOPIC, REGISTERED_TOPIC)
    schema_sql = SQL["schema"]
    queries = SQL

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        notes: list[Note] = []
        registrations: list[tuple[Any, ...]] = []
        checks: list[StoredRecord] = []
        for rec in records:
            if rec.topic == REGISTERED_TOPIC:
                registrations.append(registration_row(rec))
                continue
            n = order_note(rec)
            if n:
                notes.append(n)
            if rec.topic == CHECKED_TOPIC:
                checks.append(rec)
        if registrations:
            await conn.execute(SQL["insert_registration"], *columns(registrations))
        if notes:
            await _insert_history(conn, notes)
        for rec in checks:  # rare: each judged against the rows before it, in log order
            await self._judge(conn, rec)

    async def _judge(self, conn: Conn, rec: StoredRecord) -> None:
        st = decode_checked(rec.state)
        if st.reading == "refused" or st.provider not in ORDER_PROVIDERS:
            return  # no answer about the order (401, 403, ...): nothing to judge
        order_id = pg_text(st.order_id)
        before = await conn.fetch(SQL["history_before"], st.provider, order_id, rec.position)
        ledger, state, resolution = judge(st.reading, before)
        await conn.execute(
            SQL["insert_check"],
            rec.id,
            st.provider,
            order_id,
            rec.position,
            st.timestamp,
            st.reading,
            opt_text(st.provider_status),
            ledger,
            state,
            resolution,
        )

    async def digest(self, conn: Conn) -> str:
        return await table_digest(
            conn, [SQL["digest"], SQL["digest_registrations"], SQL["digest_checks"]]
        )


PROJECTION = Orders()
