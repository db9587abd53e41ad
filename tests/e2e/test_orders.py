"""Orders, subscriptions and the review queue over HTTP, fed by signed webhooks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support import bearer, make_key, signed, until
from tests.support.db import post_unusable_xendit
from tests.support.readmodels import post_position

MAYAR = {"content-type": "application/json", "x-callback-token": "test-mayar-token"}


async def post_mayar(client: Any, event: str, **data: Any) -> Any:
    body = json.dumps({"event": event, "data": data}).encode()
    return await client.post("/webhooks/mayar", content=body, headers=MAYAR)


async def test_order_reads_paid_whatever_the_arrival_order(client, database_url):
    key = await make_key(database_url, "audit:read")
    await post_position(client, "midtrans", "settlement", order_id="INV-7", transaction_id="t7")
    last = await post_position(client, "midtrans", "pending", order_id="INV-7", transaction_id="t7")
    r = await client.get(f"/v1/orders/midtrans/INV-7?min_position={last}", headers=bearer(key))
    assert r.status_code == 200, r.text
    o = r.json()
    assert (o["status"], o["amount"], o["currency"], o["payment_method"]) == (
        "paid",
        "299000.00",
        "IDR",
        "bank_transfer",
    )
    assert [(h["provider_status"], h["status"], h["late"]) for h in o["history"]] == [
        ("settlement", "paid", False),
        ("pending", "pending", True),
    ]
    assert o["history"][1]["position"] == last
    link = o["history"][0]["link"]
    assert (await client.get(link, headers=bearer(key))).status_code == 200
    # A Midtrans refund is held until Midtrans' status API confirms it (ADR 0016): its
    # signature does not cover the status, so it could be a replayed settlement.
    last = await post_position(client, "midtrans", "refund", order_id="INV-7", transaction_id="t7")
    o = (
        await client.get(f"/v1/orders/midtrans/INV-7?min_position={last}", headers=bearer(key))
    ).json()
    assert o["status"] == "paid"
    assert [(h["status"], h["confirmation"]) for h in o["history"]][-1] == ("refunded", "held")


async def test_xendit_and_partner_orders(client, database_url):
    key = await make_key(database_url, "audit:read")
    await post_position(client, "xendit", "PENDING", order_id="BK-1", amount="45000")
    last = await post_position(client, "xendit", "PAID", order_id="BK-1", amount="45000")
    o = (
        await client.get(f"/v1/orders/xendit/BK-1?min_position={last}", headers=bearer(key))
    ).json()
    assert (o["status"], o["amount"], o["payment_method"]) == ("paid", "45000", "QRIS")
    assert [h["late"] for h in o["history"]] == [False, False]
    last = await post_position(client, "partner", "booking.paid", order_id="b-9", amount="32000")
    o = (
        await client.get(f"/v1/orders/partner/b-9?min_position={last}", headers=bearer(key))
    ).json()
    assert (o["status"], o["amount"]) == ("paid", "32000")


async def test_xendit_order_is_found_by_invoice_id_too(client, database_url):
    """Issue 9 papercut: Xendit names an invoice by its own ``id`` and our ``external_id``;
    an operator holding either finds the order."""
    key = await make_key(database_url, "audit:read")
    d = signed("xendit", "PAID", order_id="BK-77", amount="45000")
    invoice = json.loads(d.body)["id"]
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    last = r.json()["position"]
    by_external = await client.get(
        f"/v1/orders/xendit/BK-77?min_position={last}", headers=bearer(key)
    )
    assert by_external.status_code == 200, by_external.text
    by_invoice = await client.get(
        f"/v1/orders/xendit/{invoice}?min_position={last}", headers=bearer(key)
    )
    assert by_invoice.status_code == 200, by_invoice.text
    assert by_invoice.json() == by_external.json()
    assert by_invoice.json()["order_id"] == "BK-77"


async def test_unknown_orders_and_scopes(client, database_url):
    key = await make_key(database_url, "audit:read")
    writer = await make_key(database_url, "tokens:write")
    r = await client.get("/v1/orders/midtrans/NOPE", headers=bearer(key))
    assert r.status_code == 404
    assert r.json()["type"] == "/problems/order-not-found"
    r = await client.get("/v1/orders/paypal/X", headers=bearer(key))
    assert r.status_code == 404
    assert "paypal" in r.json()["detail"]
    assert (await client.get("/v1/orders/midtrans/X", headers=bearer(writer))).status_code == 403
    assert (await client.get("/v1/review", headers=bearer(writer))).status_code == 403
    assert (await client.get("/v1/subscriptions/a@b.c")).status_code == 401


async def test_subscription_active_then_expired_by_its_date(client, database_url):
    key = await make_key(database_url, "tokens:write")
    future = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    soon = datetime.now(UTC) + timedelta(seconds=3)
    who = {"customerEmail": "Member@Example.com"}
    await post_mayar(
        client, "subscription.activated", id="a", licenseCode="L-1", expiredAt=future, **who
    )
    r = await post_mayar(
        client,
        "subscription.activated",
        id="b",
        licenseCode="L-2",
        expiredAt=soon.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        **who,
    )
    last = r.json()["position"]
    s = (
        await client.get(
            f"/v1/subscriptions/member@example.com?min_position={last}", headers=bearer(key)
        )
    ).json()
    # The status is decided at ``as_of``: L-2 is active before its expiry (a slow machine
    # may already be past it; then it must be expired: the rule, not the speed, is tested).
    before = datetime.fromisoformat(s["as_of"]) < soon
    assert [(i["license_code"], i["status"], i["access"]) for i in s["items"]] == [
        ("L-1", "active", True),
        ("L-2", "active", True) if before else ("L-2", "expired", False),
    ]
    assert s["items"][0]["expiry"].startswith(future[:19])

    # No event arrives; the clock alone expires L-2.
    async def expired() -> dict[str, Any] | None:
        r = await client.get("/v1/subscriptions/member@example.com", headers=bearer(key))
        found: dict[str, Any] = r.json()
        return found if datetime.fromisoformat(found["as_of"]) > soon else None

    s = await until(expired, every=0.2, what="a status decided after L-2's expiry")
    assert [(i["license_code"], i["status"], i["access"]) for i in s["items"]] == [
        ("L-1", "active", True),
        ("L-2", "expired", False),
    ]
    r = await post_mayar(
        client, "subscription.cancelled", id="c", licenseCode="L-1", expiredAt=future, **who
    )
    s = (
        await client.get(
            f"/v1/subscriptions/member@example.com?min_position={r.json()['position']}",
            headers=bearer(key),
        )
    ).json()
    assert (s["items"][0]["status"], s["items"][0]["access"]) == ("cancelled", True)
    none = (await client.get("/v1/subscriptions/nobody@example.com", headers=bearer(key))).json()
    assert none["items"] == []


async def test_review_queue_lists_what_needs_a_person(client, database_url):
    key = await make_key(database_url, "audit:read")
    bad = await post_unusable_xendit(client)
    await post_mayar(client, "payment.success", id="p1", customerEmail="a@x.com", package="diamond")
    await post_mayar(client, "payment.success", id="p2", package="silver")
    await post_mayar(client, "payment.success", id="p3", customerEmail="a@x.com", package="silver")
    c = await post_mayar(
        client, "payment.success", id="p3", customerEmail="a@x.com", package="gold"
    )
    assert c.json()["flag"] == "dedup-conflict"
    last = c.json()["position"]
    page = (await client.get(f"/v1/review?min_position={last}", headers=bearer(key))).json()
    assert [i["reason"] for i in page["items"]] == [
        "quarantined",
        "unknown-package",
        "unknown-customer",
        "dedup-conflict",
    ]
    assert page["items"][0]["event_id"] == bad.json()["event_id"]
    assert "'diamond'" in page["items"][1]["detail"]
    for item in page["items"]:
        assert item["link"] == f"/v1/events/{item['event_id']}"
        assert (await client.get(item["link"], headers=bearer(key))).status_code == 200
    small = (await client.get("/v1/review?limit=2", headers=bearer(key))).json()
    assert len(small["items"]) == 2
    assert small["has_more"] is True
    rest = (await client.get(f"/v1/review?after={small['next_after']}", headers=bearer(key))).json()
    assert [i["reason"] for i in rest["items"]] == ["unknown-customer", "dedup-conflict"]
    only = (await client.get("/v1/review?reason=dedup-conflict", headers=bearer(key))).json()
    assert [i["reason"] for i in only["items"]] == ["dedup-conflict"]
    # The unknown package credited nothing, the good silver did.
    a = (await client.get(f"/v1/accounts/a@x.com?min_position={last}", headers=bearer(key))).json()
    assert a["tokens"] == 5


async def test_rebuilding_each_read_model_reproduces_its_digest(client, database_url):
    """Blue/green rebuild from position 0 with unchanged code matches the live digest."""
    admin = await make_key(database_url, "ops:admin")
    writer = await make_key(database_url, "tokens:write")
    await post_position(client, "mayar", "payment.success", customer="r@x.com", package="gold")
    await post_mayar(client, "payment.success", id="u", customerEmail="r@x.com", package="zinc")
    await post_mayar(
        client, "subscription.activated", id="s", customerEmail="r@x.com", licenseCode="L"
    )
    await post_position(client, "midtrans", "settlement", order_id="INV-R", transaction_id="tr")
    await post_position(client, "midtrans", "pending", order_id="INV-R", transaction_id="tr")
    await post_position(client, "xendit", "PAID", order_id="BK-R")
    r = await client.post(
        "/v1/accounts/r@x.com/spend",
        json={"amount": 40, "idempotency_key": "r1"},
        headers=bearer(writer),
    )
    assert r.status_code == 201, r.text
    head = r.json()["position"]
    names = ("token_balances", "subscriptions", "orders", "review")

    async def one(name: str) -> dict[str, Any]:
        resp = await client.get(f"/v1/projections/{name}?digest=true", headers=bearer(admin))
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    async def caught_up() -> bool:
        positions = [(await one(n))["position"] for n in names]
        return all(p >= head for p in positions)

    await until(caught_up)
    live = {n: (await one(n))["digest"] for n in names}
    for n in names:
        started = await client.post(
            f"/v1/projections/{n}/rebuild",
            headers={**bearer(admin), "x-ledger-reason": "test rebuild"},
        )
        assert started.status_code == 202, started.text

    async def switched() -> bool:
        items = [await one(n) for n in names]
        return all(i["live_generation"] == 2 and i["building_generation"] is None for i in items)

    await until(switched)
    assert {n: (await one(n))["digest"] for n in names} == live
    # And the rebuilt generation still answers.
    a = (await client.get("/v1/accounts/r@x.com", headers=bearer(writer))).json()
    assert (a["tokens"], a["credited"], a["spent"]) == (60, 100, 40)
