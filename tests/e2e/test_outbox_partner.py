"""Partner booking sync through the real app, runner, outbox and dispatcher, delivered to a
real loopback HTTP server that misbehaves on purpose (500, 503 + Retry-After, 429, hangs,
resets, "applied but the answer was lost", 4xx)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from ledger.app import create_app
from ledger.config import Settings
from ledger.database import create_pool
from ledger.outbox.dispatcher import Dispatcher
from tests import support
from tests.support import bearer, make_key, signed, until
from tests.support.servers import PARTNER_SYNC_SECRET as SECRET
from tests.support.servers import Partner


@pytest.fixture
async def partner() -> AsyncIterator[Partner]:
    p = Partner()
    await p.start()
    yield p
    await p.stop()


def outbox_settings(url: str, **extra: str) -> Settings:
    env = {
        "LEDGER_PARTNER_SYNC_URL": url,
        "LEDGER_OUTBOX_RETRY_SCHEDULE": "0.05,0.1,0.2,0.3,0.3,0.3,0.3",
        "LEDGER_OUTBOX_TIMEOUT": "0.5",
        "LEDGER_OUTBOX_LEASE": "5",
    }
    return support.test_settings(**{**env, **extra})


async def wait_settled(url: str, expected: int) -> list[asyncpg.Record]:
    """At least ``expected`` messages, every one delivered or dead (in creation order)."""
    conn = await asyncpg.connect(url)
    try:

        async def settled() -> list[asyncpg.Record] | None:
            rows = await conn.fetch("SELECT * FROM outbox ORDER BY created_at")
            if len(rows) >= expected and all(r["state"] != "pending" for r in rows):
                return rows
            return None

        return await until(settled, what=f"{expected} outbox messages settled")
    finally:
        await conn.close()


async def wait_rebuilt(client: AsyncTestClient, key: str, generation: int) -> None:  # type: ignore[type-arg]
    """The outbox projection's ``generation`` is live and has caught up with the log."""

    async def rebuilt() -> bool:
        r = await client.get("/v1/projections/outbox", headers=bearer(key))
        st = r.json()
        return bool(st["live_generation"] == generation and st["lag_events"] == 0)

    await until(rebuilt, what=f"outbox generation {generation} live and caught up")


def xendit_invoice(
    booking: str, amount: int, paid: int, status: str = "PAID"
) -> tuple[bytes, dict]:
    body = json.dumps(
        {
            "id": f"inv-{booking}",
            "external_id": booking,
            "user_id": "u-1",
            "status": status,
            "merchant_name": "Smash Courts",
            "amount": amount,
            "paid_amount": paid,
            "paid_at": "2026-02-04T23:00:00.000Z",
            "payment_method": "QR_CODE",
            "payment_channel": "QRIS",
            "payer_email": "budi@example.com",
            "created": "2026-02-04T22:00:00.000Z",
            "updated": "2026-02-04T23:00:00.000Z",
            "currency": "IDR",
        }
    ).encode()
    return body, {"content-type": "application/json", "x-callback-token": "test-xendit-token"}


