"""Apply ``migrations/NNNN_name.sql`` in order, each in its own transaction.

Applied versions are recorded in ``ledger_migrations`` with a checksum; a session-level
advisory lock makes concurrent starts (several ``serve`` or ``worker`` processes) safe.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ledger.database import Conn
from ledger.errors import LedgerError

MIGRATION_LOCK = 7_372_001  # advisory lock key for "migrating this database"
NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(LedgerError):
    """A migration file is malformed, changed after being applied, or failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "migrations", here.parent / "_migrations"):
        if candidate.is_dir():
            return candidate
    raise MigrationError("migrations directory not found")


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = NAME_RE.match(path.name)
        if not m:
            raise MigrationError(f"migration file name must be NNNN_name.sql: {path.name}")
        found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS ledger_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def applied_versions(conn: Conn) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('ledger_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM ledger_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def pending(conn: Conn, migrations: list[Migration] | None = None) -> list[int]:
    """Versions not applied yet (empty means the schema is current)."""
    migrations = migrations if migrations is not None else load_migrations()
    done = await applied_versions(conn)
    return [m.version for m in migrations if m.version not in done]


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is pending; return the versions applied now."""
    migrations = migrations if migrations is not None else load_migrations()
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(CREATE_TABLE)
        done = await applied_versions(conn)
        for m in migrations:
            if m.version in done:
                if done[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} changed after it was applied; "
                        "add a new migration instead"
                    )
                continue
            async with conn.transaction():
                try:
                    await conn.execute(m.sql)
                except asyncpg.PostgresError as exc:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} failed: {exc}"
                    ) from exc
                await conn.execute(
                    "INSERT INTO ledger_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
            applied_now.append(m.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied_now


async def migrate_url(url: str) -> list[int]:
    """Connect with ``url`` (the owner's login), apply what is pending, disconnect."""
    conn = await asyncpg.connect(url, server_settings={"application_name": "ledger-migrate"})
    try:
        return await migrate(conn)
    finally:
        await conn.close()
