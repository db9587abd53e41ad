"""The outbox projector: turns paid orders in the log into outbox messages, exactly once.

Run by the projection runner, so its writes commit with its tracking position. Messages go
to ``public.outbox`` (not the generation schema) under deterministic ids
``uuid5(source event id | kind | target)`` with ``ON CONFLICT DO NOTHING``: replaying or
rebuilding derives the same ids and sends nothing twice (ADR 0007). Bodies are built in
``ledger.outbox.messages``; the rules below live in ``ledger.outbox.effects``.

It reads three topics: deliveries, the answers of the providers' status APIs
(``Reconciliation.Checked``, ADR 0017) and registered orders (``OrderRegistration.Registered``,
ADR 0016), whose customer, ``booking_id`` and expected amount and currency it keeps in its own
generation table (``registrations``). Messages, each only when its target is configured:

- ``email``: "Payment received" to the customer on the order's first transition to paid.
  The address is the registered customer's when the order is registered (the merchant's
  own record of who ordered wins over whatever a payer typed at the provider), else the
  notification's. Real Midtrans notifications carry none: if the order is paid before it
  is registered and no address was known, the e-mail is owed and goes out when the
  registration arrives, once (its id derives from the registration event).
- ``revalidate``: the order's pages (seed 001) on the first transition to paid, for shop
  orders only: never for Mayar, whose ids are payment ids, not shop orders.
- ``partner``: ``booking.paid`` (first report) / ``booking.updated`` (a later change of
  status or paid amount) for an order of a booking provider (``partner_booking_providers``,
  default Xendit), under the registered ``booking_id`` when there is one, else the
  provider's order id. ``LUNAS`` only when the paid amount (the most any paid fact said)
  reaches the expected one (registered, else the provider's stated total); else ``DP``.
  The bytes are fixed here and signed by the dispatcher at send time.

Only payments that mean something have effects:

- Mayar: a payment makes messages only when the token credit rules
  (``ledger.payments.rules.classify_payment``, the catalogue ``token_balances`` uses)
  credit something. A payment for an unknown package, without a customer or at the wrong
  price credits nothing and sits in review: no e-mail (and never a revalidation).
- The amount rule (``ledger.payments.orderstatus.settle``): an ``amount_mismatch`` order
  (more than expected, or another currency) gets no e-mail, no revalidation and no
  partner message; the order view lists it as ``amount_mismatch`` and this projection
  keeps why in ``orders.withheld``. A ``partially_paid`` order (a down payment) is paid
  money: e-mail and revalidation on the first payment, ``DP`` to the partner.
- A verified answer of a status API that reads ``paid`` (a missed webhook recovered by
  ``ledger reconcile`` or the reconciler) has exactly the effects the webhook would have had.
  The first-paid state is kept per order, not per event, so whichever of the answer and a
  late webhook comes first makes the messages and the other makes none. A Midtrans answer
  carries no address: the registration gives it.

A registration that arrives after the order was paid changes no message already derived
(the partner sync keeps the id it was sent under); it only settles an owed e-mail.

Old news is not re-sent: an event older than ``max_age`` is folded (the state stays exact)
but makes no message, so a rebuild after a target was added (or its URL changed, which
changes the ids) does not mail every customer of the past.

The admin live feed reads the log itself (``/v1/stream``), so it needs no message here.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ledger.config import Settings
from ledger.database import Conn
from ledger.domain.events import CHECKED_TOPIC, RECEIVED_TOPIC, decode_checked
from ledger.domain.orders import REGISTERED_TOPIC, decode_registered
from ledger.errors import NotConfigured
from ledger.ingest.providers import mayar
from ledger.outbox.effects import Message, OrderState, Registration, Where, on_paid, on_registered
from ledger.outbox.messages import message_id
from ledger.payments.facts import PaymentFact, payment_fact
from ledger.payments.rules import Catalogue, classify_payment, delivery_head, raw_body
from ledger.reconcile import answers
from ledger.sql import load
from ledger.store.eventstore import StoredRecord

SQL = load(Path(__file__).with_suffix(".sql"))


def _age(recorded_at: str) -> float:
    """Seconds since the event was recorded."""
    return (datetime.now(UTC) - datetime.fromisoformat(recorded_at)).total_seconds()


@dataclass(frozen=True)
class Targets:
    """Where messages may go; a target that is not configured produces no messages.
    ``catalogue``: the token packages, to judge whether a Mayar payment credits anything
    (the same settings the ``token_balances`` projection reads)."""

    partner_url: str | None = None
    booking_providers: frozenset[str] = frozenset({"xendit"})
    email_from: str | None = None
    revalidate_url: str | None = None
    max_age: float = 7 * 86400.0  # seconds; 0: no limit
    catalogue: Catalogue = field(default_factory=Catalogue)

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
            catalogue=Catalogue.of(s.token_packages, s.package_prices),
        )

    @property
    def where(self) -> Where:
        return Where(self.partner_url, self.booking_providers, self.email_from, self.revalidate_url)


def checked_fact(rec: StoredRecord) -> PaymentFact | None:
    """The payment a verified status-API answer reading ``paid`` describes (ADR 0017), as
    a delivery's fact would say it; None for any other answer."""
    st = decode_checked(rec.state)
    if st.reading != "paid":
        return None
    p = answers.payment(st.provider, st.order_id, base64.b64decode(st.body_b64))
    return PaymentFact(
        position=rec.position,
        event_id=str(rec.id),
        recorded_at=st.timestamp.isoformat(),
        provider=st.provider,
        kind="reconciliation",
        state="received",
        order_id=st.order_id,
        status="paid",
        amount=p.amount,
        paid_amount=p.paid_amount,
        currency=p.currency,
        customer=p.customer,
        payment_method=p.payment_method,
        invoice_id=p.invoice_id,
        payment_id=p.payment_id,
    )


