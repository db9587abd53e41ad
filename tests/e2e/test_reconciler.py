"""The background reconciler, ``ledger reconcile`` without ``--order-id`` and
``GET /v1/reconciliation`` (issue 10), against a loopback stand-in of the status APIs."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ledger.config import Settings
from ledger.domain.events import CHECKED_TOPIC
from ledger.reconcile.passes import LOCK_KEY
from tests.support import bearer, make_key, signed, until
from tests.support.db import SECRETS, connection
from tests.support.db import test_settings as known_settings
from tests.support.providerapis import StandIn, midtrans_status_body, provider_apis
from tests.support.readmodels import read_log
from tests.support.servers import LEDGER, free_port, ledger_env

MIDTRANS_KEY = SECRETS["LEDGER_MIDTRANS_SERVER_KEY"]
XENDIT_KEY = "xnd_development_test_secret"
TERMS = {"customer": "budi@example.com", "amount": "299000.00", "currency": "IDR"}


def reconciler_settings(api: str, **extra: str) -> Settings:
    """A fast reconciler: a pass every 0.2 s, registered orders asked about at once."""
    env = {
        "LEDGER_MIDTRANS_API_URL": api,
        "LEDGER_XENDIT_API_URL": api,
        "LEDGER_XENDIT_SECRET_KEY": XENDIT_KEY,
        "LEDGER_RECONCILE_INTERVAL": "0.2",
        "LEDGER_RECONCILE_AFTER": "0",
        "LEDGER_RECONCILE_RATE": "100",
    }
    return known_settings(**(env | extra))


@pytest.fixture
async def apis() -> AsyncIterator[StandIn]:
    async with provider_apis(MIDTRANS_KEY, XENDIT_KEY) as stand_in:
        yield stand_in


@pytest.fixture
def settings(apis: StandIn) -> Settings:
    return reconciler_settings(apis.url)


async def register(client: Any, database_url: str, order_id: str) -> None:
    key = await make_key(database_url, "orders:write")
    r = await client.put(
        f"/v1/orders/midtrans/{order_id}",
        content=json.dumps(TERMS).encode(),
        headers={**bearer(key), "content-type": "application/json"},
    )
    assert r.status_code == 201, r.text


async def deliver(client: Any, event: str, order_id: str, status: str | None = None) -> int:
    """A signed Midtrans notification; ``status`` replaces its transaction_status, which the
    signature does not cover (a replayed notification, edited)."""
    d = signed("midtrans", event, order_id=order_id, transaction_id="t-" + order_id)
    body = d.body
    if status is not None:
        obj = json.loads(body)
        obj["transaction_status"] = status
        body = json.dumps(obj).encode()
    r = await client.post(d.path, content=body, headers=d.headers)
    assert r.status_code == 200, r.text
    position: int = r.json()["position"]
    return position


async def order_status(client: Any, key: str, order_id: str) -> str | None:
    r = await client.get(f"/v1/orders/midtrans/{order_id}", headers=bearer(key))
    return r.json()["status"] if r.status_code == 200 else None


async def listed(client: Any, key: str, state: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/reconciliation?state={state}", headers=bearer(key))
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def metric(client: Any, key: str, name: str, **labels: str) -> float:
    r = await client.get("/metrics", headers=bearer(key))
    assert r.status_code == 200, r.text
    shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(shown)}\}} (\S+)$", r.text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_missed_settlement_of_a_registered_order_is_recovered(client, database_url, apis):
    key = await make_key(database_url, "audit:read")
    await register(client, database_url, "INV-BG1")
    # The settlement webhook never comes; Midtrans' status API knows the order is paid.
    apis.midtrans["INV-BG1"] = midtrans_status_body("INV-BG1", "settlement", MIDTRANS_KEY)

    await until(lambda: _is(order_status(client, key, "INV-BG1"), "paid"), what="order recovered")

    [item] = await until(lambda: listed(client, key, "missed"), what="listed as missed")
    assert (item["order_id"], item["reading"], item["provider_status"]) == (
        "INV-BG1",
        "paid",
        "settlement/accept",
    )
    assert item["resolution"] == "recovered: the order becomes paid"
    assert item["order"] == "/v1/orders/midtrans/INV-BG1"
    r = await client.get(item["link"], headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["topic"] == CHECKED_TOPIC
    assert (await day_counts(client, key, item["checked_at"]))["recovered"] == 1


async def day_counts(client: Any, key: str, checked_at: str) -> dict[str, Any]:
    """Midtrans' row of the daily summary of the day of ``checked_at`` (UTC)."""
    r = await client.get(f"/v1/audit/summary?date={checked_at[:10]}", headers=bearer(key))
    assert r.status_code == 200, r.text
    [row] = [p for p in r.json()["providers"] if p["provider"] == "midtrans"]
    return {k: row[k] for k in ("recovered", "unconfirmed", "mismatched")}


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_replayed_refund_is_unconfirmed_and_the_order_stays_paid(client, database_url, apis):
    key = await make_key(database_url, "audit:read")
    apis.midtrans["INV-BG2"] = midtrans_status_body("INV-BG2", "settlement", MIDTRANS_KEY)
    await deliver(client, "settlement", "INV-BG2")
    # A captured settlement replayed as a refund: same signature, same amount.
    await deliver(client, "settlement", "INV-BG2", status="refund")

    [item] = await until(lambda: listed(client, key, "unconfirmed"), what="refund unconfirmed")

    assert (item["order_id"], item["reading"], item["ledger_status"]) == ("INV-BG2", "paid", "paid")
    assert "the held refunded notification is not applied" in item["resolution"]
    r = await client.get(
        f"/v1/orders/midtrans/INV-BG2?min_position={item['position']}", headers=bearer(key)
    )
    o = r.json()
    assert o["status"] == "paid"
    assert [(h["status"], h["confirmation"]) for h in o["history"]][1] == (
        "refunded",
        "unconfirmed",
    )
    assert await day_counts(client, key, item["checked_at"]) == {
        "recovered": 0,
        "unconfirmed": 1,
        "mismatched": 0,
    }


