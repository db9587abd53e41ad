"""Order status per provider order: Midtrans ``order_id``, Xendit ``external_id``, partner
``booking_id``. A Xendit order is also found by Xendit's own invoice ``id`` (``provider_ref``).

Each notification becomes a history row with its provider status and the order status it
maps to (``ledger.payments.orderstatus``). The order is folded from its rows when read
(``ledger.payments.orderstatus.decide``: precedence, ties broken by event id), so any arrival order
gives the same answer, and a batch is one insert (rebuilds stay fast). A ``pending`` or
``expire`` that arrives after ``paid`` is kept in the history and reads as late (computed from
positions); it never downgrades the order.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ledger.database import Conn
from ledger.domain.events import CHECKED_TOPIC, RECEIVED_TOPIC, decode_checked
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


def note(rec: StoredRecord, state: DeliveryHead) -> Note | None:
    """The order notification a delivery carries, or None (not an order provider).

    The body is read by ``ledger.payments.facts`` like everywhere else; what cannot be read
    (or has no order status) raises, and the runner sets the event aside as poison."""
    if state.provider not in ORDER_PROVIDERS:
        return None
    p = read_payment(state.provider, base64.b64decode(state.body_b64))
    if p is None or p.order_id is None or p.status is None:
        raise orderstatus.UnknownStatus(f"{state.provider} status {p and p.provider_status!r}")
    return Note(
        rec.id,
        state.provider,
        pg_text(p.order_id),
        rec.position,
        pg_text(p.provider_status),
        p.status,
        opt_text(p.noted_amount),
        opt_text(p.currency),
        opt_text(p.payment_method),
        p.customer,
        opt_text(p.invoice_id),
    )


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
    )


def order_note(rec: StoredRecord) -> Note | None:
    if rec.topic == CHECKED_TOPIC:
        return reconciled(rec)
    return note(rec, delivery_head(rec.state))


class Orders:
    name = "orders"
    # 2: the order is folded when read; 3: one index (the key); 4: customers (0009);
    # 5: Xendit's invoice id (provider_ref), so an order is found by either id;
    # 6: answers of the providers' status APIs (source 'reconciliation', ADR 0017)
    version = 6
    topics: tuple[str, ...] = (RECEIVED_TOPIC, CHECKED_TOPIC)
    schema_sql = SQL["schema"]
    queries = SQL

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        notes = [n for rec in records if (n := order_note(rec))]
        if notes:
            await conn.execute(SQL["insert_history"], *columns(notes))

    async def digest(self, conn: Conn) -> str:
        return await table_digest(conn, [SQL["digest"]])


PROJECTION = Orders()
