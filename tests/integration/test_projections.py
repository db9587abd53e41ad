"""The read models folded straight through the projection contract, on real deliveries.

Deliveries are signed and ingested through the real app (``client``); the records are read
back from the real log and folded into a fresh schema per projection, as the runner does
(``search_path`` set to the schema, ``schema_sql``, then ``apply`` in a transaction).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from ledger.api.orders import history_entry
from ledger.domain.events import (
    RECEIVED_TOPIC,
    delivery_id,
)
from ledger.payments import orderstatus
from ledger.payments.rules import Catalogue, subscription_status
from ledger.projections.orders import Orders
from ledger.projections.review import Review
from ledger.projections.subscriptions import Subscriptions
from ledger.projections.token_balances import TokenBalances
from ledger.store.eventstore import EventStore, NewEvent
from tests.support import signed
from tests.support.db import connection, post_unusable_xendit
from tests.support.readmodels import (
    delivery_state,
    digest,
    fold,
    mayar_body,
    post,
    post_mayar,
    query,
    read_log,
    spend_event,
)


async def test_token_balances_credit_catalogue_and_spends(client, database_url):
    await post(client, "mayar", "payment.success", customer=" Ana@Example.com ", package="silver")
    await post_mayar(
        client, "payment.received", id="p-2", customerEmail="ana@example.com", package="GOLD"
    )
    # The same payment announced by both events is one credit.
    await post_mayar(
        client, "payment.success", id="p-2", customerEmail="ana@example.com", package="gold"
    )
    await post_mayar(
        client,
        "payment.success",
        id="p-3",
        customer={"email": "bo@example.com"},
        membershipTierName="Silver",
    )
    await post_mayar(client, "payment.success", id="p-4", customerEmail="bo@x.com", package="plat")
    await post_mayar(client, "payment.success", id="p-5", package="silver")  # no customer
    await post_mayar(client, "payment.pending", id="p-6", customerEmail="bo@x.com", package="gold")
    await post(client, "midtrans", "settlement", customer="ana@example.com")
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await EventStore(pool).append_many([spend_event("ana@example.com", 3, "k1", 102)])
    finally:
        await pool.close()

    records = await read_log(database_url)
    async with connection(database_url) as conn:
        proj = TokenBalances()
        await fold(conn, proj, records, "t_tokens")
        rows = await query(
            conn, "t_tokens", "SELECT customer, credited, spent FROM accounts ORDER BY customer"
        )
        assert [tuple(r) for r in rows] == [
            ("ana@example.com", 105, 3),
            ("bo@example.com", 5, 0),
        ]
        spends = await query(conn, "t_tokens", "SELECT amount, balance_after FROM spends")
        assert [tuple(r) for r in spends] == [(3, 102)]
        # One event per batch gives the same state as one batch.
        await fold(conn, proj, records, "t_tokens_1", batch=1)
        assert await digest(conn, proj, "t_tokens_1") == await digest(conn, proj, "t_tokens")
        # The unknown package and the missing customer are in the review queue instead.
        review = Review()
        await fold(conn, review, records, "t_review")
        reasons = await query(conn, "t_review", "SELECT reason, detail FROM review_items")
        assert sorted(r["reason"] for r in reasons) == [
            "unknown-customer",
            "unknown-package",
        ]
        assert any("'plat'" in r["detail"] for r in reasons)


async def test_configured_prices_flag_a_wrong_amount(client, database_url):
    await post_mayar(
        client, "payment.success", id="ok", customerEmail="c@x.com", package="silver", amount=50000
    )
    await post_mayar(
        client, "payment.success", id="bad", customerEmail="c@x.com", package="silver", amount=1
    )
    catalogue = Catalogue.of({"silver": 5, "gold": 100}, {"silver": 50000})
    records = await read_log(database_url)
    async with connection(database_url) as conn:
        await fold(conn, TokenBalances(catalogue), records, "t_priced")
        rows = await query(conn, "t_priced", "SELECT credited FROM accounts")
        assert [r["credited"] for r in rows] == [5]
        await fold(conn, Review(catalogue), records, "t_priced_review")
        flagged = await query(conn, "t_priced_review", "SELECT reason, detail FROM review_items")
        assert [r["reason"] for r in flagged] == ["amount-mismatch"]
        assert "data.amount 1 differs" in flagged[0]["detail"]
        assert "50000" in flagged[0]["detail"]
        # Without prices the same deliveries credit twice.
        await fold(conn, TokenBalances(), records, "t_unpriced")
        rows = await query(conn, "t_unpriced", "SELECT credited FROM accounts")
        assert [r["credited"] for r in rows] == [10]


async def test_subscriptions_fold_and_expire_at_query_time(client, database_url):
    future = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    later = (datetime.now(UTC) + timedelta(days=60)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    past = "2020-01-01T00:00:00.000Z"
    deliveries = [
        ("subscription.activated", "s1", "L1", future),
        ("subscription.cancelled", "s2", "L1", future),
        ("subscription.renewed", "s3", "L2", future),
        ("subscription.renewed", "s4", "L2", later),
        ("subscription.cancelled", "s5", "L2", future),
        ("membership.activated", "s6", "L3", past),
        ("subscription.activated", "s7", "L4", future),
        ("subscription.expired", "s8", "L4", None),
        ("subscription.activated", "s9", "L5", "soon"),
    ]
    for event, id_, license_code, expired_at in deliveries:
        data = {"id": id_, "licenseCode": license_code}
        if expired_at is not None:
            data["expiredAt"] = expired_at
        await post_mayar(client, event, **data, customerEmail="Sub@X.com")
    records = await read_log(database_url)
    async with connection(database_url) as conn:
        proj = Subscriptions()
        await fold(conn, proj, records, "t_subs")
        rows = await query(
            conn,
            "t_subs",
            "SELECT * FROM subscriptions WHERE customer = 'sub@x.com' ORDER BY license_code",
        )
        now = datetime.now(UTC)
        status = {
            r["license_code"]: subscription_status(
                r["expiry"], r["cancelled_through"], r["expired_through"], now
            )
            for r in rows
        }
        # L1 cancelled (still has access until the expiry); L2 renewed past its cancelled
        # period; L3 ran out with no event; L4 ended by an expired event; L5 unreadable.
        assert status == {"L1": "cancelled", "L2": "active", "L3": "expired", "L4": "expired"}
        # Reversed arrival gives the same rows.
        await fold(conn, proj, list(reversed(records)), "t_subs_rev", batch=1)
        assert await digest(conn, proj, "t_subs_rev") == await digest(conn, proj, "t_subs")
        await fold(conn, Review(), records, "t_subs_review")
        flagged = await query(conn, "t_subs_review", "SELECT reason FROM review_items")
        assert [r["reason"] for r in flagged] == ["invalid-expiry"]


async def test_orders_precedence_history_and_late_notifications(client, database_url):
    await post(client, "midtrans", "pending", order_id="INV-1", transaction_id="t1")
    await post(client, "midtrans", "settlement", order_id="INV-1", transaction_id="t1")
    await post(client, "midtrans", "expire", order_id="INV-1", transaction_id="t1")
    await post(client, "midtrans", "capture", order_id="INV-2", fraud_status="challenge")
    await post(client, "xendit", "PAID", order_id="BOOK-1", amount="32000")
    await post(client, "xendit", "PENDING", order_id="BOOK-1", amount="32000")
    await post(client, "partner", "booking.paid", order_id="b-1")
    records = await read_log(database_url)
    async with connection(database_url) as conn:
        proj = Orders()
        await fold(conn, proj, records, "t_orders")
        rows = await query(conn, "t_orders", "SELECT * FROM order_history ORDER BY position")
        histories: dict[tuple[str, str], list[orderstatus.Entry]] = {}
        for r in rows:
            histories.setdefault((r["provider"], r["order_id"]), []).append(history_entry(r))
        orders = {k: orderstatus.decide(v) for k, v in histories.items()}
        assert orders["midtrans", "INV-1"].status == "paid"
        assert orders["midtrans", "INV-1"].amount == "299000.00"
        assert orders["midtrans", "INV-1"].payment_method == "bank_transfer"
        assert orders["midtrans", "INV-2"].status == "pending"
        assert orders["xendit", "BOOK-1"].status == "paid"
        assert orders["xendit", "BOOK-1"].payment_method == "QRIS"
        assert orders["partner", "b-1"].status == "paid"
        history = await query(
            conn,
            "t_orders",
            "SELECT * FROM order_history WHERE order_id = 'INV-1' ORDER BY position",
        )
        assert [h["provider_status"] for h in history] == ["pending", "settlement", "expire"]
        entries = [
            orderstatus.Entry(h["position"], str(h["event_id"]), h["provider_status"], h["status"])
            for h in history
        ]
        assert orderstatus.late_flags(entries) == [False, False, True]
        await fold(conn, proj, list(reversed(records)), "t_orders_rev", batch=2)
        assert await digest(conn, proj, "t_orders_rev") == await digest(conn, proj, "t_orders")


async def test_review_lists_quarantined_and_conflicted(client, database_url):
    await post_unusable_xendit(client)
    await post_mayar(client, "payment.success", id="dup", customerEmail="a@x.com", package="silver")
    ack = await post_mayar(
        client, "payment.success", id="dup", customerEmail="a@x.com", package="gold"
    )
    assert ack["flag"] == "dedup-conflict"
    records = await read_log(database_url)
    async with connection(database_url) as conn:
        await fold(conn, Review(), records, "t_rev")
        rows = await query(conn, "t_rev", "SELECT * FROM review_items ORDER BY position")
        assert [(r["reason"], r["provider"]) for r in rows] == [
            ("quarantined", "xendit"),
            ("dedup-conflict", "mayar"),
        ]
        assert "external_id" in rows[0]["detail"]
        assert rows[1]["event_id"] == uuid.UUID(ack["event_id"])
        # The conflicting body credited nothing: silver only.
        await fold(conn, TokenBalances(), records, "t_rev_tokens")
        credited = await query(conn, "t_rev_tokens", "SELECT credited FROM accounts")
        assert [r["credited"] for r in credited] == [5]


def recorded_before_0009(provider: str, kind: str, key: str, body: bytes) -> NewEvent:
    """A Received event as the log may hold it from before ingest refused unsafe text
    (ADR 0009 addendum): today such a body is quarantined, so it is written directly."""
    state = delivery_state(provider, key, kind, body, headers={})
    return NewEvent(delivery_id(key), RECEIVED_TOPIC, state)


async def test_nul_characters_from_a_provider_never_stop_a_projection(client, database_url):
    """PostgreSQL text cannot hold NUL: it is stored as U+FFFD instead of failing the fold,
    and a customer with one is no customer (flagged for review, never credited)."""
    nul = "\x00"
    midtrans = json.loads(signed("midtrans", "settlement", order_id="INV-N").body)
    midtrans["order_id"] = f"INV{nul}N"
    old = [
        (
            "mayar",
            "payment.success",
            "n1",
            mayar_body(
                "payment.success", id=f"n{nul}1", customerEmail=f"nul{nul}@x.com", package="silver"
            ),
        ),
        (
            "mayar",
            "payment.success",
            "n2",
            mayar_body("payment.success", id="n2", customerEmail="z@x.com", package=f"gold{nul}"),
        ),
        (
            "mayar",
            "subscription.activated",
            "n3",
            mayar_body(
                "subscription.activated",
                id="n3",
                customerEmail="sub@x.com",
                licenseCode=f"L{nul}",
                expiredAt="9999-12-31T23:59:59.999999Z",
            ),
        ),
        ("midtrans", "settlement", "n4", json.dumps(midtrans).encode()),
    ]
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await EventStore(pool).append_many(
            [recorded_before_0009(p, k, f"{p}:{key}", b) for p, k, key, b in old]
        )
    finally:
        await pool.close()
    records = await read_log(database_url)
    async with connection(database_url) as conn:
        for proj in (TokenBalances(), Subscriptions(), Orders(), Review()):
            await fold(conn, proj, records, f"t_nul_{proj.name}")
        accounts = await query(conn, "t_nul_token_balances", "SELECT customer FROM accounts")
        assert accounts == []
        subs = await query(conn, "t_nul_subscriptions", "SELECT * FROM subscriptions")
        assert subs[0]["license_code"] == "L\ufffd"
        now = datetime.now(UTC)
        assert subscription_status(subs[0]["expiry"], None, None, now) == "active"
        orders = await query(conn, "t_nul_orders", "SELECT order_id FROM order_history")
        assert [r["order_id"] for r in orders] == ["INV\ufffdN"]
        review = await query(
            conn, "t_nul_review", "SELECT reason, detail FROM review_items ORDER BY position"
        )
        assert [r["reason"] for r in review] == ["unknown-customer", "unknown-package"]
