"""The outbox's message bodies, fixed when a message is derived (ADR 0007).

Each body's bytes are decided here, once, and stored with the message: the dispatcher
sends them as they are (the partner's signature is computed at send time over these
bytes, so the secret is never stored). Ids are ``uuid5(source event id | kind | target)``:
a replay or a rebuild derives the same ids and sends nothing twice.
"""

from __future__ import annotations

import hashlib
import html
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import msgspec

from ledger.payments.facts import PaymentFact

OUTBOX_NAMESPACE = uuid.UUID("0b7e6a43-2f1d-5c7a-8e0b-5d6f4a3c2b10")
_json = msgspec.json.Encoder(decimal_format="number")


def message_id(source_event_id: str, kind: str, target: str) -> uuid.UUID:
    """Stable across replays and rebuilds; sent as the idempotency id on every attempt."""
    return uuid.uuid5(OUTBOX_NAMESPACE, f"{source_event_id}|{kind}|{target}")


_NAMESPACE = OUTBOX_NAMESPACE.bytes


def message_hex(source_event_id: str, kind: str, target: str) -> str:
    """``message_id(...).hex``, computed as ``uuid.uuid5`` does (SHA-1 of the namespace and
    the name, version 5, RFC 4122 variant) without building a ``UUID`` on the way, which
    costs three times the hash: a rebuild derives one per message. asyncpg takes the hex
    text for a ``uuid`` parameter."""
    name = f"{source_event_id}|{kind}|{target}".encode()
    h = bytearray(hashlib.sha1(_NAMESPACE + name, usedforsecurity=False).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    return h.hex()


def order_paths(order_id: str) -> list[str]:
    """The shop pages showing an order (seed 001), revalidated when it is paid."""
    oid = quote(order_id, safe="")
    return [
        f"/orders/{oid}",
        "/orders",
        "/dashboard/pesanan",
        f"/dashboard/pesanan/detail-pesanan/{oid}",
    ]


def _number(value: Decimal) -> Decimal | int:
    return int(value) if value == value.to_integral_value() else value


def _timestamp(recorded_at: str) -> str:
    # "2026-02-04T23:00:00.000Z", as the partner's reference shows.
    head = recorded_at.replace("+00:00", "")
    date, _, rest = head.partition("T")
    secs, _, frac = rest.partition(".")
    return f"{date}T{secs}.{(frac + '000')[:3]}Z"


def partner_body(
    fact: PaymentFact, event: str, status: str, booking_id: str, paid: Decimal
) -> bytes:
    """The booking sync body, keys in the reference's order; amounts as JSON numbers.
    ``booking_id``: the registered one, else the provider's order id; ``paid``: the most
    any paid notification or answer said was paid for the order."""
    body: dict[str, Any] = {
        "event": event,
        "booking_id": booking_id,
        "status": status,
        "paid_amount": _number(paid),
    }
    if fact.payment_method:
        body["payment_method"] = fact.payment_method
    pairs = (("invoice_id", fact.invoice_id), ("payment_id", fact.payment_id))
    details = {k: v for k, v in pairs if v}
    if details:
        body["payment_details"] = details
    body["timestamp"] = _timestamp(fact.recorded_at)
    return _json.encode(body)


def email_body(fact: PaymentFact, to: str, sender: str) -> bytes:
    """Recipient, subject and both parts, fixed at creation like every other payload."""
    amount = f"{fact.currency or 'IDR'} {fact.paid_amount or fact.amount or ''}".strip()
    oid = fact.order_id or ""
    method = fact.payment_method or fact.provider
    text = (
        f"Thank you, your payment was received.\n\n"
        f"Order: {oid}\nAmount: {amount}\nPaid with: {method}\n"
        f"Recorded at: {fact.recorded_at}\n"
    )
    e = html.escape
    page = (
        "<!doctype html><html><body>"
        "<h1>Payment received</h1><p>Thank you, your payment was received.</p>"
        "<table>"
        f"<tr><th>Order</th><td>{e(oid)}</td></tr>"
        f"<tr><th>Amount</th><td>{e(amount)}</td></tr>"
        f"<tr><th>Paid with</th><td>{e(method)}</td></tr>"
        f"<tr><th>Recorded at</th><td>{e(fact.recorded_at)}</td></tr>"
        "</table></body></html>"
    )
    return _json.encode(
        {
            "to": to,
            "from": sender,
            "subject": f"Payment received for order {oid}",
            "text": text,
            "html": page,
        }
    )


def revalidate_body(fact: PaymentFact) -> bytes:
    return _json.encode(
        {
            "event": "order.paid",
            "order_id": fact.order_id,
            "paths": order_paths(fact.order_id or ""),
        }
    )
