"""Finance audit through the real app: head, search, export, daily summary."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import random
import tracemalloc
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from ledger.app import create_app
from ledger.audit import index as audit
from ledger.audit import queries
from ledger.config import Settings
from ledger.database import create_pool
from ledger.domain.events import RECEIVED_TOPIC
from ledger.payments.orderstatus import fold, held, midtrans_status
from ledger.projections.token_balances import PROJECTION, TokenBalances
from ledger.store.eventstore import EventStore, NewEvent, StoredRecord
from tests.support import bearer, make_key, signed, until
from tests.support import test_settings as make_settings
from tests.support.readmodels import delivery_state


async def post(client, provider: str, event: str, **kw: str) -> dict:
    d = signed(provider, event, **kw)
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code in (200, 400), r.text
    return r.json()


@pytest.fixture
def settings() -> Settings:
    # Audit reads the log itself: no projection runner or outbox competing for the CPU.
    return make_settings(LEDGER_RUN_PROJECTIONS="false", LEDGER_RUN_OUTBOX="false")


async def test_audit_routes_need_an_audit_key(client, database_url):
    r = await client.get("/v1/audit/head")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    other = bearer(await make_key(database_url, "tokens:write"))
    r = await client.get("/v1/audit/events", headers=other)
    assert r.status_code == 403


async def test_head_is_the_latest_position_and_its_chain_hash(client, database_url, reader):
    r = await client.get("/v1/audit/head", headers=reader)
    assert r.json() == {"position": 0, "hash": None}
    await post(client, "midtrans", "settlement")
    last = await post(client, "xendit", "PAID")
    head = (await client.get("/v1/audit/head", headers=reader)).json()
    conn = await asyncpg.connect(database_url)
    try:
        stored = await conn.fetchval(
            "SELECT hash FROM stored_events WHERE notification_id = $1", last["position"]
        )
    finally:
        await conn.close()
    assert head == {"position": last["position"], "hash": bytes(stored).hex()}


async def test_search_filters_and_paginates(client, reader):
    a = await post(client, "midtrans", "settlement", order_id="INV-A", customer="Ana@X.io")
    b = await post(client, "midtrans", "pending", order_id="INV-B")
    c = await post(client, "xendit", "PAID", order_id="BOOK-1", customer="ana@x.io")
    d = await post(client, "mayar", "payment.success", customer="budi@y.io")
    q = await post(client, "mayar", "no.such.event")  # quarantined, still searchable

    async def find(**params: str) -> list[int]:
        r = await client.get("/v1/audit/events", params=params, headers=reader)
        assert r.status_code == 200, r.text
        return [i["position"] for i in r.json()["items"]]

    assert await find(provider="midtrans") == [a["position"], b["position"]]
    assert await find(customer="ANA@x.io") == [a["position"], c["position"]]
    assert await find(order_id="BOOK-1") == [c["position"]]
    assert await find(type="settlement") == [a["position"]]
    assert await find(type="Delivery.Quarantined") == [q["position"]]
    assert await find(provider="mayar", customer="budi@y.io") == [d["position"]]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await find(**{"from": future}) == []
    assert len(await find(to=future)) == 5

    item = (
        await client.get("/v1/audit/events", params={"order_id": "INV-A"}, headers=reader)
    ).json()
    row = item["items"][0]
    assert row["amount"] == "299000.00"
    assert row["status"] == "paid"
    assert row["dedup_key"].startswith("midtrans:INV-A:")
    assert len(row["hash"]) == 64

    seen, after = [], 0
    while True:
        page = (
            await client.get(
                "/v1/audit/events", params={"after": after, "limit": 2}, headers=reader
            )
        ).json()
        seen += [i["position"] for i in page["items"]]
        after = page["next_after"]
        if not page["has_more"]:
            break
    assert seen == sorted(
        [a["position"], b["position"], c["position"], d["position"], q["position"]]
    )


async def test_bad_query_values_are_problems_naming_the_parameter(client, reader):
    r = await client.get("/v1/audit/events", params={"from": "yesterday"}, headers=reader)
    assert r.status_code == 400
    assert "'from'" in r.json()["detail"]
    r = await client.get("/v1/audit/summary", params={"date": "2026-13-01"}, headers=reader)
    assert r.status_code == 400
    assert "'date'" in r.json()["detail"]
    r = await client.get(
        "/v1/audit/summary", params={"date": "2026-01-01", "tz": "Mars/Base"}, headers=reader
    )
    assert r.status_code == 400
    r = await client.get("/v1/audit/export", params={"format": "xml"}, headers=reader)
    assert r.status_code == 400


async def test_daily_summary_counts_money_once_per_order(client, reader):
    await post(client, "midtrans", "capture", order_id="INV-1", amount="100000.00")
    await post(client, "midtrans", "settlement", order_id="INV-1", amount="100000.00")
    await post(client, "midtrans", "settlement", order_id="INV-2", amount="0.10")
    await post(client, "midtrans", "expire", order_id="INV-3")
    await post(client, "midtrans", "refund", order_id="INV-1", amount="100000.00")
    await post(client, "xendit", "PAID", order_id="B-1", amount="32000")
    await post(client, "xendit", "EXPIRED", order_id="B-2")
    await post(client, "mayar", "no.such.event")
    today = datetime.now(UTC).date().isoformat()
    r = await client.get("/v1/audit/summary", params={"date": today}, headers=reader)
    assert r.status_code == 200, r.text
    by = {p["provider"]: p for p in r.json()["providers"]}
    mid = by["midtrans"]
    assert mid["deliveries"] == 5
    assert mid["paid_orders"] == 2
    assert mid["paid_amount"] == "100000.10"
    assert mid["paid_notifications"] == 3  # capture + settlement of INV-1, INV-2
    assert mid["failures"] == 1
    assert mid["refunds"] == 1
    assert by["xendit"]["paid_amount"] == "32000"
    assert by["xendit"]["failures"] == 1
    assert by["mayar"]["quarantined"] == 1
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    r = await client.get("/v1/audit/summary", params={"date": yesterday}, headers=reader)
    assert r.json()["providers"] == []


async def test_amounts_are_plain_decimal_strings_never_scientific(client, reader):
    """Issue 9 papercut: round amounts read back from numeric columns printed as "5.5E+5"."""
    await post(client, "xendit", "PAID", order_id="B-55", amount="550000")
    await post(client, "partner", "booking.paid", order_id="b-105", amount="1050000")
    today = datetime.now(UTC).date().isoformat()
    r = await client.get("/v1/audit/summary", params={"date": today}, headers=reader)
    assert r.status_code == 200, r.text
    by = {p["provider"]: p["paid_amount"] for p in r.json()["providers"]}
    assert by == {"xendit": "550000", "partner": "1050000"}
    r = await client.get("/v1/audit/events", params={"order_id": "B-55"}, headers=reader)
    assert [(e["amount"], e["paid_amount"]) for e in r.json()["items"]] == [("550000", "550000")]
    r = await client.get("/v1/audit/orders/xendit/B-55", headers=reader)
    assert [e["amount"] for e in r.json()["entries"]] == ["550000"]


def delivery(i: int, at: datetime) -> NewEvent:
    """A real signed Midtrans body recorded as if received at ``at`` (bulk, no HTTP)."""
    body = signed("midtrans", "settlement", order_id=f"INV-{i}", amount="1000.00").body
    state = delivery_state(
        "midtrans", f"midtrans:INV-{i}:bulk", "settlement", body, headers={}, timestamp=at
    )
    return NewEvent(uuid.uuid4(), RECEIVED_TOPIC, state)


async def test_export_streams_a_large_range_in_bounded_pages(client, database_url, reader):
    n = 20_000
    start = datetime(2026, 3, 1, tzinfo=UTC)
    pool = await create_pool(database_url, max_size=4)
    try:
        store = EventStore(pool)
        for k in range(0, n, 2000):
            await store.append_many(
                [delivery(i, start + timedelta(seconds=i * 10)) for i in range(k, k + 2000)]
            )
        await audit.catch_up(pool)

        # Page-wise: no page exceeds its size, and memory does not grow with the range.
        async def peak(until: datetime) -> tuple[int, int]:
            rows = 0
            tracemalloc.start()
            try:
                async for page in queries.export_pages(pool, start, until, page=1000):
                    assert len(page) <= 1000
                    rows += len(page)
                    del page
                return rows, tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()

        small_rows, small_peak = await peak(start + timedelta(seconds=2000 * 10))
        big_rows, big_peak = await peak(start + timedelta(seconds=n * 10))
        assert (small_rows, big_rows) == (2000, n)
        assert big_peak < 2 * small_peak + 256 * 1024, (small_peak, big_peak)
    finally:
        await pool.close()

    march = {"from": "2026-03-01", "to": "2026-03-02"}  # 8640 events at 10 s apart
    r = await client.get("/v1/audit/export", params=march, headers=reader)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert tuple(rows[0]) == queries.EXPORT_COLUMNS
    assert len(rows) == 1 + 8640
    positions = [int(x[0]) for x in rows[1:]]
    assert positions == sorted(positions)
    first = dict(zip(rows[0], rows[1], strict=True))
    assert first["order_id"] == "INV-0"
    assert (first["expected_amount"], first["paid_amount"]) == ("1000.00", "1000.00")
    assert len(first["hash"]) == 64

    r = await client.get("/v1/audit/export", params={**march, "format": "jsonl"}, headers=reader)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert len(lines) == 8640
    assert list(lines[-1]) == list(queries.EXPORT_COLUMNS)
    assert lines[-1]["received_at"].startswith("2026-03-01T23:59:50")


@pytest.fixture
async def live_client(database_url: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The app with its projection runner (token credits are a projection's effect)."""
    app = create_app(make_settings(LEDGER_RUN_OUTBOX="false"), database_url=database_url)
    async with AsyncTestClient(app) as c:
        yield c