async def test_partner_flaps_and_every_message_is_applied_once(partner, database_url):
    scripts = {
        "b-500": ["500", "500", "ok"],
        "b-503": ["503", "ok"],
        "b-429": ["429", "ok"],
        "b-hang": ["hang", "ok"],
        "b-reset": ["reset", "ok"],
        "b-lost": ["lost", "ok"],
        "b-ok": ["ok"],
        "b-chunked": ["chunked"],
        "b-400": ["400"],
        "b-401": ["401"],
        "b-404": ["404"],
    }
    partner.scripts = scripts
    app = create_app(outbox_settings(partner.url), database_url=database_url)
    async with AsyncTestClient(app) as client:
        for booking in scripts:
            d = signed("xendit", "PAID", order_id=booking, amount="32000")
            r = await client.post(d.path, content=d.body, headers=d.headers)
            assert r.status_code == 200, r.text
        rows = await wait_settled(database_url, len(scripts))

        by_booking = {r["order_ref"].split(":", 1)[1]: r for r in rows}
        assert set(by_booking) == set(scripts)
        assert partner.bad_signatures == 0
        for booking, row in by_booking.items():
            seen = partner.seen[str(row["id"])]  # the idempotency id is the message id
            assert seen.max_in_flight == 1, booking
            assert len(set(seen.bodies)) == 1, "every attempt sends the same bytes"
            assert seen.bodies[0] == bytes(row["payload"])
            if booking in ("b-400", "b-401", "b-404"):
                assert row["state"] == "dead", booking
                assert row["last_error"].startswith(f"HTTP {booking[2:]}")
                assert len(seen.bodies) == 1, "a permanent answer is not retried"
                assert seen.applied == 0
            else:
                assert row["state"] == "delivered", (booking, row["last_error"])
                assert seen.applied == 1, booking
                assert len(seen.bodies) == len(scripts[booking]), booking
        gap = partner.seen[str(by_booking["b-503"]["id"])].times
        assert gap[1] - gap[0] >= 0.95, "Retry-After: 1 is honoured"

        # Every attempt is recorded, with status, latency and a short excerpt, no secret.
        conn = await asyncpg.connect(database_url)
        try:
            attempts = await conn.fetch(
                "SELECT a.*, o.order_ref FROM outbox_attempts a JOIN outbox o ON o.id = a.message_id"
            )
        finally:
            await conn.close()
        assert len(attempts) == sum(len(s) for s in scripts.values())
        per = defaultdict(list)
        for a in attempts:
            per[a["order_ref"].split(":", 1)[1]].append(a)
        assert [a["status"] for a in per["b-500"]] == [500, 500, 200]
        assert [a["outcome"] for a in per["b-hang"]] == ["retry", "delivered"]
        assert per["b-hang"][0]["status"] is None
        assert "timeout" in per["b-hang"][0]["excerpt"]
        assert per["b-reset"][0]["status"] is None
        assert all(SECRET not in (a["excerpt"] or "") for a in attempts)

        # Operators see the dead letters and retry one with a reason (an event in the log).
        key = await make_key(database_url, "ops:admin")
        r = await client.get("/v1/outbox", params={"state": "dead"}, headers=bearer(key))
        assert r.status_code == 200
        dead = {m["order_ref"]: m for m in r.json()["items"]}
        assert set(dead) == {"xendit:b-400", "xendit:b-401", "xendit:b-404"}
        mid = dead["xendit:b-404"]["id"]
        r = await client.post(f"/v1/outbox/{mid}/retry", headers=bearer(key))
        assert r.status_code == 400
        assert "X-Ledger-Reason" in r.json()["detail"]
        partner.scripts["b-404"] = ["404", "ok"]  # the partner created the booking meanwhile
        r = await client.post(
            f"/v1/outbox/{mid}/retry",
            headers={**bearer(key), "x-ledger-reason": "booking created on the partner side"},
        )
        assert r.status_code == 202, r.text
        await wait_settled(database_url, len(scripts))
        r = await client.get(f"/v1/outbox/{mid}", headers=bearer(key))
        assert r.json()["state"] == "delivered"
        assert [a["status"] for a in r.json()["attempt_log"]] == [404, 200]
        assert partner.seen[mid].applied == 1
        r = await client.post(
            f"/v1/outbox/{mid}/retry", headers={**bearer(key), "x-ledger-reason": "again"}
        )
        assert r.status_code == 409
        metrics = (await client.get("/metrics", headers=bearer(key))).text
        assert 'ledger_outbox_attempts_total{kind="partner",outcome="dead"}' in metrics
        assert 'ledger_outbox_attempts_total{kind="partner",outcome="retry"}' in metrics
        events = (
            await client.get(
                "/v1/events", headers=bearer(await make_key(database_url, "audit:read"))
            )
        ).json()
        actions = [e for e in events["items"] if "outbox.retry" in json.dumps(e["data"])]
        assert len(actions) == 1
        assert actions[0]["data"]["target"] == mid
        assert actions[0]["data"]["reason"] == "booking created on the partner side"


