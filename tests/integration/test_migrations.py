"""Migrations: applied to an empty database they build exactly the expected schema.

The foundation migrations (0001, 0002) are compared object by object with the schema written
below; later migrations (other features) are applied on top and must leave the log's
contract intact. Re-running is a no-op, concurrent runs apply each version once, an edited
migration is refused, and a failing one leaves nothing behind (ADR 0004).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger import migrate
from tests.support import PATIENCE, scratch_database

FOUNDATION = 2  # the last migration of the foundation (issue 2)

SEQ = "nextval('stored_events_notification_id_seq'::regclass)"
EXPECTED_COLUMNS = {
    ("api_keys", "key_id", "text", "NO", None),
    ("api_keys", "name", "text", "NO", None),
    ("api_keys", "scopes", "ARRAY", "NO", None),
    ("api_keys", "key_hash", "bytea", "NO", None),
    ("api_keys", "created_at", "timestamp with time zone", "NO", "now()"),
    ("api_keys", "revoked_at", "timestamp with time zone", "YES", None),
    ("ledger_migrations", "version", "integer", "NO", None),
    ("ledger_migrations", "name", "text", "NO", None),
    ("ledger_migrations", "checksum", "text", "NO", None),
    ("ledger_migrations", "applied_at", "timestamp with time zone", "NO", "now()"),
    ("stored_events", "originator_id", "uuid", "NO", None),
    ("stored_events", "originator_version", "bigint", "NO", None),
    ("stored_events", "topic", "text", "YES", None),
    ("stored_events", "state", "bytea", "YES", None),
    ("stored_events", "notification_id", "bigint", "NO", SEQ),
}
EXPECTED_INDEXES = {
    "CREATE UNIQUE INDEX api_keys_key_hash_key ON public.api_keys USING btree (key_hash)",
    "CREATE UNIQUE INDEX api_keys_pkey ON public.api_keys USING btree (key_id)",
    "CREATE UNIQUE INDEX ledger_migrations_pkey ON public.ledger_migrations USING btree (version)",
    "CREATE UNIQUE INDEX stored_events_notification_id_idx ON public.stored_events"
    " USING btree (notification_id)",
    "CREATE UNIQUE INDEX stored_events_pkey ON public.stored_events"
    " USING btree (originator_id, originator_version)",
}
# (name, enabled, definition): 'O' = fires in the normal (origin) replication role.
EXPECTED_TRIGGERS = {
    (
        "stored_events_append_only",
        "O",
        "CREATE TRIGGER stored_events_append_only BEFORE DELETE OR UPDATE ON"
        " public.stored_events FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_mutation()",
    ),
    (
        "stored_events_no_truncate",
        "O",
        "CREATE TRIGGER stored_events_no_truncate BEFORE TRUNCATE ON public.stored_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION ledger_reject_mutation()",
    ),
    (
        "stored_events_notify",
        "O",
        "CREATE TRIGGER stored_events_notify AFTER INSERT ON public.stored_events"
        " REFERENCING NEW TABLE AS appended FOR EACH STATEMENT"
        " EXECUTE FUNCTION ledger_notify_append()",
    ),
    (
        "stored_events_serialize",
        "O",
        "CREATE TRIGGER stored_events_serialize BEFORE INSERT ON public.stored_events"
        " FOR EACH STATEMENT EXECUTE FUNCTION ledger_serialize_appends()",
    ),
}
EXPECTED_FUNCTIONS = {"ledger_notify_append", "ledger_reject_mutation", "ledger_serialize_appends"}
EXPECTED_TYPES = {("stored_event_uuid", "originator_id uuid, originator_version bigint,"
                   " topic text, state bytea")}  # fmt: skip
# What the service role may do, per relation (api_keys: revocation updates a row).
EXPECTED_GRANTS = {
    ("api_keys", "DELETE"),
    ("api_keys", "INSERT"),
    ("api_keys", "SELECT"),
    ("api_keys", "UPDATE"),
    ("ledger_migrations", "SELECT"),
    ("stored_events", "INSERT"),
    ("stored_events", "SELECT"),
    ("stored_events_notification_id_seq", "SELECT"),
    ("stored_events_notification_id_seq", "USAGE"),
}

SCHEMA_QUERIES = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = 'public'""",
    "indexes": "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "triggers": """
        SELECT t.tgname, t.tgenabled, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace""",
    "functions": "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace",
    "types": """
        SELECT t.typname, string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod),
                                     ', ' ORDER BY a.attnum)
        FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c'
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
        WHERE t.typnamespace = 'public'::regnamespace
        GROUP BY t.typname""",
    "grants": """
        SELECT c.relname, a.privilege_type
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.relnamespace = 'public'::regnamespace
          AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = 'ledger_app')""",
}


async def schema(conn: asyncpg.Connection) -> dict[str, set[tuple[Any, ...]]]:
    out: dict[str, set[tuple[Any, ...]]] = {}
    for name, sql in SCHEMA_QUERIES.items():
        rows = await conn.fetch(sql)
        out[name] = {tuple(v.decode() if isinstance(v, bytes) else v for v in r) for r in rows}
    out["indexes"] = {r[0] for r in out["indexes"]}  # type: ignore[misc]
    out["functions"] = {r[0] for r in out["functions"]}  # type: ignore[misc]
    return out


@pytest.fixture
async def empty_url(server_url: str) -> AsyncIterator[str]:
    """A brand-new database with nothing in it (not cloned from the migrated template)."""
    async with scratch_database(server_url, prefix="ledger_mig") as url:
        yield url


@pytest.fixture
async def conn(empty_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(empty_url)
    yield c
    await c.close()


def foundation() -> list[migrate.Migration]:
    return [m for m in migrate.load_migrations() if m.version <= FOUNDATION]


async def recorded(conn: asyncpg.Connection) -> list[tuple[int, str, str]]:
    rows = await conn.fetch("SELECT version, name, checksum FROM ledger_migrations ORDER BY 1")
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_foundation_builds_exactly_the_expected_schema(conn):
    assert not any((await schema(conn)).values()), "the database should start empty"
    assert await migrate.migrate(conn, foundation()) == [1, 2]
    got = await schema(conn)
    assert got["columns"] == EXPECTED_COLUMNS
    assert got["indexes"] == EXPECTED_INDEXES
    assert got["triggers"] == EXPECTED_TRIGGERS
    assert got["functions"] == EXPECTED_FUNCTIONS
    assert got["types"] == EXPECTED_TYPES
    assert got["grants"] == EXPECTED_GRANTS
    assert await recorded(conn) == [(m.version, m.name, m.checksum) for m in foundation()]


async def test_every_migration_applies_and_keeps_the_log_contract(conn):
    everything = migrate.load_migrations()
    assert await migrate.migrate(conn) == [m.version for m in everything]
    assert await recorded(conn) == [(m.version, m.name, m.checksum) for m in everything]
    assert await migrate.pending(conn) == []
    got = await schema(conn)
    # Later migrations may add to the log (columns with defaults, triggers) but the
    # eventsourcing layout, the guards and the service role's rights on it stay.
    log_columns = {c for c in EXPECTED_COLUMNS if c[0] == "stored_events"}
    assert log_columns <= got["columns"]
    assert got["triggers"] >= EXPECTED_TRIGGERS
    assert {g for g in got["grants"] if g[0].startswith("stored_events")} == {
        g for g in EXPECTED_GRANTS if g[0].startswith("stored_events")
    }
    assert got["types"] >= EXPECTED_TYPES
    assert not any(g[1] == "TRUNCATE" for g in got["grants"] if g[0] == "stored_events")


async def test_applying_twice_is_a_no_op(conn):
    await migrate.migrate(conn)
    before = (await schema(conn), await conn.fetch("SELECT * FROM ledger_migrations ORDER BY 1"))
    assert await migrate.migrate(conn) == []
    after = (await schema(conn), await conn.fetch("SELECT * FROM ledger_migrations ORDER BY 1"))
    assert after == before


async def test_concurrent_runs_apply_each_version_once(empty_url, conn):
    everything = [m.version for m in migrate.load_migrations()]
    a, b = await asyncpg.connect(empty_url), await asyncpg.connect(empty_url)
    try:
        results = await asyncio.gather(migrate.migrate(a), migrate.migrate(b))
    finally:
        await a.close()
        await b.close()
    # The advisory lock lets one run apply everything; the other then finds nothing to do.
    assert sorted(results) == [[], everything]
    assert [r[0] for r in await recorded(conn)] == everything


async def test_an_edited_migration_is_refused(conn):
    await migrate.migrate(conn, foundation())
    edited = [replace(m, sql=m.sql + "\n-- edited") if m.version == 1 else m for m in foundation()]
    later = migrate.Migration(9999, "later", "CREATE TABLE must_not_exist (id int)")
    with pytest.raises(migrate.MigrationError, match="0001_event_log changed after it was applied"):
        await migrate.migrate(conn, [*edited, later])
    assert await conn.fetchval("SELECT to_regclass('must_not_exist')") is None
    assert [r[0] for r in await recorded(conn)] == [1, 2]


async def test_a_failing_migration_leaves_nothing_behind(empty_url, conn):
    broken = migrate.Migration(9998, "broken", "CREATE TABLE half_done (id int);\nSELECT 1 / 0;")
    with pytest.raises(migrate.MigrationError, match="9998_broken failed"):
        await migrate.migrate(conn, [*foundation(), broken])
    # Its own transaction rolled back; the ones before it stay applied and recorded.
    assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    assert [r[0] for r in await recorded(conn)] == [1, 2]
    # The advisory lock was released (no speed bound: the lock table says so), and another
    # session can migrate (the guard only turns a hang into a failure).
    assert not await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    )
    other = await asyncpg.connect(empty_url)
    try:
        assert await asyncio.wait_for(migrate.migrate(other, foundation()), PATIENCE) == []
    finally:
        await other.close()


def test_file_names_and_versions_are_checked(tmp_path: Path):
    (tmp_path / "0001_ok.sql").write_text("SELECT 1")
    assert [m.version for m in migrate.load_migrations(tmp_path)] == [1]
    (tmp_path / "0001_again.sql").write_text("SELECT 1")
    with pytest.raises(migrate.MigrationError, match="share a version"):
        migrate.load_migrations(tmp_path)
    (tmp_path / "0001_again.sql").unlink()
    (tmp_path / "2-bad-name.sql").write_text("SELECT 1")
    with pytest.raises(migrate.MigrationError, match=r"NNNN_name\.sql"):
        migrate.load_migrations(tmp_path)
