"""The outbox projection folds a batch in memory with a constant number of statements; its
result must be the one of folding the events one by one with a round trip each, as outbox
v2 did. ``PerRecord`` below is that v2 code, frozen (its SQL included); hypothesis draws
event sequences (registrations before and after payments, short, exact, over and
foreign-currency amounts, amounts spelled with an exponent, payments without an address,
uncredited Mayar payments, status-API answers, old news) and both fold them into real
PostgreSQL: the same order states and registrations (digest) and the same outbox rows
(ids, payloads).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.domain.events import (
    CHECKED_TOPIC,
    RECEIVED_TOPIC,
    RECONCILIATION_TOPIC,
    CheckedState,
    decode_checked,
    encode_checked,
)
from ledger.domain.orders import (
    REGISTERED_TOPIC,
    REGISTRATION_TOPIC,
    RegisteredState,
    decode_registered,
    encode_registered,
)
from ledger.ingest.providers import mayar
from ledger.outbox.effects import (
    NOT_SHOP_ORDERS,
    Message,
    OrderState,
    Registration,
    Where,
    _fact_encoder,
    amount,
    judged,
    on_registered,
)
from ledger.outbox.messages import (
    email_body,
    message_hex,
    message_id,
    partner_body,
    revalidate_body,
)
from ledger.outbox.reading import read
from ledger.payments.facts import PaymentFact, payment_fact
from ledger.payments.rules import Catalogue, classify_payment, delivery_head, raw_body
from ledger.projections.outbox import SQL, OutboxProjection, Targets, Unstorable, stored
from ledger.reconcile import answers
from ledger.store.eventstore import StoredRecord
from tests.support.db import signed
from tests.support.readmodels import delivery_state, digest, fold

TARGETS = Targets(
    partner_url="http://127.0.0.1:9/sync",
    email_from="shop@example.com",
    revalidate_url="http://127.0.0.1:9/revalidate",
    max_age=7 * 86400.0,
    catalogue=Catalogue.of({"silver": 5, "gold": 100}, None),
)
NOW = datetime.now(UTC)
_n = itertools.count()


# -- outbox v2, one round trip per event (frozen for comparison) ---------------------------

GET_ORDER = """
SELECT o.order_ref IS NOT NULL AS known, o.first_paid_position, o.partner_status,
       o.partner_paid_amount, o.paid_amount, o.email_owed, o.withheld,
       r.customer AS reg_customer, r.booking_id AS reg_booking_id, r.amount AS reg_amount,
       r.currency AS reg_currency
FROM (SELECT $1::text AS order_ref) AS k
LEFT JOIN orders AS o ON o.order_ref = k.order_ref
LEFT JOIN registrations AS r ON r.order_ref = k.order_ref"""
UPSERT_ORDER = """
INSERT INTO orders (order_ref, first_paid_position, partner_status, partner_paid_amount,
                    paid_amount, email_owed, withheld)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (order_ref) DO UPDATE
SET first_paid_position = EXCLUDED.first_paid_position,
    partner_status = EXCLUDED.partner_status,
    partner_paid_amount = EXCLUDED.partner_paid_amount,
    paid_amount = EXCLUDED.paid_amount,
    email_owed = EXCLUDED.email_owed, withheld = EXCLUDED.withheld"""
REGISTER = """
WITH kept AS (
    INSERT INTO registrations (order_ref, customer, booking_id, amount, currency)
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (order_ref) DO NOTHING
)
SELECT true AS known, first_paid_position, partner_status, partner_paid_amount, paid_amount,
       email_owed, withheld
