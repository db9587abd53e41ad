"""Order status per provider order: Midtrans ``order_id``, Xendit ``external_id``, partner
``booking_id``.

Each notification becomes a history row with its provider status and the order status it
maps to (``ledger.orderstatus``). The order is folded from its rows when read
(``ledger.orderstatus.decide``: precedence, ties broken by event id), so any arrival order
gives the same answer, and a batch is one insert (rebuilds stay fast). A ``pending`` or
``expire`` that arrives after ``paid`` is kept in the history and reads as late (computed from
positions); it never downgrades the order.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ledger import orderstatus
from ledger.domain import RECEIVED_TOPIC, DeliveryState, decode_delivery
from ledger.folding import columns, normalize_customer, opt_text, pg_text, raw_body, table_digest
from ledger.projection import Conn
from ledger.providers import midtrans, partner, xendit
from ledger.queries import load
from ledger.store import StoredRecord

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


def note(rec: StoredRecord, state: DeliveryState) -> Note | None:
    """The order notification a delivery carries, or None (not an order provider)."""
    if state.provider not in ORDER_PROVIDERS:
        return None
    body = raw_body(state)
    amount: str | None
    currency: str | None
    method: str | None
    customer: str | None
    if state.provider == "midtrans":
        m = midtrans.DECODER.decode(body)
        status = orderstatus.midtrans_status(m.transaction_status, m.fraud_status)
        shown = m.transaction_status + (f"/{m.fraud_status}" if m.fraud_status else "")
        order_id, amount, currency = m.order_id, m.gross_amount, m.currency
        method, customer = m.payment_type, m.customer_email
    elif state.provider == "xendit":
        x = xendit.DECODER.decode(body)
        status = orderstatus.xendit_status(x.status)
        shown, order_id, currency = x.status, x.external_id, x.currency
        amount = _text(x.paid_amount if x.paid_amount is not None else x.amount)
        method = x.payment_channel or x.payment_method
        customer = x.payer_email
    elif state.provider == "partner":
        p = partner.DECODER.decode(body)
        status = orderstatus.partner_status(p.event, p.status)
        shown = p.event + (f"/{p.status}" if p.status else "")
        order_id, amount, currency = p.booking_id, _text(p.paid_amount), None
        method, customer = p.payment_method, None
    else:
        return None
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
    version = 2  # 2: the order row is folded when read, not stored
    topics: tuple[str, ...] = (RECEIVED_TOPIC,)
    schema_sql = SQL["schema"]

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        notes = [n for rec in records if (n := note(rec, decode_delivery(rec.state)))]
        if notes:
            await conn.execute(SQL["insert_history"], *columns(notes))

    async def digest(self, conn: Conn) -> str:
        return await table_digest(conn, [SQL["digest"]])


PROJECTION = Orders()
