"""The store goes away while the app runs: webhooks get 503 + Retry-After, never 500, and
nothing is claimed as accepted; when it comes back, deliveries work again.

The outage is real: the test database stops accepting connections and every session on it
is terminated (the app's pooled connections included).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg

from tests.support import bearer, make_key, signed
from tests.support.db import fetch


def db_name(url: str) -> str:
    return url.partition("?")[0].rsplit("/", 1)[1]


@contextlib.asynccontextmanager
async def outage(server_url: str, database_url: str) -> AsyncIterator[None]:
    name = db_name(database_url)
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def event_ids(url: str) -> set[uuid.UUID]:
    return {r[0] for r in await fetch(url, "SELECT originator_id FROM stored_events")}


def assert_unavailable(r) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) > 0
    body = r.json()
    assert body["type"] == "/problems/store-unavailable"
    assert "nothing was recorded" in body["detail"]
    assert body["status"] == 503
    assert "event_id" not in body
    assert "position" not in body


async def post(client, d):  # type: ignore[no-untyped-def]
    return await client.post(d.path, content=d.body, headers=d.headers)


async def test_webhooks_get_503_while_the_store_is_down_then_recover(
    client, server_url, database_url
):
    before = signed("midtrans", "settlement", order_id="INV-before")
    r = await post(client, before)
    assert r.status_code == 200, r.text  # the pool is warm: its connections get killed

    during = [signed("midtrans", "settlement", order_id=f"INV-down-{i}") for i in range(8)]
    async with outage(server_url, database_url):
        responses = await asyncio.gather(*(post(client, d) for d in during))
        for resp in responses:
            assert_unavailable(resp)
        ready = await client.get("/ready")
        assert ready.status_code == 503
        # The process itself is alive.
        assert (await client.get("/health")).status_code == 200

    # Nothing from the outage reached the log.
    assert await event_ids(database_url) == {uuid.UUID(r.json()["event_id"])}

    # Back: the retried deliveries are new (not duplicates), and a redelivery of the first
    # one still dedups to its original position.
    recovered = None
    for _ in range(50):
        recovered = await post(client, during[0])
        if recovered.status_code != 503:
            break
        await asyncio.sleep(0.1)
    assert recovered is not None
    assert recovered.status_code == 200, recovered.text
    assert recovered.json()["status"] == "accepted"
    for d in during[1:]:
        ok = await post(client, d)
        assert ok.status_code == 200, ok.text
        assert ok.json()["status"] == "accepted"
    again = await post(client, before)
    assert again.json() == {**r.json(), "status": "duplicate"}
    assert len(await event_ids(database_url)) == 1 + len(during)
    assert (await client.get("/ready")).status_code == 200


async def test_reads_get_503_while_the_store_is_down(client, server_url, database_url):
    key = await make_key(database_url, "audit:read")
    d = signed("xendit", "PAID")
    assert (await post(client, d)).status_code == 200
    # The key is looked up (and cached) while the store is up.
    assert (await client.get("/v1/events?after=0", headers=bearer(key))).status_code == 200
    async with outage(server_url, database_url):
        r = await client.get("/v1/events?after=0", headers=bearer(key))
        assert_unavailable_read(r)
    r = await client.get("/v1/events?after=0", headers=bearer(key))
    for _ in range(50):
        if r.status_code == 200:
            break
        await asyncio.sleep(0.1)
        r = await client.get("/v1/events?after=0", headers=bearer(key))
    assert r.status_code == 200, r.text


async def test_an_uncached_key_during_an_outage_is_503(client, server_url, database_url):
    key = await make_key(database_url, "audit:read")
    async with outage(server_url, database_url):
        r = await client.get("/v1/events?after=0", headers=bearer(key))
    assert_unavailable_read(r)


def assert_unavailable_read(r) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) > 0


async def test_a_store_that_refuses_connections_is_503_not_a_hang(client, server_url, database_url):
    """With connections refused for a while, each request still ends promptly in 503."""
    async with outage(server_url, database_url):
        for i in range(3):
            d = signed("partner", "booking.paid", order_id=f"BK-{i}")
            r = await asyncio.wait_for(post(client, d), 15)
            assert_unavailable(r)
