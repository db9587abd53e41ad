"""Token balances as of a past position: the log prefix folded with the read model's rules.

``GET /v1/audit/customers/{customer}/balance?at_position=N`` (or ``as_of=``) answers what the
balance was right after position N. It reads only the events that can decide that customer's
balance (their spends, their paid Mayar deliveries and the other deliveries naming the same
payment ids, found through the audit index) and folds them with the token_balances
projection's own rules: ``ledger.payments.rules.classify_payment`` decides each delivery's credit,
one credit per payment whose delivery has the smallest event id, spends subtract. The
answer lists every credit with the event that caused it (provenance down to the raw bytes).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec

from ledger.audit.index import SQL
from ledger.database import Conn
from ledger.domain.events import RECEIVED_TOPIC, SPENT_TOPIC, decode_delivery, decode_spend
from ledger.ingest.providers import mayar
from ledger.payments.customers import normalize_email
from ledger.payments.rules import (
    FOREVER,
    Catalogue,
    SubscriptionRow,
    classify_payment,
    is_subscription_event,
    pg_text,
    raw_body,
    subscription_fact,
    subscription_status,
)

_PAID_KINDS = sorted(mayar.PAID_EVENTS)  # the only Mayar deliveries the fold credits


class CreditAsOf(msgspec.Struct, kw_only=True):
    payment_key: str
    event_id: str
    position: int
    package: str
    tokens: int
    raw: str


class BalanceAsOf(msgspec.Struct, kw_only=True):
    customer: str
    at_position: int
    as_of: str | None
    credited: int
    spent: int
    tokens: int
    credits: list[CreditAsOf]


async def cutoff(conn: Conn, at_position: int | None, as_of: datetime | None) -> int:
    """The effective position: the smaller of ``at_position`` and the position of the last
    event received at or before ``as_of`` (the head when neither is given)."""
    limit: int = await conn.fetchval("SELECT coalesce(max(position), 0) FROM audit_index")
    if at_position is not None:
        limit = min(limit, at_position)
    if as_of is not None:
        limit = min(limit, int(await conn.fetchval(SQL["asof_cutoff"], as_of) or 0))
    return limit


async def balance_as_of(
    conn: Conn, customer: str, position: int, catalogue: Catalogue, as_of: datetime | None
) -> BalanceAsOf:
    """``customer`` must be an address (``customers.normalize_email``: NotAnAddress if not)."""
    who = normalize_email(customer)
    rows = await conn.fetch(
        SQL["asof_balance_records"], who, position, SPENT_TOPIC, RECEIVED_TOPIC, _PAID_KINDS
    )
    credits: dict[str, tuple[uuid.UUID, int, str | None, str, int]] = {}
    spent = 0
    for r in rows:
        pos, event_id, topic, state = r[0], r[1], r[3], bytes(r[4])
        if topic == RECEIVED_TOPIC:
            delivery = decode_delivery(state)
            if delivery.provider != "mayar" or delivery.kind not in mayar.PAID_EVENTS:
                continue
            data = mayar.DECODER.decode(raw_body(delivery)).data
            credit = classify_payment(data, catalogue, str(event_id))
            if credit.tokens <= 0 or credit.customer is None or credit.package is None:
                continue
            seen = credits.get(credit.payment_key)
            if seen is None or event_id < seen[0]:
                row = (event_id, pos, credit.customer, credit.package, credit.tokens)
                credits[credit.payment_key] = row
        elif topic == SPENT_TOPIC:
            spend = decode_spend(state)
            if pg_text(spend.customer) == who:
                spent += spend.amount
    mine = [
        CreditAsOf(
            payment_key=key,
            event_id=str(eid),
            position=pos,
            package=package,
            tokens=tokens,
            raw=f"/v1/events/{eid}/raw",
        )
        for key, (eid, pos, owner, package, tokens) in sorted(credits.items())
        if owner == who
    ]
    credited = sum(c.tokens for c in mine)
    return BalanceAsOf(
        customer=who,
        at_position=position,
        as_of=as_of.isoformat() if as_of else None,
        credited=credited,
        spent=spent,
        tokens=credited - spent,
        credits=sorted(mine, key=lambda c: c.position),
    )


class SubscriptionAsOf(msgspec.Struct, kw_only=True):
    license_code: str
    status: str
    expiry: str | None
    last_position: int


class SubscriptionsAsOf(msgspec.Struct, kw_only=True):
    customer: str
    at_position: int
    evaluated_at: str
    items: list[SubscriptionAsOf]


async def subscriptions_as_of(
    conn: Conn, customer: str, position: int, at: datetime
) -> SubscriptionsAsOf:
    """The customer's subscriptions right after ``position``, their status evaluated at
    ``at``: the log prefix folded with the subscriptions projection's own rule
    (``ledger.payments.rules.SubscriptionRow``)."""
    who = normalize_email(customer)  # NotAnAddress if it is not an address
    rows: dict[str, SubscriptionRow] = {}
    for r in await conn.fetch(SQL["asof_subscription_records"], who, position):
        delivery = decode_delivery(bytes(r[4]))
        if not is_subscription_event(delivery.kind):
            continue
        hook = mayar.DECODER.decode(raw_body(delivery))
        fact = subscription_fact(hook.event, hook.data)
        if fact.kind is None or fact.customer != who:
            continue
        rows.setdefault(fact.license_code, SubscriptionRow()).add(fact, int(r[0]))
    items = [
        SubscriptionAsOf(
            license_code=code,
            status=subscription_status(row.expiry, row.cancelled, row.expired, at),
            expiry=None if row.expiry in (None, FOREVER) else row.expiry.isoformat(),
            last_position=row.position,
        )
        for code, row in sorted(rows.items())
    ]
    return SubscriptionsAsOf(
        customer=who, at_position=position, evaluated_at=at.isoformat(), items=items
    )


async def evaluation_time(
    conn: Conn, position: int, at_position: int | None, as_of: datetime | None
) -> datetime:
    """When to evaluate expiry: ``as_of`` if given; else the time the event at the cut-off
    was recorded (an as-of-position question); else now (the live answer)."""
    if as_of is not None:
        return as_of
    if at_position is not None:
        recorded: datetime | None = await conn.fetchval(SQL["asof_recorded_at"], position)
        if recorded is not None:
            return recorded
    return datetime.now(UTC)
