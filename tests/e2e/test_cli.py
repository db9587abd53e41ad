"""The ``ledger`` command as a user runs it: a subprocess against the test database."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import bearer, signed
from tests.support.servers import LEDGER, ServerProcess, free_port, ledger_env

# ``--reason`` is required: key creation is recorded in the operator trail.
KEYS_CREATE = ("keys", "create", "--name", "x", "--reason", "e2e test")
EVENTS = {
    "midtrans": "settlement",
    "mayar": "payment.success",
    "xendit": "PAID",
    "partner": "booking.paid",
}


def ledger(database_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LEDGER, *args],
        env=ledger_env(database_url, home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_keys_create_prints_only_a_working_key(client, database_url, tmp_path):
    proc = ledger(database_url, tmp_path, *KEYS_CREATE, "--scope", "audit:read")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    key = lines[0]
    assert key.strip() == key
    assert len(key) >= 32
    assert key not in proc.stderr  # shown once, on stdout only

    r = await client.get("/v1/events?after=0", headers=bearer(key))
    assert r.status_code == 200, r.text
    assert (await client.get("/v1/events?after=0")).status_code == 401
    # The key carries only the scope asked for.
    assert (await client.get("/metrics", headers=bearer(key))).status_code == 403

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT name, scopes FROM api_keys WHERE key_hash = $1",
            hashlib.sha256(key.encode()).digest(),
        )
        as_text = await conn.fetchval("SELECT string_agg(t::text, ' ') FROM api_keys t")
    finally:
        await conn.close()
    assert row is not None
    assert (row["name"], list(row["scopes"])) == ("x", ["audit:read"])
    assert key not in as_text  # stored only as a hash


@pytest.mark.parametrize("scope", ["audit:write", "AUDIT:READ", ""])
def test_keys_create_with_unknown_scope_fails_clearly(database_url, tmp_path, scope):
    proc = ledger(database_url, tmp_path, *KEYS_CREATE, "--scope", scope)
    assert proc.returncode != 0
    assert proc.stdout == ""  # no key printed
    assert "scope" in proc.stderr
    assert "audit:read" in proc.stderr  # names the valid choices
    assert "Traceback" not in proc.stderr


async def test_trigger_reaches_a_running_server_for_every_provider(database_url, tmp_path):
    server = ServerProcess(database_url, tmp_path / "server")
    try:
        await server.start()
        for provider, event in EVENTS.items():
            proc = ledger(
                database_url, tmp_path / "cli", "trigger", provider, event, "--url", server.url
            )
            assert proc.returncode == 0, (proc.stdout, proc.stderr)
            status, _, body = proc.stdout.strip().partition(" ")
            assert status == "200", proc.stdout
            assert json.loads(body)["status"] == "accepted"
    finally:
        server.stop()

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT convert_from(state, 'UTF8')::jsonb AS s FROM stored_events "
            "WHERE topic = 'ledger.domain:Delivery.Received' ORDER BY notification_id"
        )
    finally:
        await conn.close()
    states = [json.loads(r["s"]) for r in rows]
    assert [s["provider"] for s in states] == list(EVENTS)
    assert [s["kind"] for s in states] == list(EVENTS.values())
    for s in states:  # signed with the secrets from the environment, none of them kept
        body = base64.b64decode(s["body_b64"]).decode()
        assert "test-" not in json.dumps(s["headers"])
        assert "test-partner-secret" not in body


def test_trigger_unknown_event_fails_clearly(database_url, tmp_path):
    proc = ledger(database_url, tmp_path, "trigger", "midtrans", "paid-ish", "--url", "http://x")
    assert proc.returncode != 0
    assert "paid-ish" in proc.stderr
    assert "settlement" in proc.stderr  # lists the valid statuses
    assert "Traceback" not in proc.stderr


def test_trigger_without_a_server_says_so(database_url, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    proc = ledger(database_url, tmp_path, "trigger", "xendit", "PAID", "--url", url)
    assert proc.returncode != 0
    assert f"could not reach {url}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_trigger_bad_amount_fails_clearly(database_url, tmp_path):
    proc = ledger(database_url, tmp_path, "trigger", "mayar", "payment.success", "--amount", "12,5")
    assert proc.returncode != 0
    assert "--amount '12,5' is not a decimal number" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_serve_with_two_worker_processes_records_every_delivery_once(database_url, tmp_path):
    """``ledger serve --workers 2``: two processes append to one log (and both run the
    background components); 40 distinct deliveries, sent 20 at a time, all land once."""
    server = ServerProcess(database_url, tmp_path / "server", extra_args=("--workers", "2"))
    deliveries = [signed("midtrans", "settlement") for _ in range(40)]
    try:
        await server.start()
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            sem = asyncio.Semaphore(20)

            async def send(d: Any) -> int:
                async with sem:
                    r = await http.post(d.path, content=d.body, headers=d.headers)
                    return r.status_code

            codes = await asyncio.gather(*(send(d) for d in deliveries))
    finally:
        server.stop()
    assert set(codes) == {200}
    conn = await asyncpg.connect(database_url)
    try:
        n = await conn.fetchval("SELECT count(DISTINCT originator_id) FROM stored_events")
        total = await conn.fetchval("SELECT count(*) FROM stored_events")
    finally:
        await conn.close()
    assert n == total == 40