FROM orders WHERE order_ref = $1 AND email_owed IS NOT NULL"""


def v2_on_paid(
    fact: PaymentFact, reg: Registration | None, state: OrderState, where: Where
) -> tuple[OrderState, list[Message]]:
    """``ledger.outbox.effects.on_paid`` of outbox v2, with ``dataclasses.replace``."""
    stated = amount(fact.paid_amount)
    paid = stated if state.paid is None else max(state.paid, stated or state.paid)
    status, check = judged(fact, reg, paid)
    state = replace(state, paid=paid)
    if status == "amount_mismatch":
        # More than expected, or another currency: a person must look (the order view reads
        # amount_mismatch). No "Payment received", no revalidation, no LUNAS.
        return replace(state, withheld=check), []
    state = replace(state, withheld=None)
    out: list[Message] = []
    if state.first_paid is None:
        state = replace(state, first_paid=fact.position)
        to = reg.customer if reg else fact.customer
        if to is None:
            state = replace(state, owed=_fact_encoder.encode(fact))
        elif where.email_from:
            out.append(("email", to, email_body(fact, to, where.email_from)))
        if where.revalidate_url and fact.provider not in NOT_SHOP_ORDERS:
            out.append(("revalidate", where.revalidate_url, revalidate_body(fact)))
    if where.partner_url and fact.provider in where.booking_providers:
        p_status = "LUNAS" if status == "paid" else "DP"
        p_paid = paid if paid is not None else Decimal(0)
        if (p_status, p_paid) != (state.partner_status, state.partner_paid):
            event = "booking.paid" if state.partner_status is None else "booking.updated"
            booking = (reg.booking_id if reg else None) or fact.order_id or ""
            body = partner_body(fact, event, p_status, booking, p_paid)
            out.append(("partner", where.partner_url, body))
            state = replace(state, partner_status=p_status, partner_paid=p_paid)
    return state, out


def _age(recorded_at: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(recorded_at)).total_seconds()


def v2_checked_fact(rec: StoredRecord) -> PaymentFact | None:
    st = decode_checked(rec.state)
    if st.reading != "paid":
        return None
    p = answers.payment(st.provider, st.order_id, base64.b64decode(st.body_b64))
    return PaymentFact(
        position=rec.position, event_id=str(rec.id), recorded_at=st.timestamp.isoformat(),
        provider=st.provider, kind="reconciliation", state="received", order_id=st.order_id,
        status="paid", amount=p.amount, paid_amount=p.paid_amount, currency=p.currency,
        customer=p.customer, payment_method=p.payment_method, invoice_id=p.invoice_id,
        payment_id=p.payment_id,
    )  # fmt: skip


def v2_credited(rec: StoredRecord, catalogue: Catalogue) -> bool:
    head = delivery_head(rec.state)
    if head.kind not in mayar.PAID_EVENTS:
        return False
    data = mayar.DECODER.decode(raw_body(head)).data
    return classify_payment(data, catalogue, str(rec.id)).tokens > 0


def v2_paid(rec: StoredRecord, catalogue: Catalogue) -> PaymentFact | None:
    """Outbox v2's reading of an event: ``payment_fact`` of the whole delivery."""
    if rec.topic == CHECKED_TOPIC:
        return v2_checked_fact(rec)
    fact = payment_fact(rec)
    if fact is None or fact.state != "received" or fact.status != "paid":
        return None
    if not fact.order_id:
        return None
    if fact.provider == "mayar" and not v2_credited(rec, catalogue):
        return None
    return fact


def _v2_state(row: Any) -> OrderState:
    if row is None or not row["known"]:
        return OrderState()
    return OrderState(
        row["first_paid_position"],
        row["partner_status"],
        row["partner_paid_amount"],
        row["paid_amount"],
        row["email_owed"],
        row["withheld"],
    )


