"""The outbox projector: turns paid orders in the log into outbox messages, exactly once.

Run by the projection runner, so its writes commit with its tracking position. Messages go
to ``public.outbox`` (not the generation schema) under deterministic ids
``uuid5(source event id | kind | target)`` with ``ON CONFLICT DO NOTHING``: replaying or
rebuilding derives the same ids and sends nothing twice (ADR 0007).

Messages, each only when its target is configured:

- ``partner``: ``booking.paid`` (first report) / ``booking.updated`` (a later change of
  status or paid amount) when an order of a booking provider (``partner_booking_providers``,
  default Xendit) is paid. Body exactly per the partner reference; its bytes are fixed here
  and signed by the dispatcher at send time (the secret is never stored).
- ``email``: to the customer on the first transition to paid, when an address is known.
- ``revalidate``: the order's pages (seed 001) on the first transition to paid.

The admin live feed reads the log itself (``/v1/stream``), so it needs no message here.
"""

from __future__ import annotations

import hashlib
import html
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from ledger.config import Settings
from ledger.database import Conn
from ledger.domain.events import RECEIVED_TOPIC
from ledger.errors import NotConfigured
from ledger.payments.facts import PaymentFact, payment_fact
from ledger.sql import load
from ledger.store.eventstore import StoredRecord

SQL = load(Path(__file__).with_suffix(".sql"))
OUTBOX_NAMESPACE = uuid.UUID("0b7e6a43-2f1d-5c7a-8e0b-5d6f4a3c2b10")
_json = msgspec.json.Encoder(decimal_format="number")


def message_id(source_event_id: str, kind: str, target: str) -> uuid.UUID:
    """Stable across replays and rebuilds; sent as the idempotency id on every attempt."""
    return uuid.uuid5(OUTBOX_NAMESPACE, f"{source_event_id}|{kind}|{target}")


def order_paths(order_id: str) -> list[str]:
    """The shop pages showing an order (seed 001), revalidated when it is paid."""
    oid = quote(order_id, safe="")
    return [
        f"/orders/{oid}",
        "/orders",
        "/dashboard/pesanan",
        f"/dashboard/pesanan/detail-pesanan/{oid}",
    ]


def _number(value: str) -> Decimal | int:
    d = Decimal(value)
    return int(d) if d == d.to_integral_value() else d


def _timestamp(recorded_at: str) -> str:
    # "2026-02-04T23:00:00.000Z", as the partner's reference shows.
    head = recorded_at.replace("+00:00", "")
    date, _, rest = head.partition("T")
    secs, _, frac = rest.partition(".")
    return f"{date}T{secs}.{(frac + '000')[:3]}Z"


def _age(recorded_at: str) -> float:
    """Seconds since the event was recorded."""
    return (datetime.now(UTC) - datetime.fromisoformat(recorded_at)).total_seconds()


def partner_body(fact: PaymentFact, event: str, status: str) -> bytes:
    """The booking sync body, keys in the reference's order; amounts as JSON numbers."""
    body: dict[str, Any] = {
        "event": event,
        "booking_id": fact.order_id,
        "status": status,
        "paid_amount": _number(fact.paid_amount or "0"),
    }
    if fact.payment_method:
        body["payment_method"] = fact.payment_method
    pairs = (("invoice_id", fact.invoice_id), ("payment_id", fact.payment_id))
    details = {k: v for k, v in pairs if v}
    if details:
        body["payment_details"] = details
    body["timestamp"] = _timestamp(fact.recorded_at)
    return _json.encode(body)


def email_body(fact: PaymentFact, sender: str) -> bytes:
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
            "to": fact.customer,
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


@dataclass(frozen=True)
class Targets:
    """Where messages may go; a target that is not configured produces no messages."""

    partner_url: str | None = None
    booking_providers: frozenset[str] = frozenset({"xendit"})
    email_from: str | None = None
    revalidate_url: str | None = None
    max_age: float = 7 * 86400.0  # seconds; 0: no limit

    @classmethod
    def from_settings(cls, s: Settings) -> Targets:
        return cls(
            partner_url=s.partner_sync_url
            if s.partner_sync_url and s.partner_sync_secret
            else None,
            booking_providers=frozenset(
                p.strip() for p in s.partner_booking_providers.split(",") if p.strip()
            ),
            email_from=s.smtp_from if s.smtp_url else None,
            revalidate_url=s.revalidate_url,
            max_age=s.outbox_max_age,
        )


class OutboxProjection:
    name = "outbox"
    version = 1
    topics = (RECEIVED_TOPIC,)
    schema_sql = SQL["schema"]
    queries = SQL

    def __init__(self, targets: Targets | None = None) -> None:
        self._targets = targets

    def configure(self, targets: Targets) -> None:
        """Called by the composition root (``ledger.app``) with this process's settings."""
        self._targets = targets

    @property
    def targets(self) -> Targets:
        """Never read from the environment here: an unconfigured projection is a fault of
        the deployment (retried, never the events' fault), not a reason to guess."""
        if self._targets is None:
            raise NotConfigured("the outbox projection's targets were not configured")
        return self._targets

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        t = self.targets
        rows: list[tuple[Any, ...]] = []
        for rec in records:
            fact = payment_fact(rec)
            if fact is None or fact.state != "received" or fact.status != "paid":
                continue
            if not fact.order_id:
                continue
            ref = f"{fact.provider}:{fact.order_id}"
            row = await conn.fetchrow(SQL["get_order"], ref)
            first_paid = row["first_paid_position"] if row else None
            p_status = row["partner_status"] if row else None
            p_amount = row["partner_paid_amount"] if row else None
            out: list[tuple[str, str, bytes]] = []
            if first_paid is None:
                first_paid = rec.position
                if t.email_from and fact.customer:
                    out.append(("email", fact.customer, email_body(fact, t.email_from)))
                if t.revalidate_url:
                    out.append(("revalidate", t.revalidate_url, revalidate_body(fact)))
            if t.partner_url and fact.provider in t.booking_providers:
                paid = Decimal(fact.paid_amount or "0")
                status = "LUNAS" if fact.amount is None or paid >= Decimal(fact.amount) else "DP"
                if (status, paid) != (p_status, p_amount):
                    event = "booking.paid" if p_status is None else "booking.updated"
                    out.append(("partner", t.partner_url, partner_body(fact, event, status)))
                    p_status, p_amount = status, paid
            await conn.execute(SQL["upsert_order"], ref, first_paid, p_status, p_amount)
            if t.max_age and _age(fact.recorded_at) > t.max_age:
                # Old news: a rebuild after a target was added (or its URL changed, which
                # changes the ids) must not mail every customer of the past or re-sync every
                # old booking. The fold above still happens, so the state stays exact.
                continue
            for kind, target, payload in out:
                rows.append(
                    (
                        message_id(fact.event_id, kind, target),
                        kind,
                        target,
                        rec.id,
                        rec.position,
                        ref,
                        fact.customer,
                        payload,
                    )
                )
        if rows:
            await conn.execute(
                SQL["insert_messages"], *(list(col) for col in zip(*rows, strict=True))
            )

    async def digest(self, conn: Conn) -> str:
        h = hashlib.sha256()
        for r in await conn.fetch(SQL["digest_rows"]):
            h.update(repr(tuple(r.values())).encode())
        return h.hexdigest()


PROJECTION = OutboxProjection()
