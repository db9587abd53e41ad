"""Signed webhooks through the real app into the real database."""

from __future__ import annotations

import asyncio
import base64
import json

import asyncpg
import pytest

from tests.support import bearer, live_server, make_key, signed
from tests.support.db import fetchval, post_unusable_xendit


async def count_events(url: str) -> int:
    n: int = await fetchval(url, "SELECT count(*) FROM stored_events")
    return n


@pytest.mark.parametrize(
    ("provider", "event"),
    [
        ("midtrans", "settlement"),
        ("mayar", "payment.success"),
        ("xendit", "PAID"),
        ("partner", "booking.paid"),
    ],
)
async def test_signed_delivery_is_recorded_before_ack(client, database_url, provider, event):
    d = signed(provider, event)
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["status"] == "accepted"
    # Acknowledged means committed: a separate connection sees it.
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT notification_id, topic, state FROM stored_events WHERE originator_id = $1",
            __import__("uuid").UUID(ack["event_id"]),
        )
    finally:
        await conn.close()
    assert row["notification_id"] == ack["position"]
    state = json.loads(row["state"])
    assert base64.b64decode(state["body_b64"]) == d.body
    assert state["provider"] == provider
    # No secret reaches the event.
    for secret in (
        "test-mayar-token",
        "test-xendit-token",
        "test-partner-secret",
        "SB-Mid-server-test",
    ):
        assert secret not in row["state"].decode()
        assert secret not in base64.b64decode(state["body_b64"]).decode()


async def test_redelivery_is_a_duplicate_with_the_original_position(client, database_url):
    d = signed("midtrans", "settlement", order_id="INV-9")
    first = (await client.post(d.path, content=d.body, headers=d.headers)).json()
    second = await client.post(d.path, content=d.body, headers=d.headers)
    assert second.status_code == 200
    assert second.json() == {**first, "status": "duplicate"}
    assert await count_events(database_url) == 1


@pytest.mark.parametrize(
    ("provider", "headers", "fault"),
    [
        ("mayar", {"x-callback-token": "wrong"}, "x-callback-token"),
        ("mayar", {}, "missing x-callback-token"),
        ("xendit", {"x-callback-token": "nope"}, "x-callback-token"),
        ("partner", {"x-pwa-signature": "00" * 32}, "x-pwa-signature"),
        ("partner", {}, "missing x-pwa-signature"),
    ],
)
async def test_forged_delivery_is_401_and_leaves_no_trace(
    client, database_url, provider, headers, fault
):
    event = {"mayar": "payment.success", "xendit": "PAID", "partner": "booking.paid"}[provider]
    d = signed(provider, event)
    r = await client.post(
        d.path, content=d.body, headers={"content-type": "application/json", **headers}
    )
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert fault in problem["detail"]
    assert "test-" not in r.text  # never echo a secret
    assert await count_events(database_url) == 0


async def test_midtrans_wrong_signature_is_401(client, database_url):
    d = signed("midtrans", "settlement")
    body = json.loads(d.body)
    body["gross_amount"] = "1.00"  # tampered amount, signature no longer matches
    r = await client.post(d.path, content=json.dumps(body).encode(), headers=d.headers)
    assert r.status_code == 401
    assert "signature_key" in r.json()["detail"]
    assert await count_events(database_url) == 0


async def test_authenticated_but_unusable_is_400_and_quarantined(client, database_url):
    r = await post_unusable_xendit(client)
    p = r.json()
    assert p["type"] == "/problems/webhook-unusable"
    assert "external_id" in p["detail"]
    assert p["quarantined"] is True
    conn = await asyncpg.connect(database_url)
    try:
        topic = await conn.fetchval("SELECT topic FROM stored_events")
    finally:
        await conn.close()
    assert topic == "ledger.domain:Delivery.Quarantined"


async def test_too_large_is_413_problem(client, database_url):
    r = await client.post(
        "/webhooks/mayar",
        content=b"{" + b" " * 70_000 + b"}",
        headers={"x-callback-token": "test-mayar-token"},
    )
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await count_events(database_url) == 0


async def test_a_chunked_body_is_read_whole_and_counted_against_the_limit(database_url):
    """No ``content-length`` (chunked transfer): the body is read whole, and the limit is
    enforced on the bytes read."""
    d = signed("midtrans", "settlement")
    headers = {k: v for k, v in d.headers.items() if k.lower() != "content-length"}

    async def pieces(body: bytes, size: int):
        for i in range(0, len(body), size):
            yield body[i : i + size]
            await asyncio.sleep(0)

    async with live_server(database_url) as http:
        r = await http.post(d.path, content=pieces(d.body, 7), headers=headers)
        assert "content-length" not in r.request.headers
        assert r.status_code == 200, r.text
        ack = r.json()
        big = await http.post(
            "/webhooks/mayar",
            content=pieces(b" " * 100_000, 20_000),
            headers={"x-callback-token": "test-mayar-token"},
        )
    assert big.status_code == 413
    assert big.json()["type"] == "/problems/body-too-large"
    stored = await fetchval(
        database_url, "SELECT state FROM stored_events WHERE notification_id = $1", ack["position"]
    )
    assert base64.b64decode(json.loads(stored)["body_b64"]) == d.body
    assert await count_events(database_url) == 1


