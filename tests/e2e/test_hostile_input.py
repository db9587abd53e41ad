"""Hostile input over real HTTP: a signature cannot be re-split, unsafe text and nonsense
amounts are quarantined for review and credit nothing, lookalike e-mails credit nobody,
repeated credentials are refused, and rotated secrets are accepted (issue 8, section 2)."""

from __future__ import annotations

import base64
import json
from typing import Any

import asyncpg
import httpx
import pytest

from ledger.ingest.providers.base import hmac_sha256_hex
from ledger.ingest.providers.midtrans import signature
from ledger.ingest.samples import build
from tests import support
from tests.support import SECRETS, bearer, live_server, make_key, signed

MAYAR_TOKEN = SECRETS["LEDGER_MAYAR_TOKEN"]
XENDIT_TOKEN = SECRETS["LEDGER_XENDIT_TOKEN"]
PARTNER_SECRET = SECRETS["LEDGER_PARTNER_SECRET"]
MIDTRANS_KEY = SECRETS["LEDGER_MIDTRANS_SERVER_KEY"]
CUSTOMER = "budi@example.com"
QUARANTINED = "ledger.domain:Delivery.Quarantined"


async def log_rows(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(
            "SELECT notification_id, originator_id, topic, state FROM stored_events"
            " ORDER BY notification_id"
        )
    finally:
        await conn.close()


async def tokens(http: httpx.AsyncClient, key: str, customer: str, position: int) -> int:
    r = await http.get(f"/v1/accounts/{customer}?min_position={position}", headers=bearer(key))
    assert r.status_code == 200, r.text
    n: int = r.json()["tokens"]
    return n


async def review_items(http: httpx.AsyncClient, key: str, position: int) -> list[dict[str, Any]]:
    r = await http.get(f"/v1/review?min_position={position}", headers=bearer(key))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def mayar_body(**data: Any) -> bytes:
    fields = {"id": "pay-1", "customerEmail": CUSTOMER, "package": "silver", "amount": 50000}
    return json.dumps({"event": "payment.success", "data": {**fields, **data}}).encode()


def xendit_body(**fields: Any) -> bytes:
    d = signed("xendit", "PAID", order_id="BK-1", customer=CUSTOMER)
    return json.dumps({**json.loads(d.body), **fields}).encode()


def partner_body(**fields: Any) -> bytes:
    d = signed("partner", "booking.paid", order_id="BK-2")
    return json.dumps({**json.loads(d.body), **fields}).encode()


def headers_for(provider: str, body: bytes) -> dict[str, str]:
    h = {"content-type": "application/json"}
    if provider == "mayar":
        return {**h, "x-callback-token": MAYAR_TOKEN}
    if provider == "xendit":
        return {**h, "x-callback-token": XENDIT_TOKEN}
    return {**h, "x-pwa-signature": hmac_sha256_hex(PARTNER_SECRET, body)}


def with_raw(body: bytes, placeholder: str, token: str) -> bytes:
    """JSON cannot carry 1e309 or a NUL escape through json.dumps as we need: splice it."""
    return body.replace(json.dumps(placeholder).encode(), token.encode())


# -- Midtrans: 401 and nothing recorded ------------------------------------------------------


async def test_midtrans_resplit_signature_is_401_and_nothing_recorded(database_url):
    d = signed("midtrans", "settlement", order_id="CAT-1", amount="50000.00")
    doc = json.loads(d.body)
    assert doc["status_code"] == "200"
    forged = {**doc, "order_id": "CAT-12", "status_code": "00"}  # same signature
    async with live_server(database_url) as http:
        r = await http.post(d.path, content=json.dumps(forged).encode(), headers=d.headers)
        assert r.status_code == 401, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "status_code" in r.json()["detail"]
        assert await log_rows(database_url) == []
        # The genuine notification still goes through.
        ok = await http.post(d.path, content=d.body, headers=d.headers)
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("gross", ["NaN", "-299000.00", "1e309", ""])
async def test_midtrans_nonsense_gross_amount_is_401_even_when_signed(database_url, gross):
    doc = json.loads(signed("midtrans", "settlement", order_id="INV-1").body)
    doc |= {"gross_amount": gross, "signature_key": signature("INV-1", "200", gross, MIDTRANS_KEY)}
    async with live_server(database_url) as http:
        key = await make_key(database_url, "audit:read")
        r = await http.post("/webhooks/midtrans", content=json.dumps(doc).encode())
        assert r.status_code == 401, r.text
        assert "gross_amount" in r.json()["detail"]
        assert await log_rows(database_url) == []
        o = await http.get("/v1/orders/midtrans/INV-1", headers=bearer(key))
        assert o.status_code == 404, o.text  # never paid


# -- unsafe text: 400, quarantined, listed for review, nothing credited -----------------------

UNSAFE_CASES = [
    ("mayar", "id", "NUL"),
    ("mayar", "customerEmail", "zero-width"),
    ("mayar", "package", "bidi"),
    ("mayar", "id", "over-long"),
    ("xendit", "external_id", "NUL"),
    ("xendit", "payer_email", "bidi"),
    ("xendit", "external_id", "over-long"),
    ("partner", "booking_id", "NUL"),
    ("partner", "booking_id", "zero-width"),
]
VALUES = {
    "NUL": "x__NUL__1",  # becomes the JSON escape \u0000, as a sender would write it
    "zero-width": "budi\u200b@example.com",
    "bidi": "silver\u202e",
    "over-long": "x" * 300,
}


def unsafe_body(provider: str, field: str, kind: str) -> bytes:
    value = VALUES[kind]
    if field in ("customerEmail", "payer_email") and "@" not in value:
        value += "@example.com"
    make = {"mayar": mayar_body, "xendit": xendit_body, "partner": partner_body}[provider]
    return make(**{field: value}).replace(b"__NUL__", b"\\u0000")


@pytest.mark.parametrize(("provider", "field", "kind"), UNSAFE_CASES)
async def test_unsafe_text_is_quarantined_listed_for_review_and_credits_nothing(
    database_url, provider, field, kind
):
    body = unsafe_body(provider, field, kind)
    if kind == "NUL":
        assert b"\\u0000" in body
    async with live_server(database_url) as http:
        key = await make_key(database_url, "audit:read")
        r = await http.post(
            f"/webhooks/{provider}", content=body, headers=headers_for(provider, body)
        )
        assert r.status_code == 400, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        problem = r.json()
        assert problem["quarantined"] is True
        assert field in problem["detail"]
        # Kept, exactly as sent, and only as a quarantine event.
        [row] = await log_rows(database_url)
        assert row["topic"] == QUARANTINED
        assert base64.b64decode(json.loads(row["state"])["body_b64"]) == body
        raw = await http.get(f"/v1/events/{problem['event_id']}/raw", headers=bearer(key))
        assert raw.content == body
        # Listed for review.
        items = await review_items(http, key, problem["position"])
        assert [(i["reason"], i["event_id"]) for i in items] == [
            ("quarantined", problem["event_id"])
        ]
        assert field in items[0]["detail"]
        # Nothing credited, no order.
        assert await tokens(http, key, CUSTOMER, problem["position"]) == 0
        if provider != "mayar":
            order_id = "BK-1" if provider == "xendit" else "BK-2"
            o = await http.get(f"/v1/orders/{provider}/{order_id}", headers=bearer(key))
            assert o.status_code == 404, o.text
        # A repeat answers 400 again and records nothing new.
        again = await http.post(
            f"/webhooks/{provider}", content=body, headers=headers_for(provider, body)
        )
        assert again.status_code == 400
        assert again.json()["event_id"] == problem["event_id"]
        assert len(await log_rows(database_url)) == 1


# -- amounts ------------------------------------------------------------------------------

BAD_AMOUNTS = [
    ("mayar", "amount", "-50000"),
    ("mayar", "amount", '"NaN"'),
    ("mayar", "amount", "1e309"),
    ("xendit", "amount", '"Infinity"'),
    ("xendit", "paid_amount", "-1"),
    ("partner", "paid_amount", "100000000000000"),
    ("partner", "paid_amount", '"NaN"'),
]


@pytest.mark.parametrize(("provider", "field", "token"), BAD_AMOUNTS)
async def test_bad_amount_is_quarantined_and_credits_nothing(database_url, provider, field, token):
    make = {"mayar": mayar_body, "xendit": xendit_body, "partner": partner_body}[provider]
    body = with_raw(make(**{field: "__AMOUNT__"}), "__AMOUNT__", token)
    async with live_server(database_url) as http:
        key = await make_key(database_url, "audit:read")
        r = await http.post(
            f"/webhooks/{provider}", content=body, headers=headers_for(provider, body)
        )
        assert r.status_code == 400, r.text
        problem = r.json()
        assert problem["quarantined"] is True
        assert field in problem["detail"]
        items = await review_items(http, key, problem["position"])
        assert [i["reason"] for i in items] == ["quarantined"]
        assert await tokens(http, key, CUSTOMER, problem["position"]) == 0
        if provider != "mayar":
            order_id = "BK-1" if provider == "xendit" else "BK-2"
            o = await http.get(f"/v1/orders/{provider}/{order_id}", headers=bearer(key))
            assert o.status_code == 404, o.text


# -- customers ----------------------------------------------------------------------------


async def test_lookalike_email_goes_to_review_and_credits_nobody(database_url):
    lookalike = "budi@ex\u0430mple.com"  # Cyrillic a
    async with live_server(database_url) as http:
        key = await make_key(database_url, "audit:read")
        body = mayar_body(customerEmail=lookalike)
        r = await http.post("/webhooks/mayar", content=body, headers=headers_for("mayar", body))
        assert r.status_code == 400, r.text
        problem = r.json()
        assert "customerEmail" in problem["detail"]
        assert "mixes scripts" in problem["detail"]
        items = await review_items(http, key, problem["position"])
        assert [i["reason"] for i in items] == ["quarantined"]
        # Not credited to the real customer, and no account for the lookalike.
        assert await tokens(http, key, CUSTOMER, problem["position"]) == 0
        r = await http.get(f"/v1/accounts/{lookalike}", headers=bearer(key))
        assert r.status_code == 400, r.text
        # The same payment from the real address credits the real customer once.
        good = mayar_body(id="pay-2", customerEmail="  Budi@EXAMPLE.com ")
        ok = await http.post("/webhooks/mayar", content=good, headers=headers_for("mayar", good))
        assert ok.status_code == 200, ok.text
        assert await tokens(http, key, CUSTOMER, ok.json()["position"]) == 5


# -- credentials --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "header"),
    [("mayar", "x-callback-token"), ("xendit", "x-callback-token"), ("partner", "x-pwa-signature")],
)
async def test_repeated_credential_header_is_401_and_nothing_recorded(
    database_url, provider, header
):
    event = {"mayar": "payment.success", "xendit": "PAID", "partner": "booking.paid"}[provider]
    d = signed(provider, event)
    good = d.headers[header]
    async with live_server(database_url) as http:
        for second in (good, "something-else"):  # even the right value twice
            pairs = [*d.headers.items(), (header, second)]
            r = await http.post(d.path, content=d.body, headers=pairs)
            assert r.status_code == 401, r.text
            assert "more than once" in r.json()["detail"]
            assert good not in r.text
        assert await log_rows(database_url) == []
        ok = await http.post(d.path, content=d.body, headers=d.headers)
        assert ok.status_code == 200, ok.text


