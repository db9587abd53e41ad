"""One meaning of a payment: what a provider's body says, read once, here.

``read_payment(provider, body)`` decodes a body with its provider's own log decoder
(``ledger.ingest.providers.*.DECODER``) and maps it to a ``Payment``: order, status (through
``ledger.payments.orderstatus``), amounts, currency, customer (``ledger.payments.customers``),
method and the provider's references. ``payment_fact(record)`` wraps that for one stored
delivery (position, event id, time, state) as ``PaymentFact``, the shape the live stream
sends. Every reader of payments uses these two: the live hub (``/v1/stream``), the orders
and outbox projections and the audit index, so they cannot disagree about a body.

Amounts are decimal strings exactly as before this module existed (``str`` of the decoded
value, Midtrans' ``gross_amount`` as sent): the read models' rows and digests depend on them.
Values are not made storable here (NUL is kept): each reader decides, as it always did.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, ParamSpec

import msgspec

from ledger.domain.events import (
    CONFLICTED_TOPIC,
    DELIVERY_TOPICS,
    QUARANTINED_TOPIC,
    decode_delivery,
)
from ledger.ingest.providers import mayar, midtrans, partner, xendit
from ledger.payments import orderstatus
from ledger.payments.customers import customer_key

if TYPE_CHECKING:
    from ledger.store.eventstore import StoredRecord

P = ParamSpec("P")

# Providers whose notifications are about an order (Mayar's are about tokens and plans).
ORDER_PROVIDERS = frozenset({"midtrans", "xendit", "partner"})


class Payment(msgspec.Struct, frozen=True, kw_only=True):
    """What one provider body says about a payment.

    ``amount`` is the order's total (none for the partner); ``paid_amount`` what this
    notification says was paid (Midtrans, Xendit, Mayar: only when it reads paid; the
    partner: its ``paid_amount``, a down payment included); ``noted_amount`` what an
    order's history shows: the amount paid when the body states one, else the total.
    ``status`` is None when the provider's status maps to no order status.
    """

    provider: str
    provider_status: str  # as sent: "capture/challenge", "PAID", "booking.paid/LUNAS", ...
    status: orderstatus.OrderStatus | None = None
    order_id: str | None = None
    amount: str | None = None
    paid_amount: str | None = None
    noted_amount: str | None = None
    currency: str | None = None
    customer: str | None = None
    payment_method: str | None = None
    invoice_id: str | None = None
    payment_id: str | None = None


class PaymentFact(msgspec.Struct, kw_only=True):
    """One delivery as the feed and the outbox see it. Amounts are decimal strings.

    The live stream sends it as is: its fields and their order are a contract."""

    position: int
    event_id: str
    recorded_at: str
    provider: str
    kind: str
    state: str  # received | quarantined | conflicted
    order_id: str | None = None
    status: str | None = None  # paid, pending, failed, refunded, ... (None: not a payment)
    amount: str | None = None
    paid_amount: str | None = None
    currency: str | None = None
    customer: str | None = None
    payment_method: str | None = None
    invoice_id: str | None = None
    payment_id: str | None = None


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _with_detail(head: str, detail: str | None) -> str:
    return head + (f"/{detail}" if detail else "")


def _known(
    decide: Callable[P, orderstatus.OrderStatus], *args: P.args, **kwargs: P.kwargs
) -> orderstatus.OrderStatus | None:
    """The order status a provider status means; None for one we do not know."""
    try:
        return decide(*args, **kwargs)
    except orderstatus.UnknownStatus:
        return None


def _midtrans(body: bytes) -> Payment:
    n = midtrans.DECODER.decode(body)
    status = _known(orderstatus.midtrans_status, n.transaction_status, n.fraud_status)
    return Payment(
        provider="midtrans",
        provider_status=_with_detail(n.transaction_status, n.fraud_status),
        status=status,
        order_id=n.order_id,
        amount=n.gross_amount,
        paid_amount=n.gross_amount if status == "paid" else None,
        noted_amount=n.gross_amount,
        currency=n.currency,
        customer=customer_key(n.customer_email),
        payment_method=n.payment_type,
        payment_id=n.transaction_id,
    )


def _xendit(body: bytes) -> Payment:
    inv = xendit.DECODER.decode(body)
    status = _known(orderstatus.xendit_status, inv.status)
    noted = str(inv.paid_amount if inv.paid_amount is not None else inv.amount)
    return Payment(
        provider="xendit",
        provider_status=inv.status,
        status=status,
        order_id=inv.external_id,
        amount=str(inv.amount),
        paid_amount=noted if status == "paid" else None,
        noted_amount=noted,
        currency=inv.currency,
        customer=customer_key(inv.payer_email),
        payment_method=inv.payment_channel or inv.payment_method,
        invoice_id=inv.id,
        payment_id=inv.payment_id,
    )


def _partner(body: bytes) -> Payment:
    upd = partner.DECODER.decode(body)
    status = _known(orderstatus.partner_status, upd.event, upd.status)
    return Payment(
        provider="partner",
        provider_status=_with_detail(upd.event, upd.status),
        status=status,
        order_id=upd.booking_id,
        paid_amount=_text(upd.paid_amount),
        noted_amount=_text(upd.paid_amount),
        payment_method=upd.payment_method,
    )


def _mayar(body: bytes) -> Payment:
    hook = mayar.DECODER.decode(body)
    status = orderstatus.mayar_status(hook.event)
    amount = _text(hook.data.amount)
    return Payment(
        provider="mayar",
        provider_status=hook.event,
        status=status,
        order_id=None if hook.data.id is None else str(hook.data.id),
        amount=amount,
        paid_amount=amount if status == "paid" else None,
        noted_amount=amount,
        customer=hook.data.email,  # customerEmail, else customer.email (customer_key)
    )


_READERS = {"midtrans": _midtrans, "xendit": _xendit, "partner": _partner, "mayar": _mayar}


def read_payment(provider: str, body: bytes) -> Payment | None:
    """The payment ``body`` describes; None for a provider that sends none.

    Raises ``msgspec.DecodeError`` (or ``ValueError``) when the body does not decode with
    its provider's decoder: a caller that must not stop (the feed) suppresses it, one that
    must account for every event (a projection) lets it become poison."""
    reader = _READERS.get(provider)
    return None if reader is None else reader(body)


def _state(topic: str) -> str:
    if topic == QUARANTINED_TOPIC:
        return "quarantined"
    if topic == CONFLICTED_TOPIC:
        return "conflicted"
    return "received"


def payment_fact(rec: StoredRecord) -> PaymentFact | None:
    """The fact for a delivery event; None for other topics. Never raises on odd bodies:
    a body its provider cannot decode (quarantined) yields a fact with no order. A state
    or body that is not what the log writes (not base64, not a delivery) does raise."""
    if rec.topic not in DELIVERY_TOPICS:
        return None
    st = decode_delivery(rec.state)
    fact = PaymentFact(
        position=rec.position,
        event_id=str(rec.id),
        recorded_at=st.timestamp.isoformat(),
        provider=st.provider,
        kind=st.kind,
        state=_state(rec.topic),
    )
    body = base64.b64decode(st.body_b64)
    # Quarantined bodies may not decode: the fact still says who sent what, and when.
    payment: Payment | None = None
    with contextlib.suppress(msgspec.DecodeError, ValueError):
        payment = read_payment(st.provider, body)
    if payment is not None:
        fact.order_id = payment.order_id
        fact.status = payment.status
        fact.amount = payment.amount
        fact.paid_amount = payment.paid_amount
        fact.currency = payment.currency
        fact.customer = payment.customer
        fact.payment_method = payment.payment_method
        fact.invoice_id = payment.invoice_id
        fact.payment_id = payment.payment_id
    return fact
