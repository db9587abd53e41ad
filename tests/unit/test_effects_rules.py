"""The outbox's effect rules (``ledger.outbox.effects``) without a database: whatever the
order in which a registration, a webhook and a reconciliation answer arrive, the customer
is e-mailed once, at the registered address, and the order's pages are revalidated once."""

from __future__ import annotations

import itertools
import json

import pytest

from ledger.outbox.effects import OrderState, Registration, Where, on_paid, on_registered
from ledger.payments.facts import PaymentFact

WHERE = Where("http://partner.test/sync", frozenset({"xendit"}), "shop@example.com", "http://r")
REG = Registration("reg@example.com", "BK-1", "100000", "IDR")


def fact(position: int, paid: str, *, customer: str | None = None, provider: str = "xendit"):
    return PaymentFact(
        position=position,
        event_id=f"00000000-0000-0000-0000-{position:012d}",
        recorded_at="2026-11-27T10:00:00+00:00",
        provider=provider,
        kind="PAID",
        state="received",
        order_id="ORD-1",
        status="paid",
        amount=paid,
        paid_amount=paid,
        currency="IDR",
        customer=customer,
    )


def run(events):
    state, reg, sent = OrderState(), None, []
    for e in events:
        if e == "registration":
            reg = REG
            state, out = on_registered(REG, state, WHERE)
        else:
            state, out = on_paid(e, reg, state, WHERE)
        sent += out
    return state, sent


@pytest.mark.parametrize(
    "events",
    list(itertools.permutations(["registration", fact(2, "100000"), fact(3, "100000.00")])),
)
def test_any_arrival_order_emails_the_registered_customer_once(events):
    state, sent = run(events)
    assert [(k, t) for k, t, _ in sent if k == "email"] == [("email", "reg@example.com")]
    assert [k for k, _, _ in sent].count("revalidate") == 1
    assert state.owed is None
    partner = [json.loads(p) for k, _, p in sent if k == "partner"]
    # Before the registration the partner hears the provider's id; the status is LUNAS
    # either way (the stated total is paid in full), and a repeat of it sends nothing.
    assert len(partner) == 1
    assert partner[0]["status"] == "LUNAS"


def test_short_is_dp_then_lunas_and_over_is_withheld():
    state, sent = run(["registration", fact(2, "40000"), fact(3, "100000")])
    partner = [json.loads(p) for k, _, p in sent if k == "partner"]
    assert [(b["event"], b["booking_id"], b["status"], b["paid_amount"]) for b in partner] == [
        ("booking.paid", "BK-1", "DP", 40000),
        ("booking.updated", "BK-1", "LUNAS", 100000),
    ]
    state, sent = run(["registration", fact(2, "150000")])
    assert sent == []
    assert state.withheld == "over"
    assert state.first_paid is None


def test_an_owed_email_is_judged_against_the_registration():
    state, sent = run([fact(2, "150000"), "registration"])  # unregistered: paid in full
    assert [k for k, _, _ in sent] == ["revalidate", "partner"]
    assert state.withheld == "over"  # the registration says 100000 was expected
    assert state.owed is None


def test_mayar_is_never_revalidated():
    _, sent = run([fact(2, "50000", customer="ani@example.com", provider="mayar")])
    assert [(k, t) for k, t, _ in sent] == [("email", "ani@example.com")]