async def test_payload_is_exactly_the_reference_shape(partner, database_url):
    app = create_app(outbox_settings(partner.url), database_url=database_url)
    async with AsyncTestClient(app) as client:
        body, headers = xendit_invoice("b24a8a76-edb7-4b0c-950b-3144cc4d7ec6", 64000, 32000)
        assert (
            await client.post("/webhooks/xendit", content=body, headers=headers)
        ).status_code == 200
        # The rest is paid later on a second invoice: the partner hears booking.updated, LUNAS.
        body2 = body.replace(b'"inv-', b'"inv2-').replace(
            b'"paid_amount": 32000', b'"paid_amount": 64000'
        )
        assert (
            await client.post("/webhooks/xendit", content=body2, headers=headers)
        ).status_code == 200
        # A SETTLED for the same invoice and amount changes nothing the partner cares about.
        body3 = body2.replace(b'"PAID"', b'"SETTLED"')
        assert (
            await client.post("/webhooks/xendit", content=body3, headers=headers)
        ).status_code == 200
        # Nothing else may follow: a later booking's message is derived after anything the
        # three deliveries above could have made, so once it has settled every message for
        # the first booking (right or wrong) is in the table, settled too.
        later = signed("xendit", "PAID", order_id="b-later")
        assert (
            await client.post(later.path, content=later.body, headers=later.headers)
        ).status_code == 200
        every = await wait_settled(database_url, 3)
    rows = [r for r in every if r["order_ref"] != "xendit:b-later"]
    assert len(rows) == 2
    assert len(every) == 3
    sent = [json.loads(s.bodies[0]) for s in partner.seen.values()]
    sent = [b for b in sent if b["booking_id"] != "b-later"]
    assert len(sent) == 2
    sent.sort(key=lambda b: b["event"])
    assert sent[0] == {
        "event": "booking.paid",
        "booking_id": "b24a8a76-edb7-4b0c-950b-3144cc4d7ec6",
        "status": "DP",
        "paid_amount": 32000,
        "payment_method": "QRIS",
        "payment_details": {"invoice_id": "inv-b24a8a76-edb7-4b0c-950b-3144cc4d7ec6"},
        "timestamp": sent[0]["timestamp"],
    }
    assert list(sent[0]) == [
        "event",
        "booking_id",
        "status",
        "paid_amount",
        "payment_method",
        "payment_details",
        "timestamp",
    ]
    assert sent[0]["timestamp"].endswith("Z")
    assert len(sent[0]["timestamp"]) == 24
    assert sent[1]["event"] == "booking.updated"
    assert (sent[1]["status"], sent[1]["paid_amount"]) == ("LUNAS", 64000)


async def test_a_worker_killed_mid_send_loses_nothing(partner, database_url):
    """Worker A takes the message and dies while the partner is still working; after A's
    lease expires worker B sends it again, with the same idempotency id, and nothing ran
    concurrently."""
    partner.scripts = {"b-kill": ["hang", "ok"]}
    settings = outbox_settings(
        partner.url,
        LEDGER_RUN_OUTBOX="false",
        LEDGER_OUTBOX_LEASE="3",
        LEDGER_OUTBOX_TIMEOUT="10",
    )
    app = create_app(settings, database_url=database_url)
    async with AsyncTestClient(app) as client:
        d = signed("xendit", "PAID", order_id="b-kill")
        assert (await client.post(d.path, content=d.body, headers=d.headers)).status_code == 200
        # The app runs in the test client's own loop: the workers get a pool of their own.
        pool = await create_pool(database_url)
        await until(lambda: pool.fetchval("SELECT count(*) FROM outbox"), what="a message")
        a = Dispatcher(pool, settings)
        b = Dispatcher(pool, settings)
        await a.start()
        await until(lambda: partner.seen, what="A's attempt at the partner")
        lease_until = await pool.fetchval("SELECT lease_until FROM outbox")  # A's lease
        assert lease_until is not None
        await a.stop()  # killed mid-send: records nothing
        await b.start()
        try:
            rows = await wait_settled(database_url, 1)
        finally:
            await b.stop()
        attempts = await pool.fetch("SELECT * FROM outbox_attempts")
        await pool.close()
    (seen,) = partner.seen.values()
    assert rows[0]["state"] == "delivered"
    assert rows[0]["attempts"] == 2
    assert len(seen.bodies) == 2
    assert seen.applied == 1
    assert seen.max_in_flight == 1
    assert seen.stamps[1] >= lease_until, "B waited for A's lease to expire"
    assert [a["outcome"] for a in attempts] == ["delivered"]  # A's attempt never finished