async def test_order_timeline_links_bytes_interpretation_and_status(live_client, reader):
    client = live_client
    d1 = signed("midtrans", "pending", order_id="INV-T", transaction_id="t1")
    d2 = signed("midtrans", "settlement", order_id="INV-T", transaction_id="t1")
    d3 = signed("midtrans", "expire", order_id="INV-T", transaction_id="t1")  # late
    for d in (d1, d2, d3):
        assert (await client.post(d.path, content=d.body, headers=d.headers)).status_code == 200
    await post(client, "midtrans", "settlement", order_id="OTHER")
    r = await client.get("/v1/audit/orders/midtrans/INV-T", headers=reader)
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["order_status"] == "paid"
    entries = t["entries"]
    assert [e["status"] for e in entries] == ["pending", "paid", "failed"]
    assert [e["order_status_after"] for e in entries] == ["pending", "paid", "paid"]
    assert [e["late"] for e in entries] == [False, False, True]
    for e, d in zip(entries, (d1, d2, d3), strict=True):
        assert e["body_sha256"] == hashlib.sha256(d.body).hexdigest()
        raw = await client.get(e["raw"], headers=reader)
        assert raw.content == d.body
    r = await client.get("/v1/audit/orders/midtrans/NOPE", headers=reader)
    assert r.json()["entries"] == []


