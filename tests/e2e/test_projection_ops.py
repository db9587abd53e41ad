"""Projection operations through the real HTTP app and the real CLI processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from ledger.app import create_app
from ledger.config import Settings
from ledger.database import create_pool
from ledger.readmodels.access import ReadModels
from tests.support import PATIENCE, SECRETS, bearer, live_server, make_key, signed, until
from tests.support.readmodels import Counting, seed


@pytest.fixture
async def ops_client(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, database_url: str
) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The real app whose runner (and ops routes) know one test projection."""
    proj = Counting()
    monkeypatch.setattr("ledger.app.installed_projections", lambda *_: {proj.name: proj})
    app = create_app(settings, database_url=database_url)
    async with AsyncTestClient(app) as c:
        yield c


async def _status(client, key: str, **params: str) -> dict:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/projections", headers=bearer(key), params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_status_lag_digest_and_blue_green_rebuild_over_http(ops_client, database_url):
    client = ops_client
    admin = await make_key(database_url, "ops:admin")
    auditor = await make_key(database_url, "audit:read")
    assert (await client.get("/v1/projections")).status_code == 401
    r = await client.get("/v1/projections", headers=bearer(auditor))
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")

    last = 0
    for provider, event in [
        ("midtrans", "settlement"),
        ("mayar", "payment.success"),
        ("xendit", "PAID"),
        ("partner", "booking.paid"),
        ("midtrans", "pending"),
    ]:
        d = signed(provider, event)
        ack = await client.post(d.path, content=d.body, headers=d.headers)
        assert ack.status_code == 200, ack.text
        last = ack.json()["position"]

    async def caught_up() -> bool:
        [item] = (await _status(client, admin))["items"]
        return item["position"] >= last

    await until(caught_up)
    body = await _status(client, admin, digest="true")
    [item] = body["items"]
    assert body["head"] == last
    assert item["name"] == "test_counts"
    assert item["version"] == 1
    assert item["live_generation"] == 1
    assert item["building_generation"] is None
    assert (item["lag_events"], item["lag_seconds"], item["state"]) == (0, 0, "running")
    assert re.fullmatch(r"[0-9a-f]{64}", item["digest"])
    live_digest = item["digest"]
    assert "digest" not in (await _status(client, admin))["items"][0] or (
        (await _status(client, admin))["items"][0]["digest"] is None
    )

    missing = await client.post(
        "/v1/projections/nope/rebuild", headers={**bearer(admin), "x-ledger-reason": "test rebuild"}
    )
    assert missing.status_code == 404
    assert "nope" in missing.json()["detail"]
    assert (
        await client.post("/v1/projections/test_counts/rebuild", headers=bearer(auditor))
    ).status_code == 403

    no_reason = await client.post("/v1/projections/test_counts/rebuild", headers=bearer(admin))
    assert no_reason.status_code == 400
    assert "X-Ledger-Reason" in no_reason.json()["detail"]

    r = await client.post(
        "/v1/projections/test_counts/rebuild",
        headers={**bearer(admin), "x-ledger-reason": "test rebuild"},
    )
    assert r.status_code == 202, r.text
    conn = await asyncpg.connect(database_url)
    try:
        trail = [
            json.loads(row["state"])
            for row in await conn.fetch(
                "SELECT state FROM stored_events WHERE topic = 'ledger.domain:OperatorAction.Recorded'"
            )
        ]
    finally:
        await conn.close()
    assert [(t["action"], t["target"], t["reason"]) for t in trail] == [
        ("projection.rebuild", "test_counts", "test rebuild")
    ]
    started = r.json()
    assert started == {
        "name": "test_counts",
        "generation": 2,
        "live_generation": 1,
        "started": True,
    }

    async def switched() -> bool:
        [item] = (await _status(client, admin))["items"]
        return item["live_generation"] == 2 and item["building_generation"] is None

    await until(switched)
    one = await client.get("/v1/projections/test_counts?digest=true", headers=bearer(admin))
    assert one.status_code == 200
    assert one.json()["digest"] == live_digest
    assert one.json()["position"] == last + 1  # the rebuild's operator event is in the log
    assert (await client.get("/v1/projections/nope", headers=bearer(admin))).status_code == 404


