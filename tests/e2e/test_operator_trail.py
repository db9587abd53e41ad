"""The operator trail: key create/revoke need a reason and become events in the log,
visible in the audit search; revoked keys stop working."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from eventsourcing.persistence import Mapper, StoredEvent

from ledger.audit.keys import CACHE_SECONDS
from ledger.audit.trail import ReasonRequired, operator_event
from ledger.config import Settings
from ledger.database import create_pool
from ledger.domain.events import OPERATOR_ACTION_TOPIC, MsgspecTranscoder, OperatorAction
from ledger.store.eventstore import EventStore, GroupCommitter
from tests.support import bearer, make_key
from tests.support import test_settings as make_settings

LEDGER = str(Path(sys.executable).parent / "ledger")


@pytest.fixture
def settings() -> Settings:
    return make_settings(LEDGER_RUN_PROJECTIONS="false", LEDGER_RUN_OUTBOX="false")


async def ledger(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": database_url,
        "LEDGER_HOME": "/tmp/ledger-test-home",
    }
    return await asyncio.to_thread(
        subprocess.run,
        [LEDGER, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def operator_events(url: str) -> list[OperatorAction.Recorded]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT originator_id, originator_version, topic, state FROM stored_events "
            "WHERE topic = $1 ORDER BY notification_id",
            OPERATOR_ACTION_TOPIC,
        )
    finally:
        await conn.close()
    mapper = Mapper(transcoder=MsgspecTranscoder())
    found = []
    for r in rows:
        event = mapper.to_domain_event(StoredEvent(r[0], r[1], r[2], bytes(r[3])))
        assert type(event) is OperatorAction.Recorded
        found.append(event)
    return found


async def test_cli_key_lifecycle_is_recorded_with_reasons(client, database_url):
    proc = await ledger(database_url, "keys", "create", "--name", "fin", "--scope", "audit:read")
    assert proc.returncode == 2
    assert "--reason" in proc.stderr
    proc = await ledger(
        database_url, "keys", "create", "--name", "fin", "--scope", "audit:read", "--reason", "  "
    )
    assert proc.returncode == 2
    assert await operator_events(database_url) == []

    proc = await ledger(
        database_url,
        "keys",
        "create",
        "--name",
        "fin",
        "--scope",
        "audit:read",
        "--reason",
        "finance month-end close",
    )
    assert proc.returncode == 0, proc.stderr
    key = proc.stdout.strip()
    key_id = key.split("_")[1]
    assert (await client.get("/v1/audit/head", headers=bearer(key))).status_code == 200
    [created] = await operator_events(database_url)
    assert created.action == "key.create"
    assert created.target == f"api_key:{key_id}"
    assert created.key_id.startswith("cli:")
    assert "finance month-end close" in created.reason

    proc = await ledger(database_url, "keys", "list")
    assert proc.returncode == 0, proc.stderr
    assert key_id in proc.stdout
    assert "fin\taudit:read" in proc.stdout
    assert key.split("_", 2)[2] not in proc.stdout  # never the secret

    proc = await ledger(database_url, "keys", "revoke", key_id)
    assert proc.returncode == 2
    proc = await ledger(database_url, "keys", "revoke", key_id, "--reason", "laptop stolen")
    assert proc.returncode == 0, proc.stderr
    # Another process revoked it: this app notices within its cache lifetime.
    deadline = asyncio.get_running_loop().time() + CACHE_SECONDS + 2
    while (await client.get("/v1/audit/head", headers=bearer(key))).status_code != 401:
        assert asyncio.get_running_loop().time() < deadline, "revoked key still accepted"
        await asyncio.sleep(0.5)
    proc = await ledger(database_url, "keys", "revoke", key_id, "--reason", "again")
    assert proc.returncode == 0
    assert "already revoked" in proc.stdout
    proc = await ledger(database_url, "keys", "revoke", "nope", "--reason", "typo")
    assert proc.returncode == 1
    events = await operator_events(database_url)
    assert [e.action for e in events] == ["key.create", "key.revoke"]
    assert events[1].reason == "laptop stolen"

    proc = await ledger(database_url, "keys", "list")
    line = next(x for x in proc.stdout.splitlines() if x.startswith(key_id))
    assert line.split("\t")[4] != "-"  # revoked_at shown


async def test_http_revoke_needs_a_reason_and_takes_effect_at_once(client, database_url):
    admin_key = await make_key(database_url, "ops:admin", name="admin")
    admin = bearer(admin_key)
    victim = await make_key(database_url, "audit:read", name="victim")
    victim_id = victim.split("_")[1]
    assert (await client.get("/v1/audit/head", headers=bearer(victim))).status_code == 200

    r = await client.post(f"/v1/keys/{victim_id}/revoke", headers=admin)
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "X-Ledger-Reason" in r.json()["detail"]
    assert (await client.get("/v1/audit/head", headers=bearer(victim))).status_code == 200
    r = await client.post(f"/v1/keys/{victim_id}/revoke", headers=bearer(victim))
    assert r.status_code == 403

    r = await client.post(
        f"/v1/keys/{victim_id}/revoke", headers={**admin, "X-Ledger-Reason": "left the company"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["revoked_now"] is True
    assert body["key"]["revoked_at"]
    # Cached as valid a moment ago, refused now: the revoking process drops its cache entry.
    assert (await client.get("/v1/audit/head", headers=bearer(victim))).status_code == 401
    r = await client.post(f"/v1/keys/{victim_id}/revoke", headers={**admin, "X-Ledger-Reason": "x"})
    assert r.json()["revoked_now"] is False
    r = await client.post("/v1/keys/nope/revoke", headers={**admin, "X-Ledger-Reason": "x"})
    assert r.status_code == 404

    listed = (await client.get("/v1/keys", headers=admin)).json()
    assert {k["key_id"] for k in listed} == {admin_key.split("_")[1], victim_id}
    assert all("hash" not in k and "key" not in k for k in listed)

    reader = bearer(await make_key(database_url, "audit:read"))
    r = await client.get("/v1/audit/events", params={"type": "key.revoke"}, headers=reader)
    [item] = r.json()["items"]
    assert item["position"] == body["position"]
    assert item["category"] == "operator"
    assert item["actor"] == admin_key.split("_")[1]
    assert item["target"] == f"api_key:{victim_id}"
    assert item["provider"] is None


async def test_an_operator_event_appended_twice_with_its_action_id_is_recorded_once(
    database_url,
):
    pool = await create_pool(database_url, max_size=2)
    try:
        committer = GroupCommitter(EventStore(pool))
        with pytest.raises(ReasonRequired):
            operator_event("k1", "ops:admin", "outbox.retry", "m:1", " ")
        action_id = uuid.uuid4()
        retry = ("k1", "ops:admin", "outbox.retry", "m:1", "partner fixed")
        first = await committer.append(operator_event(*retry, action_id=action_id))
        again = await committer.append(operator_event(*retry, action_id=action_id))
    finally:
        await pool.close()
    assert first.duplicate is False
    assert again.duplicate is True
    assert again.position == first.position
    [event] = await operator_events(database_url)
    assert (event.key_id, event.scope, event.action, event.target, event.reason) == (
        "k1",
        "ops:admin",
        "outbox.retry",
        "m:1",
        "partner fixed",
    )