async def test_customer_timeline_traces_each_credit_to_its_delivery(live_client, reader):
    client = live_client
    d = signed("mayar", "payment.success", customer="Sari@Example.com", package="silver")
    ack = (await client.post(d.path, content=d.body, headers=d.headers)).json()
    await post(client, "mayar", "payment.success", customer="someone@else.io", package="gold")

    async def credited() -> dict | None:  # type: ignore[type-arg]
        r = await client.get("/v1/audit/customers/SARI@example.com", headers=reader)
        assert r.status_code == 200, r.text
        [entry] = r.json()["entries"]
        return entry if entry["effects"] else None

    entry = await until(credited, what="the credit traced to its delivery")
    assert entry["position"] == ack["position"]
    assert entry["effects"] == [
        {
            "type": "token_credit",
            "tokens": 5,
            "package": "silver",
            "message_id": None,
            "kind": None,
            "target": None,
            "state": None,
            "attempts": None,
            "last_outcome": None,
            "last_status": None,
        }
    ]
    assert entry["body_sha256"] == hashlib.sha256(d.body).hexdigest()
    assert (await client.get(entry["raw"], headers=reader)).content == d.body


async def test_order_status_as_of_any_position_matches_folding_the_log(
    client, database_url, reader
):
    statuses = ["pending", "settlement", "expire", "pending", "refund", "capture"]
    random.Random(5).shuffle(statuses)
    for i, st in enumerate(statuses):
        await post(client, "midtrans", st, order_id="INV-AS", transaction_id=f"t{i}")
        await post(client, "midtrans", "settlement", order_id=f"NOISE-{i}")
    conn = await asyncpg.connect(database_url)
    try:
        log = await conn.fetch("SELECT notification_id, state FROM stored_events ORDER BY 1")
    finally:
        await conn.close()
    folded: list[tuple[int, str | None]] = []
    seen: list[str] = []
    for pos, state in log:
        body = json.loads(base64.b64decode(json.loads(state)["body_b64"]))
        if body["order_id"] == "INV-AS":
            status = midtrans_status(body["transaction_status"], body.get("fraud_status"))
            if not held("midtrans", status):  # a refund waits for Midtrans' API (ADR 0016)
                seen.append(status)
        folded.append((pos, fold(seen)))
    for pos, expected in folded:
        r = await client.get(
            "/v1/audit/orders/midtrans/INV-AS", params={"at_position": pos}, headers=reader
        )
        assert r.json()["order_status"] == expected, pos
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    r = await client.get(
        "/v1/audit/orders/midtrans/INV-AS", params={"as_of": future}, headers=reader
    )
    assert r.json()["order_status"] == folded[-1][1]
    r = await client.get(
        "/v1/audit/orders/midtrans/INV-AS", params={"as_of": "2020-01-01"}, headers=reader
    )
    assert r.json()["entries"] == []


