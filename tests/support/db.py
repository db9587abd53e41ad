"""Known secrets and settings, signed deliveries, API keys, scratch databases."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from ledger.audit.keys import create_key
from ledger.config import Settings, load_settings
from ledger.database import create_database, drop_database
from ledger.ingest.samples import Delivery, build

SECRETS = {
    "LEDGER_MAYAR_TOKEN": "test-mayar-token",
    "LEDGER_MIDTRANS_SERVER_KEY": "SB-Mid-server-test",
    "LEDGER_XENDIT_TOKEN": "test-xendit-token",
    "LEDGER_PARTNER_SECRET": "test-partner-secret",
    "LEDGER_PARTNER_SYNC_SECRET": "test-partner-sync-secret",
}


def test_settings(**overrides: str) -> Settings:
    env = {"LEDGER_HOME": "/tmp/ledger-test-home", **SECRETS, **overrides}
    return load_settings(env)


def signed(provider: str, event: str, **kw: str) -> Delivery:
    return build(test_settings(), provider, event, **kw)


@contextlib.asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection to ``url``, closed afterwards."""
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    """The rows of one query on its own connection."""
    async with connection(url) as conn:
        return list(await conn.fetch(sql, *args))


async def fetchval(url: str, sql: str, *args: object) -> Any:
    """The first value of one query on its own connection."""
    async with connection(url) as conn:
        return await conn.fetchval(sql, *args)


async def make_key(url: str, *scopes: str, name: str = "test") -> str:
    async with connection(url) as conn:
        _, key = await create_key(conn, name, list(scopes))
    return key


@contextlib.asynccontextmanager
async def scratch_database(
    server_url: str, *, prefix: str = "ledger_t", template: str | None = None
) -> AsyncIterator[str]:
    """A new database (empty, or cloned from ``template``), dropped afterwards; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name, template=template)
    try:
        yield url
    finally:
        await drop_database(server_url, name)


async def post_unusable_xendit(client: Any) -> Any:
    """A Xendit delivery that authenticates but lacks ``external_id``: answered 400 and
    quarantined (the response, for callers that check its problem document)."""
    r = await client.post(
        "/webhooks/xendit",
        content=b'{"id": "x", "status": "PAID"}',
        headers={"x-callback-token": "test-xendit-token"},
    )
    assert r.status_code == 400, r.text
    return r
