"""Token accounts over HTTP: credits from signed webhooks, spends that never overdraw."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tests import support
from tests.support import bearer, make_key, signed

serve = support.live_server


async def credit(client: Any, customer: str, package: str = "silver") -> int:
    d = signed("mayar", "payment.success", customer=customer, package=package)
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    position: int = r.json()["position"]
    return position


async def spend(client: Any, key: str, customer: str, amount: Any, idem: str) -> Any:
    return await client.post(
        f"/v1/accounts/{customer}/spend",
        json={"amount": amount, "idempotency_key": idem, "reason": "test"},
        headers=bearer(key),
    )


async def spent_events(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM stored_events WHERE topic = 'ledger.domain:TokenSpend.Spent'"
        )
    finally:
        await conn.close()
    return n


async def test_a_spend_right_after_the_credit_ack_sees_the_credit(client, database_url):
    key = await make_key(database_url, "tokens:write")
    await credit(client, "Ana@Example.com")
    r = await spend(client, key, "ana@example.com", 5, "first")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["balance"] == 0
    account = await client.get(
        f"/v1/accounts/ANA@example.com?min_position={body['position']}", headers=bearer(key)
    )
    assert account.status_code == 200, account.text
    a = account.json()
    assert (a["customer"], a["tokens"], a["credited"], a["spent"]) == ("ana@example.com", 0, 5, 5)
    assert a["position"] >= body["position"]
    assert a["last_event_position"] == body["position"]


async def test_insufficient_tokens_is_409_with_the_balance(client, database_url):
    key = await make_key(database_url, "tokens:write")
    await credit(client, "bo@example.com")
    r = await spend(client, key, "bo@example.com", 6, "too-much")
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    p = r.json()
    assert p["type"] == "/problems/insufficient-tokens"
    assert p["balance"] == 5
    assert "5 tokens" in p["detail"]
    assert await spent_events(database_url) == 0
    never = await spend(client, key, "nobody@example.com", 1, "x")
    assert never.status_code == 409
    assert never.json()["balance"] == 0


async def test_same_idempotency_key_spends_once_and_answers_the_first_answer(client, database_url):
    key = await make_key(database_url, "tokens:write")
    await credit(client, "cy@example.com", "gold")
    first = await spend(client, key, "cy@example.com", 30, "order-17")
    again = await spend(client, key, "cy@example.com", 30, "order-17")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.json()["balance"] == 70
    assert await spent_events(database_url) == 1
    # Concurrent repeats of a new key: one spend too.
    async with serve(database_url) as http:
        rs = await asyncio.gather(
            *(spend(http, key, "cy@example.com", 10, "order-18") for _ in range(8))
        )
    assert {r.status_code for r in rs} == {201}
    assert len({r.text for r in rs}) == 1
    assert rs[0].json()["balance"] == 60
    assert await spent_events(database_url) == 2
    other = await spend(client, key, "cy@example.com", 31, "order-17")
    assert other.status_code == 409
    assert other.json()["type"] == "/problems/idempotency-key-reused"


def assert_ten_spent(rs: list[Any]) -> None:
    """Spends of one token racing for ten: exactly ten succeed, each seeing the one before
    (balances 9 down to 0), and every other is refused as insufficient."""
    codes = [r.status_code for r in rs]
    assert codes.count(201) == 10, codes
    assert codes.count(409) == len(rs) - 10, codes
    balances = sorted(r.json()["balance"] for r in rs if r.status_code == 201)
    assert balances == list(range(10))  # each spend saw the previous one


async def test_fifty_concurrent_spends_of_one_against_ten_tokens(database_url):
    key = await make_key(database_url, "tokens:write")
    async with serve(database_url) as http:
        await credit(http, "dee@example.com")
        await credit(http, "dee@example.com")
        rs = await asyncio.gather(
            *(spend(http, key, "dee@example.com", 1, f"k{i}") for i in range(50))
        )
        assert_ten_spent(rs)
        last = max(r.json()["position"] for r in rs if r.status_code == 201)
        a = (
            await http.get(f"/v1/accounts/dee@example.com?min_position={last}", headers=bearer(key))
        ).json()
    assert (a["tokens"], a["credited"], a["spent"]) == (0, 10, 10)
    assert await spent_events(database_url) == 10


async def test_two_servers_spending_for_one_customer_never_overdraw(database_url):
    """Two app instances (each its own pool, in-process locks and runner) on one database,
    as two processes would be: only the advisory lock stands between them."""
    key = await make_key(database_url, "tokens:write")
    async with serve(database_url) as one, serve(database_url) as two:
        await credit(one, "fay@example.com")
        await credit(one, "fay@example.com")
        rs = await asyncio.gather(
            *(spend(one if i % 2 else two, key, "fay@example.com", 1, f"k{i}") for i in range(40))
        )
    assert_ten_spent(rs)
    assert await spent_events(database_url) == 10


async def test_many_customers_spending_at_once_do_not_starve_the_pool(database_url):
    key = await make_key(database_url, "tokens:write")
    customers = [f"m{i}@example.com" for i in range(30)]  # more than the pool's 20 connections
    async with serve(database_url) as http:
        for c in customers:
            await credit(http, c)
        rs = await asyncio.wait_for(
            asyncio.gather(*(spend(http, key, c, 5, "all") for c in customers)), timeout=30
        )
    assert [r.status_code for r in rs] == [201] * 30
    assert {r.json()["balance"] for r in rs} == {0}


async def test_scopes_and_bad_input(client, database_url):
    audit = await make_key(database_url, "audit:read")
    writer = await make_key(database_url, "tokens:write")
    assert (await client.get("/v1/accounts/a@b.c")).status_code == 401
    assert (await client.get("/v1/accounts/a@b.c", headers=bearer(audit))).status_code == 200
    assert (await spend(client, audit, "a@b.c", 1, "k")).status_code == 403
    for amount, field in ((0, "$.amount"), (-3, "$.amount"), ("1", "$.amount"), (1.5, "$.amount")):
        r = await spend(client, writer, "a@b.c", amount, "k")
        assert r.status_code == 400, (amount, r.text)
        assert r.json()["type"] == "/problems/invalid-spend"
        assert field in r.json()["detail"]
    r = await client.post("/v1/accounts/a@b.c/spend", json={"amount": 1}, headers=bearer(writer))
    assert r.status_code == 400
    assert "idempotency_key" in r.json()["detail"]
    r = await client.post("/v1/accounts/a@b.c/spend", content=b"{", headers=bearer(writer))
    assert r.status_code == 400
    for bad_customer in ("%20", "a%00b@c.d", "a%0Ab@c.d"):
        r = await spend(client, writer, bad_customer, 1, "k")
        assert r.status_code == 400, bad_customer
        # NUL and control characters are refused on every route before the handler runs.
        assert r.json()["type"] in (
            "/problems/invalid-customer",
            "/problems/unstorable-characters",
        )
    r = await spend(client, writer, "a@b.c", 1, "new\nline")
    assert r.status_code == 400
    assert "$.idempotency_key" in r.json()["detail"]


async def test_min_position_beyond_the_log_is_400_naming_the_head(client, database_url):
    """No write the client saw can be beyond the head: a client error, answered at once
    (issue 8; it was a 2 s wait and then 503 projection-lagging)."""
    key = await make_key(database_url, "audit:read")
    position = await credit(client, "eve@example.com")
    r = await client.get(
        f"/v1/accounts/eve@example.com?min_position={position + 1000}", headers=bearer(key)
    )
    assert r.status_code == 400
    p = r.json()
    assert p["type"] == "/problems/min-position-beyond-head"
    assert p["head"] >= position
    assert "min_position" in p["detail"]
    ok = await client.get(
        f"/v1/accounts/eve@example.com?min_position={position}", headers=bearer(key)
    )
    assert ok.json()["tokens"] == 5
