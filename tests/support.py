"""Helpers shared by the tests: known secrets, signed deliveries, API keys."""

from __future__ import annotations

import asyncpg

from ledger.config import Settings, load_settings
from ledger.keys import create_key
from ledger.trigger import Delivery, build

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


async def make_key(url: str, *scopes: str, name: str = "test") -> str:
    conn = await asyncpg.connect(url)
    try:
        _, key = await create_key(conn, name, list(scopes))
    finally:
        await conn.close()
    return key


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}
