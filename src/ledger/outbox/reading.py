"""What the outbox projection reads in each event, decoded once (ADR 0022).

``read(records, catalogue)`` turns a batch into the items the fold needs, in log order:
``(record, order ref, what, time)``, where ``what`` is an order's ``Registration`` or a
``PaymentFact`` that means something (paid, with an order; a Mayar payment only when the
token rules credit it). Every other event is dropped here.

It says what ``ledger.payments.facts.payment_fact`` and ``ledger.outbox.effects`` would say
(``tests/integration/test_outbox_batch.py`` compares it with the code it replaced), at a
fraction of the cost, because a rebuild reads every delivery of the log:

- a delivery's state is decoded without its headers (kept as raw JSON, never built; every
  other field is still required and typed, as ``decode_delivery`` requires them), and its
  body once, with its provider's own decoder (``ledger.payments.facts.read_payment``);
- the ``PaymentFact`` (and its ISO time) is built only for a paid delivery;
- a credited Mayar payment's body is decoded a second time only for the token rules, not
  its whole state again.

Values PostgreSQL would refuse are refused here (``Unstorable``), so that the same events
are set aside as poisoned as when each event's text went to the database (ADR 0010).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from datetime import datetime

import msgspec

from ledger.domain.events import (
    CHECKED_TOPIC,
    RECEIVED_TOPIC,
    DeliveryFields,
    decode_checked,
)
from ledger.domain.orders import REGISTERED_TOPIC, decode_registered
from ledger.errors import LedgerError
from ledger.ingest.providers import mayar
from ledger.outbox.effects import Registration
from ledger.payments.facts import Payment, PaymentFact, read_payment
from ledger.payments.rules import Catalogue, classify_payment
from ledger.reconcile import answers
from ledger.store.eventstore import StoredRecord

Item = tuple[StoredRecord, str, Registration | PaymentFact, datetime]


class Unstorable(LedgerError, ValueError):
    """A value of an event PostgreSQL would refuse (the event is poisoned, ADR 0010)."""


def storable(*values: str | None) -> None:
    """Refuse the text PostgreSQL (or its driver) would refuse, as the statements that once
    carried each event's text did, so that the same events are poisoned (ADR 0010)."""
    for v in values:
        if v is None:
            continue
        if "\x00" in v:
            raise Unstorable("text with a NUL character cannot be stored")
        if not v.isascii():
            v.encode()  # UnicodeEncodeError on a lone surrogate, as the driver raises


class _Delivery(DeliveryFields[msgspec.Raw, str], frozen=True):
    """``ledger.domain.events.DeliveryState`` as the outbox reads it: the same fields
    (``DeliveryFields``), required and typed alike, except the headers, which it never
    reads (raw JSON)."""


_decode_delivery = msgspec.json.Decoder(_Delivery).decode
_decode_mayar = mayar.DECODER.decode


def paid_delivery(rec: StoredRecord, catalogue: Catalogue) -> tuple[PaymentFact, datetime] | None:
    """The fact of a received delivery that is a payment meaning something, and its time;
    else None."""
    st = _decode_delivery(rec.state)
    body = binascii.a2b_base64(st.body_b64)  # what base64.b64decode does with a str
    try:
        p = read_payment(st.provider, body)
    except (msgspec.DecodeError, ValueError):
        return None  # an odd body says nothing about an order (``payment_fact``)
    if p is None or p.status != "paid" or not p.order_id:
        return None
    if st.provider == "mayar" and (
        st.kind not in mayar.PAID_EVENTS
        or classify_payment(_decode_mayar(body).data, catalogue, str(rec.id)).tokens <= 0
    ):
        return None
    return _paid(rec, st.timestamp, st.provider, st.kind, p.order_id, p)


def checked_fact(rec: StoredRecord) -> tuple[PaymentFact, datetime] | None:
    """The payment a verified status-API answer reading ``paid`` describes (ADR 0017), as
    a delivery's fact would say it, and its time; None for any other answer."""
    st = decode_checked(rec.state)
    if st.reading != "paid":
        return None
    p = answers.payment(st.provider, st.order_id, binascii.a2b_base64(st.body_b64))
    return _paid(rec, st.timestamp, st.provider, "reconciliation", st.order_id, p)


def _paid(
    rec: StoredRecord, at: datetime, provider: str, kind: str, order_id: str, p: Payment
) -> tuple[PaymentFact, datetime]:
    """The fact of a received payment reading paid (``p``) about ``order_id``, and its
    time: what ``payment_fact`` says of a paid delivery, and of an answer (ADR 0017)."""
    fact = PaymentFact(
        position=rec.position,
        event_id=str(rec.id),
        recorded_at=at.isoformat(),
        provider=provider,
        kind=kind,
        state="received",
        order_id=order_id,
        status="paid",
        amount=p.amount,
        paid_amount=p.paid_amount,
        currency=p.currency,
        customer=p.customer,
        payment_method=p.payment_method,
        invoice_id=p.invoice_id,
        payment_id=p.payment_id,
    )
    return fact, at


def read(records: Sequence[StoredRecord], catalogue: Catalogue) -> list[Item]:
    """What each record says about which order, in log order; records saying nothing about
    one are left out. The time is the event's own (the fact's ``recorded_at``)."""
    items: list[Item] = []
    for rec in records:
        topic = rec.topic
        if topic == RECEIVED_TOPIC:
            found = paid_delivery(rec, catalogue)
        elif topic == CHECKED_TOPIC:
            found = checked_fact(rec)
        elif topic == REGISTERED_TOPIC:
            r = decode_registered(rec.state)
            ref = f"{r.provider}:{r.order_id}"
            storable(ref, r.customer, r.booking_id, r.amount, r.currency)
            reg = Registration(r.customer, r.booking_id, r.amount, r.currency)
            items.append((rec, ref, reg, r.timestamp))
            continue
        else:
            continue
        if found is not None:
            fact, at = found
            ref = f"{fact.provider}:{fact.order_id}"
            storable(ref)
            items.append((rec, ref, fact, at))
    return items