class PerRecord(OutboxProjection):
    """Outbox v2's ``apply``: a get (or register) and an upsert per event."""

    async def apply(self, conn: Any, records: Sequence[StoredRecord]) -> None:
        where, rows = self.targets.where, []
        for rec in records:
            if rec.topic == REGISTERED_TOPIC:
                s = decode_registered(rec.state)
                ref = f"{s.provider}:{s.order_id}"
                reg = Registration(s.customer, s.booking_id, s.amount, s.currency)
                row = await conn.fetchrow(REGISTER, ref, *vars_of(reg))
                if row is None:
                    continue
                state, out = on_registered(reg, _v2_state(row), where)
                at, customer = s.timestamp.isoformat(), reg.customer
            else:
                fact = v2_paid(rec, self.targets.catalogue)
                if fact is None:
                    continue
                ref = f"{fact.provider}:{fact.order_id}"
                row = await conn.fetchrow(GET_ORDER, ref)
                known = None
                if row["reg_customer"] is not None:
                    known = Registration(
                        row["reg_customer"], row["reg_booking_id"], row["reg_amount"],
                        row["reg_currency"],
                    )  # fmt: skip
                state, out = v2_on_paid(fact, known, _v2_state(row), where)
                at, customer = fact.recorded_at, known.customer if known else fact.customer
            await conn.execute(
                UPSERT_ORDER, ref, state.first_paid, state.partner_status, state.partner_paid,
                state.paid, state.owed, state.withheld,
            )  # fmt: skip
            if self.targets.max_age and _age(at) > self.targets.max_age:
                continue
            for kind, target, payload in out:
                mid = message_id(str(rec.id), kind, target)
                rows.append((mid, kind, target, rec.id, rec.position, ref, customer, payload))
        if rows:
            await conn.execute(SQL["insert_messages"], *(list(c) for c in zip(*rows, strict=True)))


def vars_of(reg: Registration) -> tuple[Any, ...]:
    return reg.customer, reg.booking_id, reg.amount, reg.currency


# -- events --------------------------------------------------------------------------------

ORDERS = ["A", "B"]
CUSTOMERS = ["ana@x.com", "bo@x.com", None]
AMOUNTS = ["100000", "40000", "150000", "1E+5", "60000.50", "0"]


def record(topic: str, state: bytes) -> StoredRecord:
    return StoredRecord(0, uuid.uuid4(), 1, topic, state)


def event(spec: tuple[Any, ...]) -> StoredRecord:
    kind, order, customer, amount, old = spec
    at = NOW - timedelta(days=30 if old else 0, seconds=next(_n))
    if kind == "register":
        state = RegisteredState(
            originator_topic=REGISTRATION_TOPIC, timestamp=at, provider=order[0],
            order_id=order[1], customer=customer or "reg@x.com", amount=amount.replace("E+5", "00000"),
            currency="USD" if amount == "0" else "IDR", booking_id=None if old else f"BK-{order[1]}",
        )  # fmt: skip
        return record(REGISTERED_TOPIC, encode_registered(state))
    if kind == "answer":
        body = signed("midtrans", "settlement", order_id=order[1], amount="100000.00").body
        state = CheckedState(
            originator_topic=RECONCILIATION_TOPIC, timestamp=at, provider="midtrans",
            order_id=order[1], check_id=str(next(_n)), http_status=200,
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_b64=base64.b64encode(body).decode(), reading="paid",
        )  # fmt: skip
        return record(CHECKED_TOPIC, encode_checked(state))
    provider = order[0]
    paid = kind == "paid"
    if provider == "xendit":
        inv: dict[str, Any] = {"id": uuid.uuid4().hex[:24], "external_id": order[1],
               "status": "PAID" if paid else "PENDING", "amount": 100000,
               "currency": "USD" if amount == "0" else "IDR"}  # fmt: skip
        if customer:
            inv["payer_email"] = customer
        raw = json.dumps(inv).encode()
        if paid:  # a JSON number as the provider spelled it (1E+5, 60000.50)
            raw = raw[:-1] + f', "paid_amount": {amount}}}'.encode()
    elif provider == "midtrans":
        gross = f"{Decimal(amount):.2f}"
        kw = {"customer": customer} if customer else {}
        status = "settlement" if paid else "pending"
        raw = signed("midtrans", status, order_id=order[1], amount=gross, **kw).body
    else:  # mayar: credited (silver) or not (an unknown package, no customer)
        package = "silver" if amount != "0" else "tin"
        hook = json.loads(signed("mayar", f"payment.{'success' if paid else 'pending'}",
                                 package=package).body)  # fmt: skip
        hook["data"]["id"] = order[1]
        hook["data"]["customerEmail"] = customer
        raw = json.dumps(hook).encode()
    state = delivery_state(provider, str(uuid.uuid4()), kind, raw, timestamp=at)
    return record(RECEIVED_TOPIC, state)


