"""Which effects a payment has: pure rules, no I/O (the outbox projection applies them).

The outbox projection (``projections/outbox.py``) keeps, per order, what it has already
decided (``OrderState``) and the merchant's registration (``Registration``); for each paid
fact (a notification, or a verified answer of a provider's status API) ``on_paid`` says what
the order's state becomes and which messages to derive; for a registration that arrives
after the order was paid, ``on_registered`` says whether the e-mail that could not be sent
then (no address) goes out now. The decisions are written down in the projection's
docstring and in ADR 0016 ("Effects").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

import msgspec

from ledger.outbox.messages import email_body, partner_body, revalidate_body
from ledger.payments.facts import PaymentFact
from ledger.payments.orderstatus import settle

# Providers whose order ids are not shop orders: no order-page revalidation (Mayar's ids
# are its payment ids; its payments are token credits, ``ledger.payments.rules``).
NOT_SHOP_ORDERS = frozenset({"mayar"})

_fact_encoder = msgspec.json.Encoder()
_fact_decoder = msgspec.json.Decoder(PaymentFact)


@dataclass(frozen=True, slots=True)
class Registration:
    """What the outbox keeps of an order's registration (ADR 0016)."""

    customer: str
    booking_id: str | None
    amount: str
    currency: str


@dataclass(frozen=True, slots=True)
class OrderState:
    """What the outbox has decided for one order so far."""

    first_paid: int | None = None  # position of the fact that first made it paid
    partner_status: str | None = None  # LUNAS | DP, as last reported to the partner
    partner_paid: Decimal | None = None  # the paid amount last reported to the partner
    paid: Decimal | None = None  # the most any paid fact said was paid
    owed: bytes | None = None  # the paid fact whose e-mail waits for an address
    withheld: str | None = None  # over | currency: the amount rule withheld the effects


@dataclass(frozen=True, slots=True)
class Where:
    """The configured targets (None: not configured, no message of that kind)."""

    partner_url: str | None
    booking_providers: frozenset[str]
    email_from: str | None
    revalidate_url: str | None


Message = tuple[str, str, bytes]  # kind, target, payload


def amount(value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def judged(
    fact: PaymentFact, reg: Registration | None, paid: Decimal | None
) -> tuple[str, str | None]:
    """The amount rule (``ledger.payments.orderstatus.settle``) for a paid order: expected
    is the registered amount and currency, else the total the provider states; paid is the
    most any paid fact said. ``paid``, ``partially_paid`` or ``amount_mismatch``."""
    expected, currency = (reg.amount, reg.currency) if reg else (fact.amount, None)
    return settle("paid", expected, currency, None if paid is None else str(paid), fact.currency)


def on_paid(
    fact: PaymentFact, reg: Registration | None, state: OrderState, where: Where
) -> tuple[OrderState, list[Message]]:
    """A paid fact for an order: the order's new state and the messages it makes.
    (One ``OrderState`` is built at the end: a rebuild calls this for every payment.)"""
    stated = amount(fact.paid_amount)
    paid = stated if state.paid is None else max(state.paid, stated or state.paid)
    status, check = judged(fact, reg, paid)
    if status == "amount_mismatch":
        # More than expected, or another currency: a person must look (the order view reads
        # amount_mismatch). No "Payment received", no revalidation, no LUNAS.
        return replace(state, paid=paid, withheld=check), []
    first_paid, owed = state.first_paid, state.owed
    partner_status, partner_paid = state.partner_status, state.partner_paid
    out: list[Message] = []
    if first_paid is None:
        first_paid = fact.position
        to = reg.customer if reg else fact.customer
        if to is None:
            owed = _fact_encoder.encode(fact)
        elif where.email_from:
            out.append(("email", to, email_body(fact, to, where.email_from)))
        if where.revalidate_url and fact.provider not in NOT_SHOP_ORDERS:
            out.append(("revalidate", where.revalidate_url, revalidate_body(fact)))
    if where.partner_url and fact.provider in where.booking_providers:
        p_status = "LUNAS" if status == "paid" else "DP"
        p_paid = paid if paid is not None else Decimal(0)
        if (p_status, p_paid) != (partner_status, partner_paid):
            event = "booking.paid" if partner_status is None else "booking.updated"
            booking = (reg.booking_id if reg else None) or fact.order_id or ""
            body = partner_body(fact, event, p_status, booking, p_paid)
            out.append(("partner", where.partner_url, body))
            partner_status, partner_paid = p_status, p_paid
    new = OrderState(first_paid, partner_status, partner_paid, paid, owed, withheld=None)
    return new, out


def on_registered(
    reg: Registration, state: OrderState, where: Where
) -> tuple[OrderState, list[Message]]:
    """A registration: the e-mail owed since the order was paid without an address goes
    to the registered customer now, once, unless the amount rule withholds it."""
    if state.owed is None:
        return state, []
    fact = _fact_decoder.decode(state.owed)
    state = replace(state, owed=None)
    status, check = judged(fact, reg, state.paid)
    if status == "amount_mismatch":
        return replace(state, withheld=check), []
    if not where.email_from:
        return state, []
    return state, [("email", reg.customer, email_body(fact, reg.customer, where.email_from))]