def mayar_body(event: str, payment_id: str, customer: str, package: str) -> tuple[str, bytes, dict]:
    d = signed("mayar", event, customer=customer, package=package)
    body = json.loads(d.body)
    body["data"]["id"] = payment_id
    return d.path, json.dumps(body).encode(), d.headers


async def test_balance_as_of_any_position_matches_the_projection_fold(live_client, database_url):
    client = live_client
    reader = bearer(await make_key(database_url, "audit:read"))
    writer = bearer(await make_key(database_url, "tokens:write"))
    plan = [
        ("payment.success", "P1", "Ana@x.io", "silver"),
        ("payment.received", "P1", "ana@x.io", "silver"),  # same payment: one credit
        ("payment.success", "P2", "ana@x.io", "gold"),
        ("payment.success", "P3", "bob@x.io", "silver"),
        ("payment.received", "P2", "bob@x.io", "gold"),  # names P2 for someone else
        ("payment.success", "P4", "ana@x.io", "platinum"),  # unknown package: no credit
        ("payment.pending", "P3", "ana@x.io", "silver"),  # not paid: read by no fold
        ("payment.pending", "P5", "ana@x.io", "gold"),
        ("payment.received", "P5", "bob@x.io", "gold"),  # paid, after ana's pending one
    ]
    for event, pid, who, package in plan:
        path, body, headers = mayar_body(event, pid, who, package)
        assert (await client.post(path, content=body, headers=headers)).status_code == 200

    async def funded() -> bool:  # the spend checks the live read model
        r = await client.get("/v1/accounts/ana@x.io", headers=writer)
        return bool(r.json().get("tokens", 0) >= 5)

    await until(funded, what="5 tokens credited")
    r = await client.post(
        "/v1/accounts/ana@x.io/spend",
        json={"amount": 3, "idempotency_key": "k1", "reason": "test"},
        headers=writer,
    )
    assert r.status_code == 201, r.text

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM stored_events ORDER BY notification_id"
        )
        await conn.execute("CREATE SCHEMA asof_ref")
        await conn.execute("SET search_path TO asof_ref, public")
        await conn.execute(PROJECTION.schema_sql)
        reference = TokenBalances(PROJECTION.catalogue)
        expected: list[tuple[int, dict[str, tuple[int, int]]]] = [(0, {})]
        for r in rows:
            rec = StoredRecord(r[0], r[1], r[2], r[3], bytes(r[4]))
            async with conn.transaction():
                await reference.apply(conn, [rec])
            accounts = await conn.fetch("SELECT customer, credited, spent FROM accounts")
            expected.append((rec.position, {a[0]: (a[1], a[2]) for a in accounts}))
    finally:
        await conn.close()
    assert expected[-1][1]["ana@x.io"][1] == 3
    for position, accounts in expected:
        for who in ("ana@x.io", "bob@x.io"):
            got = (
                await client.get(
                    f"/v1/audit/customers/{who.upper()}/balance",
                    params={"at_position": position},
                    headers=reader,
                )
            ).json()
            credited, spent = accounts.get(who, (0, 0))
            assert (got["credited"], got["spent"]) == (credited, spent), (position, who, got)
            assert got["tokens"] == credited - spent
            assert sum(c["tokens"] for c in got["credits"]) == credited
    now = (
        await client.get(
            "/v1/audit/customers/ana@x.io/balance",
            params={"as_of": (datetime.now(UTC) + timedelta(minutes=1)).isoformat()},
            headers=reader,
        )
    ).json()
    assert (now["credited"], now["spent"]) == expected[-1][1]["ana@x.io"]
    assert all(c["raw"].endswith("/raw") for c in now["credits"])
