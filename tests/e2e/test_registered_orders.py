"""Registered orders (issue 10, ADR 0016): ``PUT /v1/orders/{provider}/{order_id}`` records
who ordered what and how much is expected; the order view shows it beside what providers
said, and a paid amount different from the registered one is never plain ``paid``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ledger.ingest.providers.base import hmac_sha256_hex
from tests.support import bearer, make_key, signed
from tests.support.db import fetch
from tests.support.db import test_settings as known_settings

TERMS = {"customer": "Budi@Example.com", "amount": "100000.00", "currency": "IDR"}


async def put(client: Any, key: str, path: str, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.put(
        f"/v1/orders/{path}",
        content=raw,
        headers={**bearer(key), "content-type": "application/json"},
    )


async def deliver(client: Any, provider: str, event: str, edit: Any = None, **kw: str) -> int:
    d = signed(provider, event, **kw)
    body = d.body
    if edit is not None:
        obj = json.loads(body)
        edit(obj)
        body = json.dumps(obj).encode()
    headers = dict(d.headers)
    if provider == "partner":  # the partner signs its body: sign the edited one
        headers["x-pwa-signature"] = hmac_sha256_hex(known_settings().partner_secret or "", body)
    r = await client.post(d.path, content=body, headers=headers)
    assert r.status_code == 200, r.text
    position: int = r.json()["position"]
    return position


async def order(client: Any, key: str, path: str, position: int) -> Any:
    r = await client.get(f"/v1/orders/{path}?min_position={position}", headers=bearer(key))
    assert r.status_code == 200, r.text
    return r.json()


async def test_register_once_repeat_and_conflict(client, database_url):
    key = await make_key(database_url, "orders:write")
    body = {**TERMS, "booking_id": "BK-9", "metadata": {"cart": [1, 2], "note": "ok"}}
    r = await put(client, key, "xendit/ORD-1", body)
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["customer"], first["amount"], first["booking_id"]) == (
        "budi@example.com",
        "100000",
        "BK-9",
    )
    # The same terms again (another spelling of the same amount and address): 200, the
    # first registration's answer, nothing new in the log.
    again = await put(
        client, key, "xendit/ORD-1", {**body, "amount": "100000", "customer": "budi@example.com"}
    )
    assert again.status_code == 200, again.text
    assert again.json()["position"] == first["position"]
    r = await put(client, key, "xendit/ORD-1", {**body, "amount": "90000", "booking_id": "BK-8"})
    assert r.status_code == 409, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["fields"] == ["amount", "booking_id"]
    rows = await fetch(
        database_url,
        "SELECT topic, hash IS NOT NULL AS chained FROM stored_events "
        "WHERE topic = 'ledger.domain:OrderRegistration.Registered'",
    )
    assert [(r["topic"], r["chained"]) for r in rows] == [
        ("ledger.domain:OrderRegistration.Registered", True)
    ]
    view = await order(
        client, await make_key(database_url, "audit:read"), "xendit/ORD-1", first["position"]
    )
    assert (view["status"], view["expected_amount"], view["paid_amount"], view["history"]) == (
        "pending",
        "100000",
        None,
        [],
    )
    assert view["registration"]["metadata"] == {"cart": [1, 2], "note": "ok"}
    assert view["customer"] == "budi@example.com"


async def test_bad_registrations_name_the_field(client, database_url):
    key = await make_key(database_url, "orders:write")
    cases = [
        ({**TERMS, "customer": "not-an-address"}, "customer"),
        ({**TERMS, "amount": "1e5"}, "amount"),
        ({**TERMS, "amount": "-5"}, "amount"),
        ({**TERMS, "amount": "0.00"}, "amount"),
        ({**TERMS, "amount": 100000}, "amount"),
        ({**TERMS, "currency": "rupiah"}, "currency"),
        ({**TERMS, "expires_at": "tomorrow"}, "expires_at"),
        ({**TERMS, "package": "gold\u202e"}, "package"),
        ({**TERMS, "metadata": {"x": "a\u0000b"}}, "metadata"),
        ({**TERMS, "metadata": {"x": "y" * 5000}}, "metadata"),
        ({**TERMS, "surprise": 1}, "body"),
        ({"customer": "a@b.co"}, "body"),
    ]
    for body, field in cases:
        r = await put(client, key, "xendit/ORD-BAD", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["type"] == "/problems/invalid-registration"
        if field != "body":
            assert r.json()["field"] == field, (body, r.json())
    for raw in (b"", b"[1]", b"{", b"\xff\xfe"):
        r = await put(client, key, "xendit/ORD-BAD", raw)
        assert r.status_code == 400, (raw, r.text)
    r = await put(client, key, "midtrans/has space", TERMS)
    assert (r.status_code, r.json()["field"]) == (400, "order_id")
    r = await put(client, key, "mayar/ORD-1", TERMS)
    assert (r.status_code, r.json()["field"]) == (400, "provider")
    # Another scope may not register; no key at all is 401.
    reader = await make_key(database_url, "audit:read")
    assert (await put(client, reader, "xendit/ORD-2", TERMS)).status_code == 403
    r = await client.put("/v1/orders/xendit/ORD-2", content=json.dumps(TERMS).encode())
    assert r.status_code == 401


def _paid_30000(o: Any) -> None:
    o.update(paid_amount=30000)


def _down_payment(o: Any) -> None:
    o.update(status="DP")


# (registered first?, provider, event, order id, amount, edit of the body, what the order says)
AMOUNT_CASES: list[tuple[bool, str, str, str, str, Any, dict[str, str]]] = [
    # A Xendit down payment: 30,000 paid of a 100,000 invoice reads partially_paid, with one
    # definition of expected and paid, registered or not.
    (
        False,
        "xendit",
        "PAID",
        "DP-1",
        "100000",
        _paid_30000,
        {
            "status": "partially_paid",
            "expected_amount": "100000",
            "paid_amount": "30000",
            "amount_check": "short",
        },
    ),
    # Registered for 100,000, paid 150,000 in full: never plain paid.
    (
        True,
        "midtrans",
        "settlement",
        "OVER-1",
        "150000.00",
        None,
        {
            "status": "amount_mismatch",
            "expected_amount": "100000",
            "paid_amount": "150000.00",
            "amount_check": "over",
        },
    ),
    # Registered and paid exactly: paid, and the registered customer is the order's.
    (
        True,
        "midtrans",
        "settlement",
        "OK-1",
        "100000.00",
        None,
        {"status": "paid", "amount_check": "match", "customer": "budi@example.com"},
    ),
    # A partner down payment against a registered booking: partially paid.
    (
        True,
        "partner",
        "booking.paid",
        "bk-5",
        "30000",
        _down_payment,
        {"status": "partially_paid", "expected_amount": "100000", "paid_amount": "30000"},
    ),
]


async def test_amount_rule_partial_and_over_payment(client, database_url):
    writer = await make_key(database_url, "orders:write")
    reader = await make_key(database_url, "audit:read")
    for registered, provider, event, order_id, amount, edit, expected in AMOUNT_CASES:
        path = f"{provider}/{order_id}"
        if registered:
            assert (await put(client, writer, path, TERMS)).status_code == 201
        last = await deliver(client, provider, event, edit, order_id=order_id, amount=amount)
        o = await order(client, reader, path, last)
        assert {k: o[k] for k in expected} == expected, path


async def test_order_view_export_and_summary_agree_on_amounts(client, database_url):
    """One definition of expected and paid (issue 10): the Xendit down payment's order view,
    its export row and the daily summary all say 100000 expected and 30000 paid; a
    registered partner booking's export row carries the registered amount."""
    writer = await make_key(database_url, "orders:write")
    reader = await make_key(database_url, "audit:read")
    await deliver(
        client,
        "xendit",
        "PAID",
        order_id="DP-2",
        amount="100000",
        edit=lambda o: o.update(paid_amount=30000),
    )
    assert (await put(client, writer, "partner/bk-7", TERMS)).status_code == 201
    last = await deliver(client, "partner", "booking.paid", order_id="bk-7", amount="100000")
    view = await order(client, reader, "xendit/DP-2", last)
    assert (view["expected_amount"], view["paid_amount"]) == ("100000", "30000")
    partner = await order(client, reader, "partner/bk-7", last)
    assert (partner["status"], partner["expected_amount"], partner["paid_amount"]) == (
        "paid",
        "100000",
        "100000",
    )
    r = await client.get("/v1/audit/export?format=jsonl", headers=bearer(reader))
    assert r.status_code == 200, r.text
    rows = {
        (x["provider"], x["category"]): x
        for x in map(json.loads, r.text.splitlines())
        if x["order_id"] in ("DP-2", "bk-7")
    }
    dp = rows[("xendit", "received")]
    assert (dp["expected_amount"], dp["paid_amount"]) == ("100000", "30000")
    bk = rows[("partner", "received")]
    assert (bk["expected_amount"], bk["paid_amount"]) == ("100000", "100000")
    assert rows[("partner", "registration")]["expected_amount"] == "100000"
    today = datetime.now(UTC).date().isoformat()
    r = await client.get("/v1/audit/summary", params={"date": today}, headers=bearer(reader))
    assert r.status_code == 200, r.text
    by = {p["provider"]: p for p in r.json()["providers"]}
    assert (
        by["xendit"]["paid_amount"],
        by["xendit"]["expected_amount"],
        by["xendit"]["partially_paid_orders"],
    ) == ("30000", "100000", 1)
    assert (by["partner"]["paid_amount"], by["partner"]["expected_amount"]) == (
        "100000",
        "100000",
    )
