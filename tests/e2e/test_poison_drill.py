"""The poisoned-event drill through the real app (ADR 0010): an event no consumer should stall
on is put straight into the log, then 1,000 clean ones; every projection and the audit
index reach the head, every clean event is applied, the poisoned one is listed for
operators, the audit routes answer, and a retry re-applies what a fix made applicable."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from ledger.app import create_app
from ledger.config import Settings
from ledger.domain.events import (
    OPERATOR_ACTION_TOPIC,
    RECEIVED_TOPIC,
)
from ledger.readmodels.contract import Conn
from ledger.store.eventstore import StoredRecord
from tests.support import SECRETS, bearer, live_server, make_key, until
from tests.support.browser import CHROMIUM, chromium
from tests.support.db import fetchval as scalar
from tests.support.readmodels import append
from tests.support.readmodels import midtrans_paid as stored_midtrans_paid

DRILL_PATIENCE = 120.0  # a generous bound: the drill waits on conditions, never on the clock
CLEAN = 1000


def midtrans_paid(order_id: str) -> bytes:
    """A Midtrans settlement as ingest stored it before it refused unsafe text."""
    return stored_midtrans_paid(order_id, scheme="midtrans-sha512")


async def test_poisoned_event_drill(client, database_url):
    admin = bearer(await make_key(database_url, "ops:admin", "audit:read"))
    started = time.monotonic()
    [poisoned] = await append(database_url, [midtrans_paid("INV\x00DRILL")])
    clean_ids = [f"CLEAN-{i:04d}-{uuid.uuid4().hex[:6]}" for i in range(CLEAN)]
    clean = await append(database_url, [midtrans_paid(o) for o in clean_ids])
    head = clean[-1][0]
    status: dict[str, Any] = {}

    async def everyone_at_head() -> bool:
        r = await client.get("/v1/projections", headers=admin)
        assert r.status_code == 200, r.text
        status.update(r.json())
        return (
            bool(status["items"])
            and all(
                p["position"] >= head and p["building_generation"] is None for p in status["items"]
            )
            and status["audit_index"]["position"] >= head
        )

    await until(
        everyone_at_head,
        timeout=DRILL_PATIENCE,
        what="every projection and the audit index at the head",
    )
    elapsed = time.monotonic() - started
    print(  # the drill's figure (docs/reliability.md)
        f"\npoisoned-event drill: 1 poisoned + {CLEAN} clean events, all projections and the "
        f"audit index at the head {elapsed:.2f} s after the append",
        flush=True,
    )

    # Every clean event was applied: by the outbox projection, the orders projection and
    # the audit index (the consumers that used to stall on the poisoned one).
    items = {p["name"]: p for p in status["items"]}
    outbox_schema = f"p_outbox_g{items['outbox']['live_generation']}"
    orders_schema = f"p_orders_g{items['orders']['live_generation']}"
    assert (
        await scalar(
            database_url,
            f"SELECT count(*) FROM {outbox_schema}.orders WHERE order_ref LIKE 'midtrans:CLEAN-%'",
        )
        == CLEAN
    )
    assert (
        await scalar(
            database_url,
            f"SELECT count(DISTINCT order_id) FROM {orders_schema}.order_history "
            "WHERE order_id LIKE 'CLEAN-%'",
        )
        == CLEAN
    )
    assert (
        await scalar(database_url, "SELECT count(*) FROM audit_index WHERE order_id LIKE 'CLEAN-%'")
        == CLEAN
    )
    for p in status["items"]:
        assert p["state"] == "running", p

    # The poisoned event is listed, for the consumers that could not apply it.
    position, event_id = poisoned[0], str(poisoned[1])
    assert items["outbox"]["poisoned"] == 1
    [entry] = items["outbox"]["poisoned_events"]
    assert (entry["position"], entry["event_id"]) == (position, event_id)
    # The outbox folds a batch in memory and refuses NUL itself, where PostgreSQL's text would
    # have refused it (projections/outbox.py, ``stored``): the same event is set aside.
    assert entry["error"] == "Unstorable: text with a NUL character cannot be stored"
    assert entry["first_seen"] <= entry["last_seen"]
    assert entry["attempts"] == 3
    assert status["audit_index"]["poisoned"] == 1
    assert status["audit_index"]["poisoned_events"][0]["position"] == position
    r = await client.get("/v1/review", params={"reason": "poisoned"}, headers=admin)
    assert r.status_code == 200, r.text
    review = r.json()["items"]
    assert {(i["position"], i["reason"]) for i in review} == {
        (position, "poisoned:audit_index"),
        (position, "poisoned:outbox"),
    }
    assert all(i["link"] == f"/v1/events/{event_id}" for i in review)
    assert review[0]["provider"] == "midtrans"
    r = await client.get("/v1/review", params={"after": position - 1}, headers=admin)
    assert {i["reason"] for i in r.json()["items"]} >= {"poisoned:outbox", "poisoned:audit_index"}
    r = await client.get("/v1/review", params={"reason": "poisoned:outbox"}, headers=admin)
    assert [i["reason"] for i in r.json()["items"]] == ["poisoned:outbox"]

    # The audit routes answer (they used to answer 500 on the poisoned event).
    today = datetime.now(UTC).date().isoformat()
    for path, params in [
        ("/v1/audit/head", {}),
        ("/v1/audit/events", {"limit": "1000"}),
        ("/v1/audit/events", {"order_id": clean_ids[0]}),
        ("/v1/audit/export", {"format": "jsonl"}),
        ("/v1/audit/summary", {"date": today}),
        (f"/v1/audit/orders/midtrans/{clean_ids[-1]}", {}),
    ]:
        r = await client.get(path, params=params, headers=admin)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    r = await client.get("/v1/audit/summary", params={"date": today}, headers=admin)
    [midtrans_day] = [d for d in r.json()["providers"] if d["provider"] == "midtrans"]
    assert midtrans_day["paid_orders"] == CLEAN


class Flaky:
    """A projection that cannot fold one event while ``bad`` is set (a bug fixed later)."""

    topics = (RECEIVED_TOPIC,)
    schema_sql = "CREATE TABLE seen (position bigint PRIMARY KEY);"
    name = "test_flaky"
    version = 1

    def __init__(self) -> None:
        self.bad: bytes | None = b"R-BAD"  # events whose state holds this cannot be folded

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        for r in records:
            if self.bad is not None and self.bad in base64.b64decode(
                msgspec.json.decode(r.state)["body_b64"]
            ):
                raise ValueError(f"cannot fold the event at position {r.position}")
        await conn.execute(
            "INSERT INTO seen SELECT unnest($1::bigint[])", [r.position for r in records]
        )

    async def digest(self, conn: Conn) -> str:
        return str(await conn.fetchval("SELECT count(*) FROM seen"))


@pytest.fixture
async def flaky_client(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, database_url: str
) -> AsyncIterator[tuple[AsyncTestClient, Flaky]]:  # type: ignore[type-arg]
    proj = Flaky()
    monkeypatch.setattr("ledger.app.installed_projections", lambda *_: {proj.name: proj})
    app = create_app(settings, database_url=database_url)
    async with AsyncTestClient(app) as c:
        yield c, proj


async def test_retry_over_http_resolves_after_a_fix(flaky_client, database_url):
    client, proj = flaky_client
    admin = bearer(await make_key(database_url, "ops:admin"))
    auditor = bearer(await make_key(database_url, "audit:read"))
    orders = [f"R-{i}" for i in range(40)]
    orders[20] = "R-BAD"
    rows = await append(database_url, [midtrans_paid(o) for o in orders])
    bad, head = rows[20][0], rows[-1][0]

    async def listed() -> bool:
        [item] = (await client.get("/v1/projections", headers=admin)).json()["items"]
        return item["position"] >= head and item["poisoned"] == 1

    await until(listed, what="the event set aside and the rest applied")
    url = f"/v1/projections/{proj.name}/retry"
    r = await client.post(url, headers=admin)
    assert r.status_code == 400
    assert r.json()["type"].endswith("reason-required")
    assert (await client.post(url, headers={**auditor, "x-ledger-reason": "x"})).status_code == 403
    r = await client.post("/v1/projections/nope/retry", headers={**admin, "x-ledger-reason": "x"})
    assert r.status_code == 404
    # Not fixed yet: it stays poisoned.
    r = await client.post(url, headers={**admin, "x-ledger-reason": "try before the fix"})
    assert r.status_code == 200, r.text
    assert (r.json()["resolved"], r.json()["still_poisoned"]) == ([], [bad])
    proj.bad = None  # the fix
    r = await client.post(url, headers={**admin, "x-ledger-reason": "fixed the fold"})
    assert r.status_code == 200, r.text
    assert (r.json()["resolved"], r.json()["still_poisoned"]) == ([bad], [])
    [item] = (await client.get("/v1/projections", headers=admin)).json()["items"]
    assert (item["poisoned"], item["poisoned_events"]) == (0, [])
    schema = f"p_{proj.name}_g{item['live_generation']}"
    assert await scalar(database_url, f"SELECT count(*) FROM {schema}.seen") == 40
    # Each retry is an operator action in the log, with its reason.
    reasons = await scalar(
        database_url,
        "SELECT array_agg(convert_from(state, 'UTF8')::jsonb ->> 'reason' "
        "ORDER BY notification_id) FROM stored_events WHERE topic = $1 "
        "AND convert_from(state, 'UTF8')::jsonb ->> 'action' = 'projection.retry'",
        OPERATOR_ACTION_TOPIC,
    )
    assert reasons == ["try before the fix", "fixed the fold"]
    # The audit index is a consumer too, by name.
    r = await client.post(
        "/v1/projections/audit_index/retry", headers={**admin, "x-ledger-reason": "check"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "audit_index"


def _cli(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, **SECRETS, "LEDGER_DATABASE_URL": database_url}
    env.pop("LEDGER_HOME", None)
    p = subprocess.run(
        [sys.executable, "-c", "from ledger.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return p.returncode, p.stdout, p.stderr


async def test_cli_lists_and_retries_poisoned_events(client, database_url):
    admin = bearer(await make_key(database_url, "ops:admin"))
    [poisoned] = await append(database_url, [midtrans_paid("INV\x00CLI")])
    [*_, last] = await append(database_url, [midtrans_paid(f"C-{i}") for i in range(5)])

    async def indexed() -> bool:
        r = await client.get("/v1/projections", headers=admin)
        return r.json()["audit_index"]["position"] >= last[0]

    await until(indexed, what="the audit index at the head")
    code, out, err = await asyncio.to_thread(_cli, database_url, "projections", "status")
    assert code == 0, err
    assert "audit_index: 1 poisoned event(s)" in out, out
    assert f"position {poisoned[0]} event {poisoned[1]}" in out, out
    code, _, err = await asyncio.to_thread(
        _cli, database_url, "projections", "retry", "audit_index"
    )
    assert code != 0  # --reason is required
    assert "--reason" in err
    code, out, err = await asyncio.to_thread(
        _cli, database_url, "projections", "retry", "audit_index", "--reason", "after the fix"
    )
    # PostgreSQL text still cannot hold NUL: it stays set aside, and the command says so.
    assert code == 1, (out, err)
    assert f"audit_index: 0 resolved [], 1 still poisoned [{poisoned[0]}]" in out
    code, _, err = await asyncio.to_thread(
        _cli, database_url, "projections", "retry", "nope", "--reason", "x"
    )
    assert code != 0
    assert "no projection named 'nope'" in err


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
async def test_admin_page_shows_poisoned_events_and_retries_them(database_url):
    """In real headless Chromium: the /admin panel lists what the outbox projection and the
    audit index set aside, and its retry button runs the retry route (with a reason)."""
    key = await make_key(database_url, "ops:admin", "audit:read")
    [poisoned] = await append(database_url, [midtrans_paid("INV\x00ADMIN")])
    await append(database_url, [midtrans_paid("ADMIN-CLEAN")])
    async with live_server(database_url) as http, chromium() as page:
        await page.call("Page.navigate", url=f"{http.base_url}/admin")
        await page.until("document.readyState === 'complete' && !!document.getElementById('key')")
        await page.js(
            f"document.getElementById('key').value = {json.dumps(key)};"
            "document.getElementById('login-form').requestSubmit(); true"
        )
        row = f'#poisoned tr[data-position="{poisoned[0]}"]'
        both = (
            f"!!document.querySelector('{row}[data-consumer=\"outbox\"]') && "
            f"!!document.querySelector('{row}[data-consumer=\"audit_index\"]')"
        )

        async def shown() -> bool:  # the page refreshes every 5 s; ask it sooner
            return bool(await page.js(f"({both}) || (loadLag(), false)"))

        await until(shown, what="the poisoned events shown on /admin")
        text = await page.js("document.getElementById('poisoned').textContent")
        assert "CharacterNotInRepertoireError" in text
        assert str(poisoned[1])[:8] in text
        assert await page.js("document.getElementById('poison-count').textContent") == "(2)"
        await page.js(
            "window.prompt = () => 'tried after the fix';"
            "document.querySelector('#poisoned button[data-consumer=\"audit_index\"]').click();"
            "true"
        )
        await page.until(
            "document.getElementById('poison-error').textContent === "
            "'audit_index: 0 resolved, 1 still poisoned'"
        )