def credited(rec: StoredRecord, catalogue: Catalogue) -> bool:
    """Does this paid Mayar delivery credit tokens (``ledger.payments.rules``)?"""
    head = delivery_head(rec.state)
    if head.kind not in mayar.PAID_EVENTS:
        return False
    data = mayar.DECODER.decode(raw_body(head)).data
    return classify_payment(data, catalogue, str(rec.id)).tokens > 0


@dataclass(frozen=True, slots=True)
class Decision:
    """One event's outcome for its order: the new state and the messages."""

    ref: str
    state: OrderState
    messages: list[Message]
    recorded_at: str  # the event's time, for the max_age rule
    customer: str | None


def _state(row: Any) -> OrderState:
    if row is None or not row["known"]:
        return OrderState()
    return OrderState(
        first_paid=row["first_paid_position"],
        partner_status=row["partner_status"],
        partner_paid=row["partner_paid_amount"],
        paid=row["paid_amount"],
        owed=row["email_owed"],
        withheld=row["withheld"],
    )


def _registration(row: Any) -> Registration | None:
    if row is None or row["reg_customer"] is None:
        return None
    return Registration(
        row["reg_customer"], row["reg_booking_id"], row["reg_amount"], row["reg_currency"]
    )


class OutboxProjection:
    name = "outbox"
    # 2: registrations (ADR 0016), status-API answers (ADR 0017), the amount rule, Mayar
    # payments only when credited, no revalidation for Mayar
    version = 2
    topics = (RECEIVED_TOPIC, CHECKED_TOPIC, REGISTERED_TOPIC)
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

    def _paid(self, rec: StoredRecord) -> PaymentFact | None:
        """The paid fact ``rec`` carries, if it is a payment that means something."""
        if rec.topic == CHECKED_TOPIC:
            return checked_fact(rec)
        fact = payment_fact(rec)
        if fact is None or fact.state != "received" or fact.status != "paid":
            return None
        if not fact.order_id:
            return None
        if fact.provider == "mayar" and not credited(rec, self.targets.catalogue):
            return None
        return fact

    async def _decide(self, conn: Conn, rec: StoredRecord) -> Decision | None:
        """What one event means for its order (None: nothing)."""
        if rec.topic == REGISTERED_TOPIC:
            st = decode_registered(rec.state)
            ref = f"{st.provider}:{st.order_id}"
            reg = Registration(st.customer, st.booking_id, st.amount, st.currency)
            row = await conn.fetchrow(
                SQL["register"], ref, reg.customer, reg.booking_id, reg.amount, reg.currency
            )
            if row is None:  # no e-mail owed
                return None
            state, out = on_registered(reg, _state(row), self.targets.where)
            return Decision(ref, state, out, st.timestamp.isoformat(), reg.customer)
        fact = self._paid(rec)
        if fact is None:
            return None
        ref = f"{fact.provider}:{fact.order_id}"
        row = await conn.fetchrow(SQL["get_order"], ref)
        known = _registration(row)
        state, out = on_paid(fact, known, _state(row), self.targets.where)
        customer = known.customer if known else fact.customer
        return Decision(ref, state, out, fact.recorded_at, customer)

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        t = self.targets
        rows: list[tuple[Any, ...]] = []
        for rec in records:
            d = await self._decide(conn, rec)
            if d is None:
                continue
            ref, state = d.ref, d.state
            await conn.execute(
                SQL["upsert_order"],
                ref,
                state.first_paid,
                state.partner_status,
                state.partner_paid,
                state.paid,
                state.owed,
                state.withheld,
            )
            if t.max_age and _age(d.recorded_at) > t.max_age:
                # Old news: a rebuild after a target was added (or its URL changed, which
                # changes the ids) must not mail every customer of the past or re-sync every
                # old booking. The fold above still happens, so the state stays exact.
                continue
            for kind, target, payload in d.messages:
                mid = message_id(str(rec.id), kind, target)
                rows.append((mid, kind, target, rec.id, rec.position, ref, d.customer, payload))
        if rows:
            await conn.execute(
                SQL["insert_messages"], *(list(col) for col in zip(*rows, strict=True))
            )

    async def digest(self, conn: Conn) -> str:
        h = hashlib.sha256()
        for query in ("digest_rows", "digest_registrations"):
            for r in await conn.fetch(SQL[query]):
                h.update(repr(tuple(r.values())).encode())
        return h.hexdigest()


PROJECTION = OutboxProjection()
