"""Reading a provider's status API answer (ledger.reconcile.answers): pure logic."""

from __future__ import annotations

import json

import pytest

from ledger.reconcile.answers import payment, read_answer
from tests.support.providerapis import midtrans_status_body, xendit_invoice

KEY = "SB-Mid-server-unit"


def midtrans(body: object, http_status: int = 200, keys: tuple[str, ...] = (KEY,)) -> str:
    raw = json.dumps(body).encode()
    return read_answer("midtrans", "INV-1", http_status, raw, keys).reading


def xendit(body: object, http_status: int = 200) -> str:
    return read_answer("xendit", "BK-1", http_status, json.dumps(body).encode(), ()).reading


@pytest.mark.parametrize(
    ("transaction_status", "reading"),
    [("settlement", "paid"), ("pending", "pending"), ("expire", "failed"), ("refund", "refunded")],
)
def test_a_verified_midtrans_answer_reads_as_its_status(transaction_status, reading):
    assert midtrans(midtrans_status_body("INV-1", transaction_status, KEY)) == reading


def test_a_rotated_midtrans_key_still_verifies():
    assert midtrans(midtrans_status_body("INV-1", "settlement", "old"), keys=(KEY, "old")) == "paid"


def test_midtrans_404_in_the_body_is_an_unknown_order_whatever_the_http_status():
    body = {"status_code": "404", "status_message": "Transaction doesn't exist."}
    assert midtrans(body) == "unknown_order"
    assert midtrans(body, 404) == "unknown_order"


def test_a_midtrans_answer_that_does_not_verify_is_unverified():
    assert midtrans(midtrans_status_body("INV-1", "settlement", KEY, forged=True)) == "unverified"
    tampered = midtrans_status_body("INV-1", "pending", KEY) | {"gross_amount": "1.00"}
    assert midtrans(tampered) == "unverified"
    # Correctly signed, but about another order: never applied to this one.
    assert midtrans(midtrans_status_body("INV-2", "settlement", KEY)) == "unverified"
    assert midtrans("not an object") == "unverified"


def test_a_midtrans_refusal_is_refused():
    assert midtrans({"status_code": "401", "status_message": "Unknown Merchant"}, 401) == "refused"
    assert midtrans({"status_code": "401", "status_message": "Unknown Merchant"}) == "refused"


def test_xendit_answers():
    assert xendit([]) == "unknown_order"
    assert xendit([xendit_invoice("OTHER", "PAID")]) == "unknown_order"
    assert xendit([xendit_invoice("BK-1", "PENDING")]) == "pending"
    # Several invoices for one external id: the highest status decides, as for webhooks.
    assert xendit([xendit_invoice("BK-1", "EXPIRED"), xendit_invoice("BK-1", "SETTLED")]) == "paid"
    assert xendit({"error_code": "INVALID_API_KEY"}, 401) == "refused"
    assert xendit({"not": "a list"}) == "unverified"


def test_payment_of_a_xendit_answer_is_the_deciding_invoice():
    body = json.dumps([xendit_invoice("BK-1", "PENDING"), xendit_invoice("BK-1", "PAID")])
    p = payment("xendit", "BK-1", body.encode())
    assert (p.status, p.paid_amount, p.payment_method) == ("paid", "45000", "QRIS")