refs = st.tuples(st.sampled_from(["xendit", "midtrans", "mayar"]), st.sampled_from(ORDERS))
specs = st.lists(
    st.tuples(
        st.sampled_from(["register", "answer", "paid", "paid", "pending"]),
        refs,
        st.sampled_from(CUSTOMERS),
        st.sampled_from(AMOUNTS),
        st.sampled_from([False, False, False, True]),  # old news
    ).map(lambda s: s if s[0] != "answer" else (s[0], ("midtrans", s[1][1]), *s[2:])),
    min_size=1,
    max_size=30,
)


async def folded(
    conn: asyncpg.Connection, proj: OutboxProjection, records: list[StoredRecord], batch: int
) -> tuple[str, list[tuple[Any, ...]]]:
    """Fold into a scratch schema inside a transaction that is rolled back (the outbox
    table is shared): the digest and the outbox rows."""
    tr = conn.transaction()
    await tr.start()
    try:
        name = f"t_outbox_{uuid.uuid4().hex[:10]}"
        await fold(conn, proj, records, name, batch=batch)
        rows = await conn.fetch(
            "SELECT id, kind, target, source_event_id, source_position, order_ref, customer,"
            " payload FROM public.outbox ORDER BY id"
        )
        return await digest(conn, proj, name), [tuple(r) for r in rows]
    finally:
        await tr.rollback()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=specs, batch=st.integers(1, 12), chunk=st.integers(1, 6))
async def test_a_batch_folds_as_one_event_at_a_time(database_url, spec, batch, chunk):
    """``chunk``: a batch is folded in steps of that many items (512 in production), each
    step's messages inserted while the next one is folded."""
    records = [event(s) for s in spec]
    records = [StoredRecord(p, r.id, 1, r.topic, r.state) for p, r in enumerate(records, 1)]
    proj = OutboxProjection(TARGETS)
    proj.chunk = chunk
    conn = await asyncpg.connect(database_url)
    try:
        want = await folded(conn, PerRecord(TARGETS), records, 1)
        got = await folded(conn, proj, records, batch)
    finally:
        await conn.close()
    assert got == want
    print("CMP", len(want[1]), sorted({r[1] for r in want[1]}))


# -- reading: ``ledger.outbox.reading`` against v2's ``payment_fact`` of the whole state -------

PROVIDER_EVENTS = {
    "midtrans": ["settlement", "capture", "pending", "expire", "deny", "refund"],
    "xendit": ["PAID", "SETTLED", "PENDING", "EXPIRED"],
    "mayar": ["payment.success", "payment.received", "payment.pending",
              "subscription.activated", "membership.renewed"],
    "partner": ["booking.paid", "booking.updated", "booking.cancelled"],
}  # fmt: skip