async def test_api_down_means_try_later_and_the_service_stays_healthy(database_url):
    from litestar.testing import AsyncTestClient

    from ledger.app import create_app

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens: the stand-in is gone
    cfg = reconciler_settings(down, LEDGER_RECONCILE_ATTEMPTS="1", LEDGER_RECONCILE_TIMEOUT="1")
    admin = await make_key(database_url, "ops:admin", "audit:read")
    async with AsyncTestClient(create_app(cfg, database_url=database_url)) as client:
        before = await metric(
            client, admin, "ledger_reconcile_unavailable_total", provider="midtrans"
        )
        await register(client, database_url, "INV-BG3")

        async def tried() -> bool:
            now = await metric(
                client, admin, "ledger_reconcile_unavailable_total", provider="midtrans"
            )
            return now >= before + 2  # at least two passes found it down, and went on

        await until(tried, what="passes that found the API down")
        # Ingest goes on; nothing was recorded for the order; the service is ready.
        position = await deliver(client, "pending", "INV-BG3")
        r = await client.get(
            f"/v1/orders/midtrans/INV-BG3?min_position={position}", headers=bearer(admin)
        )
        assert r.json()["status"] == "pending"
        assert (await client.get("/ready")).status_code == 200
    assert not [r for r in await read_log(database_url) if r.topic == CHECKED_TOPIC]


async def test_a_pass_is_skipped_while_another_holds_the_lock(client, database_url, apis):
    admin = await make_key(database_url, "ops:admin", "audit:read")
    apis.midtrans["INV-BG4"] = midtrans_status_body("INV-BG4", "settlement", MIDTRANS_KEY)
    async with connection(database_url) as other:  # "another process" running a pass
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
        skipped = await metric(client, admin, "ledger_reconcile_passes_total", outcome="skipped")
        await register(client, database_url, "INV-BG4")

        async def skips() -> bool:
            now = await metric(client, admin, "ledger_reconcile_passes_total", outcome="skipped")
            return now >= skipped + 3

        await until(skips, what="passes skipped while the lock is held")
        assert apis.seen == []  # no pass asked anything
        assert await order_status(client, admin, "INV-BG4") != "paid"
        await other.fetchval("SELECT pg_advisory_unlock($1)", LOCK_KEY)
    await until(lambda: _is(order_status(client, admin, "INV-BG4"), "paid"), what="recovered after")


async def run_pass(database_url: str, home: Any, api: str) -> tuple[int, str, str]:
    """``ledger reconcile --reason`` (one pass now) as an async subprocess."""
    env = ledger_env(
        database_url,
        home,
        LEDGER_MIDTRANS_API_URL=api,
        LEDGER_XENDIT_API_URL=api,
        LEDGER_XENDIT_SECRET_KEY=XENDIT_KEY,
        LEDGER_RECONCILE_AFTER="0",
    )
    proc = await asyncio.create_subprocess_exec(
        LEDGER,
        "reconcile",
        "--reason",
        "nightly check",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_pass_over_the_candidates(database_url, tmp_path, apis):
    from litestar.testing import AsyncTestClient

    from ledger.app import create_app

    cfg = reconciler_settings(apis.url, LEDGER_RECONCILE_INTERVAL="0")  # the CLI alone
    key = await make_key(database_url, "audit:read")
    async with AsyncTestClient(create_app(cfg, database_url=database_url)) as client:
        await register(client, database_url, "INV-CLI1")
        await register(client, database_url, "INV-CLI2")
        apis.midtrans["INV-CLI1"] = midtrans_status_body("INV-CLI1", "settlement", MIDTRANS_KEY)
        # Wait until the orders projection lists both as candidates.
        await until(lambda: _is(order_status(client, key, "INV-CLI2"), "pending"), what="folded")

        async with connection(database_url) as other:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY)
            code, out, err = await run_pass(database_url, tmp_path, apis.url)
            assert code == 75, out + err
            assert "try later: another reconciliation pass is running" in err

        code, out, err = await run_pass(database_url, tmp_path, apis.url)

        assert code == 0, out + err
        lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("midtrans")}
        assert "ledger pending" in lines["INV-CLI1"]
        assert "provider paid (settlement/accept)" in lines["INV-CLI1"]
        assert "applied: the order becomes paid" in lines["INV-CLI1"]
        assert "the provider knows no such order" in lines["INV-CLI2"]
        assert "2 candidate(s), 2 checked" in out
        await until(lambda: _is(order_status(client, key, "INV-CLI1"), "paid"), what="paid")


async def test_reconciliation_params_are_bounded(client, database_url):
    key = await make_key(database_url, "audit:read")
    ok = await client.get("/v1/reconciliation", headers=bearer(key))
    assert ok.status_code == 200, ok.text
    assert ok.json()["items"] == []
    for query in (
        "state=bogus",
        "state=",
        "limit=0",
        "limit=1001",
        "after=-1",
        f"after={2**63}",
        "since=yesterday",
        "since=" + "9" * 80,
        "min_position=-5",
        "state=%00",
    ):
        r = await client.get(f"/v1/reconciliation?{query}", headers=bearer(key))
        assert r.status_code == 400, (query, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), query
    assert (await client.get("/v1/reconciliation")).status_code == 401
    writer = await make_key(database_url, "orders:write")
    assert (await client.get("/v1/reconciliation", headers=bearer(writer))).status_code == 403
