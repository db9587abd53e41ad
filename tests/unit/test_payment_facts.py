"""``ledger.payments.facts``: each provider's sample bodies read as one payment fact, and
every reader (orders projection, live feed, outbox, audit index) taking that one reading."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.audit.index import interpret
from ledger.domain.events import (
    CONFLICTED_TOPIC,
    QUARANTINED_TOPIC,
    RECEIVED_TOPIC,
)
from ledger.payments.customers import customer_key
from ledger.payments.facts import Payment, PaymentFact, payment_fact, read_payment
from ledger.payments.rules import delivery_head
from ledger.projections.orders import note
from ledger.store.eventstore import StoredRecord
from tests.support.db import signed
from tests.support.readmodels import delivery_state

AT = datetime(2026, 2, 4, 23, 0, tzinfo=UTC)


def body(provider: str, event: str, **kw: str) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(signed(provider, event, **kw).body)
    return decoded


def dump(obj: dict[str, object]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def record(
    provider: str, raw: bytes, *, topic: str = RECEIVED_TOPIC, position: int = 7
) -> StoredRecord:
    state = delivery_state(provider, f"{provider}:test", "test", raw, headers={}, timestamp=AT)
    return StoredRecord(position, uuid.UUID(int=position), 1, topic, state)


# --- each provider's bodies ------------------------------------------------------------


def test_midtrans_settlement_is_paid_for_its_gross_amount():
    b = body("midtrans", "settlement", order_id="INV-1", amount="150000.00", customer=" Ana@X.io ")
    p = read_payment("midtrans", dump(b))
    assert p == Payment(
        provider="midtrans",
        provider_status="settlement",
        status="paid",
        order_id="INV-1",
        amount="150000.00",
        paid_amount="150000.00",
        noted_amount="150000.00",
        currency="IDR",
        customer="ana@x.io",
        payment_method="bank_transfer",
        payment_id=b["transaction_id"],
    )


@pytest.mark.parametrize(
    ("event", "fraud", "shown", "status"),
    [
        ("capture", "accept", "capture/accept", "paid"),
        ("capture", "challenge", "capture/challenge", "pending"),
        ("capture", "deny", "capture/deny", "failed"),
        ("pending", None, "pending", "pending"),
        ("expire", None, "expire", "failed"),
        ("refund", None, "refund", "refunded"),
        ("partial_chargeback", None, "partial_chargeback", "partially_charged_back"),
    ],
)
def test_midtrans_statuses_and_what_was_paid(event, fraud, shown, status):
    kw = {"fraud_status": fraud} if fraud else {}
    p = read_payment("midtrans", signed("midtrans", event, amount="5000.00", **kw).body)
    assert p is not None
    assert (p.provider_status, p.status) == (shown, status)
    assert p.amount == p.noted_amount == "5000.00"
    assert p.paid_amount == ("5000.00" if status == "paid" else None)


def test_xendit_paid_reports_the_paid_amount_channel_and_invoice():
    b = body("xendit", "PAID", order_id="BOOK-1", amount="32000", customer="Budi@Example.com")
    b["paid_amount"] = 30000.5
    p = read_payment("xendit", dump(b))
    assert p == Payment(
        provider="xendit",
        provider_status="PAID",
        status="paid",
        order_id="BOOK-1",
        amount="32000",
        paid_amount="30000.5",
        noted_amount="30000.5",
        currency="IDR",
        customer="budi@example.com",
        payment_method="QRIS",  # the channel before the method
        invoice_id=b["id"],
    )


def test_xendit_pending_and_expired_have_nothing_paid():
    pending = read_payment("xendit", signed("xendit", "PENDING", amount="32000").body)
    expired = read_payment("xendit", signed("xendit", "EXPIRED", amount="32000").body)
    assert pending is not None
    assert expired is not None
    assert (pending.status, pending.paid_amount, pending.noted_amount) == ("pending", None, "32000")
    assert (expired.status, expired.paid_amount) == ("failed", None)
    assert pending.payment_method is None


@pytest.mark.parametrize(
    ("event", "status", "shown", "order_status"),
    [
        ("booking.paid", "LUNAS", "booking.paid/LUNAS", "paid"),
        ("booking.updated", "DP", "booking.updated/DP", "pending"),
        ("booking.paid", None, "booking.paid", "paid"),
        ("booking.updated", None, "booking.updated", "pending"),
    ],
)
def test_partner_updates_keep_the_down_payment(event, status, shown, order_status):
    b = body("partner", event, order_id="B-9", amount="12000")
    if status is None:
        del b["status"]
    else:
        b["status"] = status
    p = read_payment("partner", dump(b))
    assert p == Payment(
        provider="partner",
        provider_status=shown,
        status=order_status,
        order_id="B-9",
        paid_amount="12000",  # a down payment is paid too
        noted_amount="12000",
        payment_method="QRIS",
    )


def test_mayar_payments_and_the_customer_of_data_customer():
    b = body("mayar", "payment.success", amount="50000")
    data = b["data"]
    assert isinstance(data, dict)
    del data["customerEmail"]
    data["customer"] = {"email": " Sari@Example.COM "}
    data["id"] = 42
    p = read_payment("mayar", dump(b))
    assert p == Payment(
        provider="mayar",
        provider_status="payment.success",
        status="paid",
        order_id="42",
        amount="50000",
        paid_amount="50000",
        noted_amount="50000",
        customer="sari@example.com",
    )
    failed = read_payment("mayar", signed("mayar", "payment.expired").body)
    renewed = read_payment("mayar", signed("mayar", "subscription.renewed").body)
    assert failed is not None
    assert (failed.status, failed.paid_amount) == ("failed", None)
    assert renewed is not None
    assert renewed.status is None


def test_an_unknown_provider_has_no_payment_and_a_bad_body_raises():
    assert read_payment("acme", b"{}") is None
    with pytest.raises(msgspec.DecodeError):
        read_payment("xendit", b'{"id": "x", "status": "PAID"}')


# --- one delivery as the feed, the outbox and the audit index see it -----------------


def test_a_fact_carries_the_payment_and_the_delivery():
    b = body("xendit", "PAID", order_id="BOOK-2", amount="32000")
    fact = payment_fact(record("xendit", dump(b), position=11))
    assert fact == PaymentFact(
        position=11,
        event_id=str(uuid.UUID(int=11)),
        recorded_at=AT.isoformat(),
        provider="xendit",
        kind="test",
        state="received",
        order_id="BOOK-2",
        status="paid",
        amount="32000",
        paid_amount="32000",
        currency="IDR",
        customer="budi@example.com",
        payment_method="QRIS",
        invoice_id=b["id"],
    )


def test_the_stream_message_keeps_its_fields_in_order():
    fact = payment_fact(record("partner", signed("partner", "booking.paid").body))
    assert fact is not None
    assert list(json.loads(msgspec.json.encode(fact))) == [
        "position",
        "event_id",
        "recorded_at",
        "provider",
        "kind",
        "state",
        "order_id",
        "status",
        "amount",
        "paid_amount",
        "currency",
        "customer",
        "payment_method",
        "invoice_id",
        "payment_id",
    ]


@pytest.mark.parametrize(
    ("topic", "state"), [(QUARANTINED_TOPIC, "quarantined"), (CONFLICTED_TOPIC, "conflicted")]
)
def test_an_undecodable_body_still_says_who_sent_what(topic, state):
    fact = payment_fact(record("xendit", b'{"id": "x", "status": "PAID"}', topic=topic))
    assert fact is not None
    assert (fact.state, fact.provider, fact.order_id, fact.status) == (state, "xendit", None, None)


def test_other_topics_are_not_payments():
    rec = StoredRecord(1, uuid.uuid4(), 1, "ledger.domain:TokenSpend.Spent", b"{}")
    assert payment_fact(rec) is None


def test_the_audit_index_row_is_the_fact():
    b = body("midtrans", "settlement", order_id="INV-3", amount="7000.00", customer="A@B.co")
    row = interpret(record("midtrans", dump(b)))
    assert (row.category, row.order_id, row.status, row.customer, row.currency) == (
        "received",
        "INV-3",
        "paid",
        "a@b.co",
        "IDR",
    )
    assert (str(row.amount), str(row.paid_amount)) == ("7000.00", "7000.00")


# --- the orders projection reads the same fact ----------------------------------------


@pytest.mark.parametrize(
    ("provider", "event"),
    [
        ("midtrans", "settlement"),
        ("midtrans", "capture"),
        ("xendit", "PAID"),
        ("xendit", "PENDING"),
        ("partner", "booking.updated"),
    ],
)
def test_an_order_note_is_the_payment_fact(provider, event):
    rec = record(provider, signed(provider, event, customer="Ana@X.io").body)
    n = note(rec, delivery_head(rec.state))
    p = read_payment(provider, signed(provider, event).body)
    fact = payment_fact(rec)
    assert n is not None
    assert p is not None
    assert fact is not None
    assert (n.order_id, n.status, n.currency, n.payment_method) == (
        fact.order_id,
        fact.status,
        fact.currency,
        fact.payment_method,
    )
    assert n.customer == fact.customer == (None if provider == "partner" else "ana@x.io")
    assert n.provider_status == p.provider_status


def test_orders_skip_mayar_and_set_aside_what_they_cannot_read():
    mayar = record("mayar", signed("mayar", "payment.success").body)
    assert note(mayar, delivery_head(mayar.state)) is None
    bad = record("xendit", b'{"id": "x", "status": "PAID"}')
    with pytest.raises(msgspec.DecodeError):
        note(bad, delivery_head(bad.state))


@given(st.text(max_size=40))
def test_every_reader_names_a_customer_the_same_way(raw):
    b = body("xendit", "PAID")
    b["payer_email"] = raw
    rec = record("xendit", dump(b))
    n = note(rec, delivery_head(rec.state))
    fact = payment_fact(rec)
    assert n is not None
    assert fact is not None
    assert n.customer == fact.customer == interpret(rec).customer == customer_key(raw)


# --- customers in the audit index: the one rule -----------------------------------------


def spend_record(customer: str) -> StoredRecord:
    state = {"timestamp": AT.isoformat(), "customer": customer, "amount": 1}
    return StoredRecord(5, uuid.uuid4(), 1, "ledger.domain:TokenSpend.Spent", dump(state))


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (" Budi@Example.com ", "budi@example.com"),
        ("\u1e9eudi@example.com", "ssudi@example.com"),  # capital sharp s: casefold, not lower
        ("\uff42udi@example.com", "budi@example.com"),  # fullwidth b: NFKC
        ("budi@ex\u0430mple.com", None),  # a Cyrillic lookalike names no customer
        ("not an address", None),
    ],
)
def test_the_audit_index_keys_other_events_customers_with_the_one_rule(raw, key):
    assert interpret(spend_record(raw)).customer == key == customer_key(raw)