def _ledger(database_url: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    env = {**os.environ, **SECRETS, "LEDGER_DATABASE_URL": database_url}
    env.pop("LEDGER_HOME", None)
    return subprocess.Popen(
        [sys.executable, "-c", "from ledger.cli import main; main()", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def _run(database_url: str, *args: str) -> tuple[int, str, str]:
    p = _ledger(database_url, *args)
    out, err = p.communicate(timeout=60)
    return p.returncode, out, err


async def test_cli_status_and_rebuild_match_digests(client, database_url):
    """``ledger projections rebuild NAME`` on the real projections of this code base: the
    new generation's digest equals the live one's."""
    last = 0
    for i, (provider, event, opts) in enumerate(
        [
            ("mayar", "payment.success", {"customer": "a@b.c", "package": "silver"}),
            ("mayar", "payment.success", {"customer": "a@b.c", "package": "gold"}),
            ("mayar", "payment.success", {"customer": "z@b.c", "package": "silver"}),
            ("midtrans", "settlement", {"order_id": "INV-1"}),
            ("xendit", "PAID", {}),
            ("partner", "booking.paid", {}),
        ]
    ):
        d = signed(provider, event, **opts)
        ack = await client.post(d.path, content=d.body, headers=d.headers)
        assert ack.status_code == 200, (i, ack.text)
        last = ack.json()["position"]
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        await _check_cli_rebuild(database_url, ReadModels(pool), last)
    finally:
        await pool.close()


async def _check_cli_rebuild(database_url: str, rm: ReadModels, last: int) -> None:
    assert await rm.wait_for("token_balances", last, timeout=PATIENCE)

    code, out, err = await asyncio.to_thread(
        _run, database_url, "projections", "status", "--digest"
    )
    assert code == 0, err
    assert re.search(r"^token_balances\s+\d+\s+g1\s+-\s+", out, re.MULTILINE), out
    before = re.search(r"^token_balances: digest (\S+)$", out, re.MULTILINE)
    assert before is not None, out

    code, out, err = await asyncio.to_thread(
        _run, database_url, "projections", "rebuild", "token_balances", "--reason", "test rebuild"
    )
    assert code == 0, err
    assert "rebuild of token_balances started generation 2" in out
    assert re.search(r"\[#+\] 100%  \d+/\d+ events  [\d,]+ ev/s  ETA 00:00  in ", err), err
    after = re.search(r"generation 2 of token_balances is live; digest (\S+)", out)
    assert after is not None, out
    assert after.group(1) == before.group(1)

    [st] = [s for s in await rm.status() if s.name == "token_balances"]
    # The rebuild's own operator event follows the deliveries in the log.
    assert (st.live_generation, st.building_generation, st.position) == (2, None, last + 1)
    async with rm.reading("token_balances") as conn:
        assert await conn.fetchval("SELECT current_schema()") == "p_token_balances_g2"


async def _holder(url: str) -> int | None:
    """The OS pid of the worker holding test_counts' generation 1 (from its app name)."""
    conn = await asyncpg.connect(url)
    try:
        name = await conn.fetchval(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() "
            "AND a.application_name LIKE 'ledger-worker-%' LIMIT 1"
        )
    finally:
        await conn.close()
    return int(name.rpartition("-")[2]) if name else None


@pytest.mark.slow
async def test_worker_processes_take_over_when_one_is_killed(database_url):
    """Two ``ledger worker`` processes; SIGKILL the one applying; the other carries on,
    and SIGTERM stops a worker cleanly."""
    pool = await create_pool(database_url, min_size=1, max_size=2)
    rm = ReadModels(pool)
    workers = [_ledger(database_url, "worker"), _ledger(database_url, "worker")]
    try:
        head = await seed(database_url, 200)
        await until(lambda: _reached(rm, "token_balances", head))
        holder = await _holder(database_url)
        assert holder in {w.pid for w in workers}
        victim = next(w for w in workers if w.pid == holder)
        survivor = next(w for w in workers if w.pid != holder)
        victim.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait, 10)
        head = await seed(database_url, 200, start=200)
        await until(lambda: _reached(rm, "token_balances", head))
        assert await _holder(database_url) == survivor.pid
        survivor.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(survivor.communicate, None, 15)
        assert survivor.returncode == 0, err
        assert "worker stopped" in out
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(5)
        await pool.close()


async def _reached(rm: ReadModels, name: str, position: int) -> bool:
    try:
        return await rm.position(name) >= position
    except asyncpg.PostgresError:
        return False


async def test_every_real_projection_rebuilds_to_the_same_digest(client, database_url):
    """POST rebuild for each projection of this code base; after the switch each digest
    equals the one before (same code, same log)."""
    admin = await make_key(database_url, "ops:admin")
    for provider, event, opts in [
        ("mayar", "payment.success", {"customer": "a@b.c", "package": "silver"}),
        ("mayar", "payment.success", {"customer": "b@b.c", "package": "platinum"}),
        ("mayar", "subscription.activated", {"customer": "a@b.c"}),
        ("midtrans", "pending", {"order_id": "INV-7"}),
        ("midtrans", "settlement", {"order_id": "INV-7"}),
        ("xendit", "PAID", {}),
        ("partner", "booking.paid", {}),
    ]:
        d = signed(provider, event, **opts)
        ack = await client.post(d.path, content=d.body, headers=d.headers)
        assert ack.status_code == 200, ack.text

    async def all_caught_up() -> bool:
        body = await _status(client, admin)
        return all(i["lag_events"] == 0 for i in body["items"])

    await until(all_caught_up)
    before = {i["name"]: i for i in (await _status(client, admin, digest="true"))["items"]}
    assert {"token_balances", "subscriptions", "orders", "review"} <= set(before)
    for name in before:
        r = await client.post(
            f"/v1/projections/{name}/rebuild",
            headers={**bearer(admin), "x-ledger-reason": "test rebuild"},
        )
        assert r.status_code == 202, r.text
        assert r.json()["generation"] == before[name]["live_generation"] + 1

    async def all_switched() -> bool:
        items = (await _status(client, admin))["items"]
        return all(
            i["building_generation"] is None
            and i["live_generation"] == before[i["name"]]["live_generation"] + 1
            for i in items
        )

    await until(all_switched)
    after = {i["name"]: i for i in (await _status(client, admin, digest="true"))["items"]}
    assert {n: i["digest"] for n, i in after.items()} == {n: i["digest"] for n, i in before.items()}
    assert all(i["state"] == "running" for i in after.values())


async def test_a_worker_alone_derives_and_delivers_outbox_messages(database_url):
    """``serve`` with no background components (ingest only) plus one ``ledger worker``: the
    worker's outbox projection knows its targets, so a paid booking reaches the partner."""
    received: list[bytes] = []

    async def partner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        received.append(await reader.readexactly(length))
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{"success":true}')
        await writer.drain()
        writer.close()

    sink = await asyncio.start_server(partner, "127.0.0.1", 0)
    port = sink.sockets[0].getsockname()[1]
    off = {"LEDGER_RUN_PROJECTIONS": "false", "LEDGER_RUN_OUTBOX": "false"}
    env = {"LEDGER_PARTNER_SYNC_URL": f"http://127.0.0.1:{port}/sync"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "ledger", "worker"],
        env={**os.environ, **SECRETS, **env, "LEDGER_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        async with live_server(database_url, **off) as http:
            d = signed("xendit", "PAID")
            assert (await http.post(d.path, content=d.body, headers=d.headers)).status_code == 200
            await until(lambda: received, what="the worker delivering the partner sync")
        assert len(received) == 1, "the worker delivered the partner sync more than once"
        assert b'"booking.paid"' in received[0]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)
        sink.close()