async def test_a_rebuild_sends_nothing_twice(partner, database_url):
    """Re-deriving the outbox from the whole log (what a rebuild does) inserts nothing new."""
    from ledger.projections.outbox import PROJECTION
    from ledger.store.eventstore import EventStore

    app = create_app(outbox_settings(partner.url), database_url=database_url)
    async with AsyncTestClient(app) as client:
        for booking in ("r-1", "r-2"):
            d = signed("xendit", "PAID", order_id=booking)
            assert (await client.post(d.path, content=d.body, headers=d.headers)).status_code == 200
        before = await wait_settled(database_url, 2)
        pool = await create_pool(database_url, as_app_role=False)
        records = await EventStore(pool).read_after(0, 1000)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE SCHEMA rebuild_check")
            await conn.execute("SET LOCAL search_path TO rebuild_check, public")
            await conn.execute(PROJECTION.schema_sql)
            await PROJECTION.apply(conn, records)
            after = await conn.fetch("SELECT id, state FROM public.outbox ORDER BY created_at")
        # And the real thing: an operator rebuilds the outbox projection through the API.
        key = await make_key(database_url, "ops:admin")
        r = await client.post(
            "/v1/projections/outbox/rebuild",
            headers={**bearer(key), "x-ledger-reason": "test rebuild"},
        )
        assert r.status_code == 202, r.text
        await wait_rebuilt(client, key, r.json()["generation"])
        # A message the rebuild made pending again would be sent before a later booking's
        # (made after the rebuild went live) settles: wait for that one, not for a while.
        later = signed("xendit", "PAID", order_id="r-later")
        assert (
            await client.post(later.path, content=later.body, headers=later.headers)
        ).status_code == 200
        await wait_settled(database_url, 3)
        rebuilt = await pool.fetch(
            "SELECT id, state FROM public.outbox WHERE order_ref <> 'xendit:r-later'"
            " ORDER BY created_at"
        )
        await pool.close()
    assert [(r["id"], r["state"]) for r in after] == [(r["id"], "delivered") for r in before]
    assert [tuple(r) for r in rebuilt] == [tuple(r) for r in after]
    assert len(partner.seen) == 3
    assert all(s.applied == 1 and len(s.bodies) == 1 for s in partner.seen.values())


async def test_cli_lists_dead_letters_and_retries_with_a_reason(partner, database_url):
    partner.scripts = {"b-cli": ["404", "ok"]}
    app = create_app(outbox_settings(partner.url), database_url=database_url)
    env = {**os.environ, **support.SECRETS, "LEDGER_DATABASE_URL": database_url}

    def ledger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "ledger"), "outbox", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    async with AsyncTestClient(app) as client:
        d = signed("xendit", "PAID", order_id="b-cli")
        assert (await client.post(d.path, content=d.body, headers=d.headers)).status_code == 200
        (row,) = await wait_settled(database_url, 1)
        assert row["state"] == "dead"
        out = await asyncio.to_thread(ledger, "list", "--state", "dead")
        assert out.returncode == 0, out.stderr
        assert str(row["id"]) in out.stdout
        assert "HTTP 404" in out.stdout
        out = await asyncio.to_thread(ledger, "retry", str(row["id"]), "--reason", " ")
        assert out.returncode != 0
        assert "reason" in out.stderr
        out = await asyncio.to_thread(
            ledger, "retry", str(row["id"]), "--reason", "partner fixed the booking"
        )
        assert out.returncode == 0, out.stderr
        (row,) = await wait_settled(database_url, 1)
        assert row["state"] == "delivered"
        out = await asyncio.to_thread(ledger, "show", str(row["id"]))
        assert "status=404" in out.stdout
        assert "status=200" in out.stdout
    conn = await asyncpg.connect(database_url)
    try:
        states = await conn.fetch("SELECT state FROM stored_events WHERE topic LIKE '%Operator%'")
    finally:
        await conn.close()
    reasons = [json.loads(s["state"])["reason"] for s in states]
    assert "partner fixed the booking" in reasons


