"""Migrations: applied to an empty database they build exactly the expected schema.

The foundation migrations (0001, 0002) are compared object by object with the schema written
below; every migration applied in order must build exactly the schema recorded in
``expected_schema.txt`` beside this file (tables, columns and types, constraints, indexes,
triggers, functions, sequences, grants down to columns, default privileges, the service
role's attributes), so a schema change updates that snapshot on purpose
(``LEDGER_WRITE_SCHEMA_SNAPSHOT=1`` rewrites it from the migrations; review the diff). Re-running is a no-op, concurrent runs apply each version once, an edited
migration is refused, and a failing one leaves nothing behind (ADR 0004).
"""

from __future__ import annotations

import asyncio
import difflib
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger import migrate
from tests.support import PATIENCE, scratch_database
from tests.support.db import connection

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


# The final schema, one line per object (section, then its fields separated by " | ").
# Grants to an object's owner and to other roles than ledger_app and PUBLIC are left out:
# the owner is whoever migrates, and roles are cluster-wide (other tests create some).
SNAPSHOT = Path(__file__).with_name("expected_schema.txt")
APP_ROLE = "(SELECT oid FROM pg_roles WHERE rolname = 'ledger_app')"
GRANTEE = "CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END"
GRANTEES = f"(x.grantee = 0 OR x.grantee = {APP_ROLE})"
FINAL_SCHEMA_QUERIES = {
    "relation": """
        SELECT c.relname, c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity
        FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r','p','v','m','S','c','f')""",
    "column": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END,
               coalesce(pg_get_expr(d.adbin, d.adrelid), '-'), a.attidentity, a.attgenerated
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r','p','v','m','c','f')
          AND a.attnum > 0 AND NOT a.attisdropped""",
    # NOT NULL is a pg_constraint row only from PostgreSQL 18 on; the columns say it for all.
    "constraint": """
        SELECT coalesce(nullif(c.conrelid, 0)::regclass::text, '-'), c.conname, c.contype,
               pg_get_constraintdef(c.oid)
        FROM pg_constraint c
        WHERE c.connamespace = 'public'::regnamespace AND c.contype <> 'n'""",
    "index": "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "trigger": """
        SELECT c.relname, t.tgname, t.tgenabled, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace""",
    "function": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid),
               pg_get_function_result(p.oid), l.lanname, p.provolatile,
               CASE WHEN p.prosecdef THEN 'SECURITY DEFINER' ELSE 'SECURITY INVOKER' END,
               coalesce(array_to_string(p.proconfig, ','), '-'), md5(p.prosrc)
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.pronamespace = 'public'::regnamespace""",
    "type": """
        SELECT t.typname, t.typtype,
               coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                         FROM pg_enum e WHERE e.enumtypid = t.oid), '-')
        FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typrelid = 0
          AND t.typcategory <> 'A'""",
    "sequence": """
        SELECT sequencename, data_type::text, start_value, increment_by, min_value, max_value,
               cycle
        FROM pg_sequences WHERE schemaname = 'public'""",
    "policy": """
        SELECT tablename, policyname, permissive, array_to_string(roles, ','), cmd,
               coalesce(qual, '-'), coalesce(with_check, '-')
        FROM pg_policies WHERE schemaname = 'public'""",
    "grant on relation": f"""
        SELECT c.relname, {GRANTEE}, x.privilege_type, x.is_grantable
        FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault(
                 (CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) x
        WHERE c.relnamespace = 'public'::regnamespace AND {GRANTEES}""",
    "grant on column": f"""
        SELECT c.relname, a.attname, {GRANTEE}, x.privilege_type, x.is_grantable
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid, aclexplode(a.attacl) x
        WHERE c.relnamespace = 'public'::regnamespace AND a.attacl IS NOT NULL
          AND {GRANTEES}""",
    "grant on function": f"""
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), {GRANTEE},
               x.privilege_type, x.is_grantable
        FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f'::"char", p.proowner))) x
        WHERE p.pronamespace = 'public'::regnamespace AND {GRANTEES}""",
    "grant on schema": f"""
        SELECT n.nspname, {GRANTEE}, x.privilege_type, x.is_grantable
        FROM pg_namespace n, aclexplode(n.nspacl) x
        WHERE n.nspname = 'public' AND x.grantee = {APP_ROLE}""",
    "default privilege": f"""
        SELECT coalesce(d.defaclnamespace::regnamespace::text, '-'), d.defaclobjtype,
               {GRANTEE}, x.privilege_type, x.is_grantable
        FROM pg_default_acl d, aclexplode(d.defaclacl) x
        WHERE {GRANTEES}""",
    "role": """
        SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
               rolreplication, rolbypassrls, rolconnlimit, coalesce(rolvaliduntil::text, '-')
        FROM pg_roles WHERE rolname = 'ledger_app'""",
    "role membership": f"""
        SELECT pg_get_userbyid(m.member), pg_get_userbyid(m.roleid), m.admin_option
        FROM pg_auth_members m WHERE m.member = {APP_ROLE}""",
}


def _field(value: object) -> str:
    if isinstance(value, bytes):  # "char" columns (relkind, contype, ...); NUL means unset
        value = value.decode().replace("\x00", "") or "-"
    return str(value)


def _order(row: asyncpg.Record) -> tuple[tuple[int, int | str], ...]:
    return tuple((0, v) if isinstance(v, int) else (1, _field(v)) for v in row)


async def final_schema(conn: asyncpg.Connection) -> list[str]:
    """The schema as lines ``section | field | field ...``, in a stable order."""
    lines = []
    for section, sql in FINAL_SCHEMA_QUERIES.items():
        for row in sorted(await conn.fetch(sql), key=_order):
            lines.append(" | ".join([section, *(_field(v) for v in row)]))
    return lines


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
    async with connection(empty_url) as c:
        yield c


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


async def test_every_migration_builds_exactly_the_expected_final_schema(conn):
    before = [line for line in await final_schema(conn) if not line.startswith("role")]
    assert before == [], "the database should start empty (roles are cluster-wide)"
    await migrate.migrate(conn)
    got = await final_schema(conn)
    if os.environ.get("LEDGER_WRITE_SCHEMA_SNAPSHOT") == "1":
        SNAPSHOT.write_text("\n".join(got) + "\n")
    expected = SNAPSHOT.read_text().splitlines()
    diff = "\n".join(
        difflib.unified_diff(expected, got, "expected_schema.txt", "migrated", n=0, lineterm="")
    )
    assert got == expected, f"the migrated schema differs from the snapshot:\n{diff}"


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


async def test_the_insert_only_tables_are_vacuumed_every_percent(conn):
    """Migration 0013 (ADR 0028): the log and the audit index are vacuumed after ~1 % new
    rows, not PostgreSQL's 20 %, so the visibility map their index-only reads rely on stays
    current on the newest rows."""
    await migrate.migrate(conn)
    rows = await conn.fetch(
        "SELECT relname, reloptions FROM pg_class "
        "WHERE relname IN ('stored_events', 'audit_index') AND relkind = 'r'"
    )
    options = {r["relname"]: set(r["reloptions"] or []) for r in rows}
    wanted = {
        "autovacuum_vacuum_insert_scale_factor=0.01",
        "autovacuum_vacuum_insert_threshold=10000",
    }
    assert options == {"stored_events": wanted, "audit_index": wanted}
