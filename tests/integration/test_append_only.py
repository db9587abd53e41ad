"""The log is append-only, enforced by the database twice over.

The service role ``ledger_app`` holds only SELECT and INSERT on ``stored_events`` (its
UPDATE, DELETE and TRUNCATE fail on privileges), and triggers reject those statements even
for the owner and superusers. The app's own pool runs as ``ledger_app``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.database import APP_ROLE

MUTATIONS = {
    "UPDATE": "UPDATE stored_events SET topic = 'tampered'",
    "DELETE": "DELETE FROM stored_events",
    "TRUNCATE": "TRUNCATE stored_events",
}


@pytest.fixture
async def service(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Connected the way ``ledger.database.create_pool`` connects."""
    conn = await asyncpg.connect(database_url, server_settings={"role": APP_ROLE})
    yield conn
    await conn.close()


async def append(conn: asyncpg.Connection, topic: str = "tests:Probe") -> tuple[uuid.UUID, int]:
    event_id = uuid.uuid4()
    position: int = await conn.fetchval(
        "INSERT INTO stored_events (originator_id, originator_version, topic, state)"
        " VALUES ($1, 1, $2, $3) RETURNING notification_id",
        event_id,
        topic,
        b'{"a":1}',
    )
    return event_id, position


async def snapshot(conn: asyncpg.Connection) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT notification_id, originator_id, originator_version, topic, state"
        " FROM stored_events ORDER BY notification_id"
    )
    return [tuple(r) for r in rows]


async def test_service_role_can_append_and_read(service):
    assert await service.fetchval("SELECT current_user") == APP_ROLE
    event_id, position = await append(service)
    row = await service.fetchrow(
        "SELECT originator_id, topic, state FROM stored_events WHERE notification_id = $1",
        position,
    )
    assert (row["originator_id"], row["topic"], bytes(row["state"])) == (
        event_id,
        "tests:Probe",
        b'{"a":1}',
    )


@pytest.mark.parametrize("op", sorted(MUTATIONS))
async def test_service_role_lacks_the_privilege(service, owner, op):
    await append(service)
    before = await snapshot(owner)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await service.execute(MUTATIONS[op])
    assert await snapshot(owner) == before


@pytest.mark.parametrize("op", sorted(MUTATIONS))
async def test_trigger_rejects_even_the_owner(owner, op):
    assert await owner.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    await append(owner)
    before = await snapshot(owner)
    with pytest.raises(
        asyncpg.InsufficientPrivilegeError, match=f"stored_events is append-only: {op}"
    ):
        await owner.execute(MUTATIONS[op])
    assert await snapshot(owner) == before


async def test_trigger_rejects_a_mutation_that_matches_no_row(owner):
    """Statement-level: refused before any row is looked at."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only: DELETE"):
        await owner.execute("DELETE FROM stored_events WHERE false")


async def test_service_role_cannot_switch_the_guards_off(service):
    """Only the owner may disable triggers or move the position sequence."""
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner"):
        await service.execute("ALTER TABLE stored_events DISABLE TRIGGER stored_events_append_only")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="must be owner"):
        await service.execute("DROP TRIGGER stored_events_serialize ON stored_events")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await service.execute("SELECT setval('stored_events_notification_id_seq', 1)")


async def test_service_role_cannot_reuse_a_primary_key(service):
    event_id, _ = await append(service)
    with pytest.raises(asyncpg.UniqueViolationError):
        await service.execute(
            "INSERT INTO stored_events (originator_id, originator_version, topic, state)"
            " VALUES ($1, 1, 'x', 'y')",
            event_id,
        )
    # ...and ON CONFLICT DO UPDATE (an UPDATE in disguise) needs the UPDATE privilege.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await service.execute(
            "INSERT INTO stored_events (originator_id, originator_version, topic, state)"
            " VALUES ($1, 1, 'x', 'y')"
            " ON CONFLICT (originator_id, originator_version) DO UPDATE SET topic = 'x'",
            event_id,
        )


async def test_the_app_pool_runs_as_the_service_role(client):
    """Asked on the app's own pool, in the app's event loop (the test client runs it in a
    thread of its own)."""
    pool: asyncpg.Pool = client.app.state.services.pool

    async def probe() -> tuple[str, bool, bool, str]:
        async with pool.acquire() as conn:
            try:
                await conn.execute("DELETE FROM stored_events")
            except asyncpg.InsufficientPrivilegeError as exc:
                refused = str(exc)
            else:
                refused = ""
            return (
                await conn.fetchval("SELECT current_user"),
                await conn.fetchval("SELECT has_table_privilege('stored_events', 'INSERT')"),
                await conn.fetchval("SELECT has_table_privilege('stored_events', 'UPDATE')"),
                refused,
            )

    user, can_insert, can_update, refused = await asyncio.to_thread(
        client.blocking_portal.call, probe
    )
    assert (user, can_insert, can_update) == (APP_ROLE, True, False)
    assert "permission denied" in refused