async def test_old_events_make_no_messages(partner, database_url):
    """Moving the partner to a new URL changes message ids; a rebuild after that must not
    re-sync every old booking: events older than LEDGER_OUTBOX_MAX_AGE are folded but make
    no message. A new payment still does."""
    d = signed("xendit", "PAID", order_id="old-1")
    app = create_app(outbox_settings(partner.url), database_url=database_url)
    async with AsyncTestClient(app) as client:
        assert (await client.post(d.path, content=d.body, headers=d.headers)).status_code == 200
        await wait_settled(database_url, 1)
    acked = datetime.now(UTC)  # old-1 was recorded before this
    # The rule is about the clock: let old-1 grow older than the limit below. The limit is
    # wide, so that new-1 (recorded just before it is folded) is young on a slow machine too.
    max_age = 5.0
    await until(lambda: (datetime.now(UTC) - acked).total_seconds() > max_age, every=0.2)

    moved = Partner()
    await moved.start()
    try:
        settings = outbox_settings(moved.url, LEDGER_OUTBOX_MAX_AGE=str(max_age))
        async with AsyncTestClient(create_app(settings, database_url=database_url)) as client:
            key = await make_key(database_url, "ops:admin")
            r = await client.post(
                "/v1/projections/outbox/rebuild",
                headers={**bearer(key), "x-ledger-reason": "test rebuild"},
            )
            await wait_rebuilt(client, key, r.json()["generation"])
            new = signed("xendit", "PAID", order_id="new-1")
            r = await client.post(new.path, content=new.body, headers=new.headers)
            assert r.status_code == 200
            rows = await wait_settled(database_url, 2)
    finally:
        await moved.stop()
    assert [r["order_ref"] for r in rows] == ["xendit:old-1", "xendit:new-1"]
    assert [json.loads(b.bodies[0])["booking_id"] for b in moved.seen.values()] == ["new-1"]
    assert [json.loads(b.bodies[0])["booking_id"] for b in partner.seen.values()] == ["old-1"]


async def test_competing_dispatchers_send_each_message_once(partner, database_url):
    """Three dispatchers (as three processes would run them) drain 120 messages: leases
    give each message to exactly one worker, so each is sent exactly once."""
    settings = outbox_settings(
        partner.url, LEDGER_OUTBOX_WORKERS="2", LEDGER_OUTBOX_BATCH="8", LEDGER_OUTBOX_TIMEOUT="5"
    )
    ids = [uuid.uuid4() for _ in range(120)]
    pools = [await create_pool(database_url, min_size=1, max_size=3) for _ in range(3)]
    try:
        await pools[0].execute(
            "INSERT INTO outbox (id, kind, target, source_event_id, source_position, payload)"
            " SELECT id, 'partner', $2, id, 0, convert_to("
            "   json_build_object('event', 'booking.paid', 'booking_id', id::text)::text, 'UTF8')"
            " FROM unnest($1::uuid[]) AS t(id)",
            ids,
            partner.url,
        )
        dispatchers = [Dispatcher(p, settings, database_url=database_url) for p in pools]
        await asyncio.gather(*(d.start() for d in dispatchers))
        try:
            rows = await wait_settled(database_url, len(ids))
        finally:
            await asyncio.gather(*(d.stop() for d in dispatchers))
    finally:
        for p in pools:
            await p.close()
    assert all(r["state"] == "delivered" and r["attempts"] == 1 for r in rows)
    assert {uuid.UUID(k) for k in partner.seen} == set(ids)
    assert all(len(s.bodies) == 1 and s.applied == 1 for s in partner.seen.values())
    assert sum(1 for d in dispatchers if d.sent) >= 2, "the work was shared"