async def test_rotated_secrets_accept_old_and_new_and_refuse_a_third(database_url):
    rotated = {
        "LEDGER_MAYAR_TOKEN": f"mayar-new,{MAYAR_TOKEN}",
        "LEDGER_XENDIT_TOKEN": f"xendit-new,{XENDIT_TOKEN}",
        "LEDGER_PARTNER_SECRET": f"partner-new,{PARTNER_SECRET}",
        "LEDGER_MIDTRANS_SERVER_KEY": f"SB-new,{MIDTRANS_KEY}",
    }
    third = {
        "LEDGER_MAYAR_TOKEN": "mayar-third",
        "LEDGER_XENDIT_TOKEN": "xendit-third",
        "LEDGER_PARTNER_SECRET": "partner-third",
        "LEDGER_MIDTRANS_SERVER_KEY": "SB-third",
    }
    async with live_server(database_url, **rotated) as http:
        for provider, event in [
            ("mayar", "payment.success"),
            ("midtrans", "settlement"),
            ("xendit", "PAID"),
            ("partner", "booking.paid"),
        ]:
            new = build(support.test_settings(**rotated), provider, event)  # signs with the first
            old = signed(provider, event)  # the previous secret
            bad = build(support.test_settings(**third), provider, event)
            for d, status in ((new, 200), (old, 200), (bad, 401)):
                r = await http.post(d.path, content=d.body, headers=d.headers)
                assert r.status_code == status, (provider, r.text)
                assert "new" not in r.text
                assert "third" not in r.text
    rows = await log_rows(database_url)
    assert len(rows) == 8
    assert all(row["topic"] == "ledger.domain:Delivery.Received" for row in rows)
