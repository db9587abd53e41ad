"""A new embedded server starts sized for the machine, and ALTER SYSTEM still overrides
the sizing at the next start (ADR 0032)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import asyncpg

from ledger.embedded import embedded_server, machine_memory, memory_settings


async def _show(url: str, name: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        value: str = await conn.fetchval(f"SHOW {name}")
        return value
    finally:
        await conn.close()


async def test_sized_at_the_first_start_and_alter_system_wins() -> None:
    sized = memory_settings(machine_memory())
    with tempfile.TemporaryDirectory(prefix="ledger-test-sizing-") as tmp:
        pgdata = Path(tmp) / "pgdata"
        server = embedded_server(pgdata, cleanup="stop")
        try:
            url = server.get_uri()
            assert await _show(url, "shared_buffers") == sized["shared_buffers"]
            assert await _show(url, "effective_cache_size") == sized["effective_cache_size"]
            conn = await asyncpg.connect(url)
            try:
                await conn.execute("ALTER SYSTEM SET shared_buffers = '256MB'")
            finally:
                await conn.close()
        finally:
            server.cleanup()  # stops it

        again = embedded_server(pgdata, cleanup="delete")
        try:
            url = again.get_uri()
            assert await _show(url, "shared_buffers") == "256MB"
            assert await _show(url, "effective_cache_size") == sized["effective_cache_size"]
        finally:
            again.cleanup()  # stops it and deletes the data directory