def mangled(body: bytes, how: str) -> bytes:
    """A body a provider's decoder may refuse, as old or odd deliveries in the log are."""
    if how == "truncated":
        return body[: len(body) // 2]
    if how == "not json":
        return b"not json"
    if how == "wrong type":  # a field read as text sent as a number, or the reverse
        doc = json.loads(body)
        target = doc.get("data", doc)
        for k in ("order_id", "external_id", "booking_id", "amount", "gross_amount"):
            if k in target:
                target[k] = 12 if isinstance(target[k], str) else "12"
        return json.dumps(doc).encode()
    if how == "nul":
        return body.replace(b'"IDR"', b'"I\\u0000DR"')
    return body


deliveries = st.tuples(
    st.sampled_from(sorted(PROVIDER_EVENTS)).flatmap(
        lambda p: st.tuples(st.just(p), st.sampled_from(PROVIDER_EVENTS[p]))
    ),
    st.sampled_from(["ana@x.com", "  ", "not an address", None]),
    st.sampled_from(["silver", "gold", "tin", None]),
    st.sampled_from(["as sent", "as sent", "truncated", "not json", "wrong type", "nul"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(deliveries, min_size=1, max_size=20))
def test_reading_says_what_the_whole_state_says(specs):
    """Every provider, paid or not, credited or not, bodies a decoder refuses: the items
    ``read`` gives are v2's, the facts byte for byte (they are encoded into owed e-mails)."""
    records = []
    for position, ((provider, kind), customer, package, how) in enumerate(specs, 1):
        kw = {k: v for k, v in (("customer", customer), ("package", package)) if v}
        if provider != "mayar":
            kw.pop("package", None)
        try:
            body = signed(provider, kind, **kw).body
        except Exception:  # an event samples.build does not make (Midtrans deny, ...)
            body = signed(provider, PROVIDER_EVENTS[provider][0], **kw).body
        state = delivery_state(provider, str(uuid.uuid4()), kind, mangled(body, how))
        records.append(StoredRecord(position, uuid.uuid4(), 1, RECEIVED_TOPIC, state))
    want = []
    for rec in records:
        fact = v2_paid(rec, TARGETS.catalogue)
        if fact is not None:
            want.append((rec, f"{fact.provider}:{fact.order_id}", _fact_encoder.encode(fact)))
    got = [
        (rec, ref, _fact_encoder.encode(what))
        for rec, ref, what, _ in read(records, TARGETS.catalogue)
    ]
    assert got == want


def test_message_hex_is_the_message_id():
    for source, kind, target in [
        (str(uuid.uuid4()), "email", "ana@x.com"),
        (str(uuid.uuid4()), "partner", "http://127.0.0.1:9/sync"),
        ("", "revalidate", "\u00e9\u4e2d\U0001f600"),
    ]:
        assert message_hex(source, kind, target) == message_id(source, kind, target).hex


EDGES = ["1E+5", "100000", "-100000", "120000", "1E+8", "10", "-0", "-0.00", "0E+3", "12.3400",
         "0.00010000", "1E-16383", "NaN", "sNaN", "Infinity", "-Infinity"]  # fmt: skip


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.sampled_from([Decimal(e) for e in EDGES])
        | st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
            lambda d: -40 < d.as_tuple().exponent < 40  # type: ignore[operator]
        ),
        min_size=1,
        max_size=50,
    )
)
async def test_stored_reads_what_a_numeric_column_gives_back(database_url, values):
    conn = await asyncpg.connect(database_url)
    try:
        back = await conn.fetchval(
            "SELECT array_agg(x ORDER BY n) FROM unnest($1::numeric[]) WITH ORDINALITY AS t (x, n)",
            values,
        )
    finally:
        await conn.close()
    assert [(str(stored(d)), str(b)) for d, b in zip(values, back, strict=True)] == [
        (str(b), str(b)) for b in back
    ]


async def test_a_failing_step_leaves_the_connection_usable(database_url):
    """An event that cannot be folded (an amount out of numeric's range) while the previous
    step's messages are being inserted: ``apply`` raises the event's fault, after the insert
    has finished, so the runner can roll back on the same connection."""
    good = event(("paid", ("xendit", "A"), "ana@x.com", "100000", False))
    bad = event(("paid", ("midtrans", "B"), "bo@x.com", "1E+140000", False))
    records = [StoredRecord(p, r.id, 1, r.topic, r.state) for p, r in enumerate([good, bad], 1)]
    proj = OutboxProjection(TARGETS)
    proj.chunk = 1
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(Unstorable):
            await folded(conn, proj, records, 2)
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
