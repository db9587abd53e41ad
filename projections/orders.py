"""Order status per provider order: Midtrans ``order_id``, Xendit ``external_id``, partner
``booking_id``.

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
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import msgspec

from ledger.domain.events import RECEIVED_TOPIC
from ledger.payments import orderstatus
from ledger.payments.rules import (
    DeliveryHead,
    columns,
    delivery_head,
    normalize_customer,
    opt_text,
    pg_text,
    table_digest,
)
from ledger.readmodels.contract import Conn
from ledger.sql import load
from ledger.store.eventstore import StoredRecord

SQL = load(Path(__file__).with_suffix(".sql"))
ORDER_PROVIDERS = frozenset({"midtrans", "xendit", "partner"})


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


def _text(value: object) -> str | None:
    return None if value is None else str(value)


# Slim views of the providers' bodies: only what an order needs. The full Structs in
# ``ledger.ingest.providers`` validated every body at ingest; these decode the same bytes faster.
class _Midtrans(msgspec.Struct):
    order_id: str
    gross_amount: str
    transaction_status: str
    fraud_status: str | None = None
    currency: str | None = None
    payment_type: str | None = None
    customer_email: str | None = None


class _Xendit(msgspec.Struct):
    external_id: str
    status: str
    amount: Decimal
    currency: str
    paid_amount: Decimal | None = None
    payment_method: str | None = None
    payment_channel: str | None = None
    payer_email: str | None = None


class _Partner(msgspec.Struct):
    event: str
    booking_id: str
    status: str | None = None
    paid_amount: Decimal | None = None
    payment_method: str | None = None


_MIDTRANS = msgspec.json.Decoder(_Midtrans)
_XENDIT = msgspec.json.Decoder(_Xendit)
_PARTNER = msgspec.json.Decoder(_Partner)


def note(rec: StoredRecord, state: DeliveryHead) -> Note | None:
    """The order notification a delivery carries, or None (not an order provider)."""
    if state.provider not in ORDER_PROVIDERS:
        return None
    body = base64.b64decode(state.body_b64)
    amount: str | None
    currency: str | None
    method: str | None
    customer: str | None
    if state.provider == "midtrans":
        m = _MIDTRANS.decode(body)
        status = orderstatus.midtrans_status(m.transaction_status, m.fraud_status)
        shown = m.transaction_status + (f"/{m.fraud_status}" if m.fraud_status else "")
        order_id, amount, currency = m.order_id, m.gross_amount, m.currency
        method, customer = m.payment_type, m.customer_email
    elif state.provider == "xendit":
        x = _XENDIT.decode(body)
        status = orderstatus.xendit_status(x.status)
        shown, order_id, currency = x.status, x.external_id, x.currency
        amount = str(x.paid_amount if x.paid_amount is not None else x.amount)
        method = x.payment_channel or x.payment_method
        customer = x.payer_email
    else:
        p = _PARTNER.decode(body)
        status = orderstatus.partner_status(p.event, p.status)
        shown = p.event + (f"/{p.status}" if p.status else "")
        order_id, currency = p.booking_id, None
        amount = None if p.paid_amount is None else str(p.paid_amount)
        method, customer = p.payment_method, None
    return Note(
        rec.id,
        state.provider,
        pg_text(order_id),
        rec.position,
        pg_text(shown),
        status,
        opt_text(amount),
        opt_text(currency),
        opt_text(method),
        normalize_customer(customer),
    )


class Orders:
    name = "orders"
    version = 4  # 2: the order is folded when read; 3: one index (the key); 4: customers (0009)
    topics: tuple[str, ...] = (RECEIVED_TOPIC,)
    schema_sql = SQL["schema"]

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        notes = [n for rec in records if (n := note(rec, delivery_head(rec.state)))]
        if notes:
            await conn.execute(SQL["insert_history"], *columns(notes))

    async def digest(self, conn: Conn) -> str:
        return await table_digest(conn, [SQL["digest"]])


PROJECTION = Orders()