async def test_invalid_content_length_is_400_and_nothing_is_recorded(client, database_url):
    r = await client.post(
        "/webhooks/mayar",
        content=b"{}",
        headers={"x-callback-token": "test-mayar-token", "content-length": "two"},
    )
    assert r.status_code == 400
    assert await count_events(database_url) == 0


async def test_deep_nesting_is_rejected_before_decoding(client, database_url):
    body = b'{"event":"payment.success","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    body = body[:60_000]  # under the size limit, still absurdly deep
    r = await client.post(
        "/webhooks/mayar", content=body, headers={"x-callback-token": "test-mayar-token"}
    )
    assert r.status_code == 400
    assert "nesting" in r.json()["detail"]


async def test_same_key_different_body_is_an_anomaly_recorded_once(client, database_url):
    a = b'{"event":"payment.success","data":{"id":"p-1","amount":5000}}'
    b = b'{"event":"payment.success","data":{"id":"p-1","amount":9000}}'
    h = {"x-callback-token": "test-mayar-token"}
    r1 = await client.post("/webhooks/mayar", content=a, headers=h)
    r2 = await client.post("/webhooks/mayar", content=b, headers=h)
    r3 = await client.post("/webhooks/mayar", content=b, headers=h)
    assert r1.json()["status"] == "accepted"
    assert r2.json()["flag"] == "dedup-conflict"
    assert r3.json()["status"] == "duplicate"
    conn = await asyncpg.connect(database_url)
    try:
        topics = [
            r["topic"]
            for r in await conn.fetch("SELECT topic FROM stored_events ORDER BY notification_id")
        ]
    finally:
        await conn.close()
    assert topics == ["ledger.domain:Delivery.Received", "ledger.domain:Delivery.Conflicted"]


async def test_redelivery_storm_records_exactly_one_event(database_url):
    # A real server on loopback, so the 50 requests in flight really race.
    d = signed("midtrans", "settlement", order_id="INV-STORM")
    sem = asyncio.Semaphore(50)
    async with live_server(database_url) as http:

        async def send() -> tuple[int, str]:
            async with sem:
                r = await http.post(d.path, content=d.body, headers=d.headers)
                return r.status_code, r.json()["event_id"]

        answers = await asyncio.gather(*(send() for _ in range(200)))
    assert {code for code, _ in answers} == {200}
    assert len({event_id for _, event_id in answers}) == 1
    assert await count_events(database_url) == 1


async def test_event_feed_needs_audit_key_and_returns_raw_body(client, database_url):
    d = signed("xendit", "PAID")
    ack = (await client.post(d.path, content=d.body, headers=d.headers)).json()
    assert (await client.get("/v1/events")).status_code == 401
    wrong = await make_key(database_url, "tokens:write")
    assert (await client.get("/v1/events", headers=bearer(wrong))).status_code == 403
    key = await make_key(database_url, "audit:read")
    page = (await client.get("/v1/events?after=0&limit=10", headers=bearer(key))).json()
    assert [i["event_id"] for i in page["items"]] == [ack["event_id"]]
    assert page["next_after"] == ack["position"]
    one = (await client.get(f"/v1/events/{ack['event_id']}", headers=bearer(key))).json()
    assert one["body"].encode() == d.body
    raw = await client.get(f"/v1/events/{ack['event_id']}/raw", headers=bearer(key))
    assert raw.content == d.body


async def test_partner_get_describes_endpoint(client):
    r = await client.get("/webhooks/partner")
    assert r.status_code == 200
    assert r.json()["required_header"] == "x-pwa-signature"


async def test_health_and_ready(client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    r = await client.get("/ready")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"


def _sample(metrics: str, line_start: str) -> float:
    """The value of the exposition line starting with ``line_start`` (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_webhooks_are_counted_and_timed_in_metrics(client, database_url):
    """The webhook routes are left out of litestar's per-request middleware (issue 11):
    ``ledger.metrics`` counts what was recorded or refused and times each delivery."""
    admin = bearer(await make_key(database_url, "ops:admin"))
    recorded = 'ledger_webhooks_recorded_total{outcome="accepted",provider="midtrans"}'
    refused = 'ledger_webhooks_refused_total{provider="midtrans"}'
    timed = 'ledger_webhook_seconds_count{provider="midtrans"}'
    before = (await client.get("/metrics", headers=admin)).text
    d = signed("midtrans", "settlement")
    assert (await client.post(d.path, content=d.body, headers=d.headers)).status_code == 200
    forged = json.loads(d.body) | {"gross_amount": "1.00"}
    r = await client.post(d.path, content=json.dumps(forged).encode(), headers=d.headers)
    assert r.status_code == 401
    after = (await client.get("/metrics", headers=admin)).text
    assert _sample(after, recorded) == _sample(before, recorded) + 1
    assert _sample(after, refused) == _sample(before, refused) + 1
    assert _sample(after, timed) == _sample(before, timed) + 1
