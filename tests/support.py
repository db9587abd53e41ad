"""Helpers shared by the tests: known secrets, signed deliveries, API keys."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import httpx
import uvicorn

from ledger.app import create_app
from ledger.audit.keys import create_key
from ledger.config import Settings, load_settings
from ledger.database import create_database, drop_database
from ledger.ingest.samples import Delivery, build

T = TypeVar("T")

# How long a test waits for a condition before it fails. A guard against a hang, never a
# speed assertion: a condition that holds arrives much sooner, on any machine.
PATIENCE = 60.0


async def until(
    condition: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = PATIENCE,
    every: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` (sync or async) until it returns something truthy; return that.

    The one polling helper of the test suite: tests wait on conditions, never on sleeps.
    Fails with the last value seen after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:.0f}s (last: {value!r})")
        await asyncio.sleep(every)


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


@contextlib.asynccontextmanager
async def live_server(database_url: str, **overrides: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app behind uvicorn on loopback, with a client: requests really run
    concurrently (litestar's in-process test client handles one request at a time)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    app = create_app(test_settings(**overrides), database_url=database_url)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    try:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
        ) as http:
            yield http
    finally:
        server.should_exit = True
        await task


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
