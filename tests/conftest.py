"""Test database plumbing (procrastinate-style).

One PostgreSQL per session: ``LEDGER_TEST_DATABASE_URL`` when set, else a private embedded
server. Migrations run once into a template database; every test that asks for
``database_url`` gets a fresh ``CREATE DATABASE ... TEMPLATE`` copy, dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from litestar.testing import AsyncTestClient

from ledger.app import create_app, prepare_database
from ledger.cli.lifecycle import forget_dead_handles
from ledger.config import Settings
from ledger.database import with_database
from ledger.embedded import embedded_server
from tests.support import bearer, make_key, scratch_database, test_settings
from tests.support.db import connection


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    external = os.environ.get("LEDGER_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with tempfile.TemporaryDirectory(prefix="ledger-test-pg-") as tmp:
        pgdata = Path(tmp) / "pgdata"
        server = embedded_server(pgdata, cleanup="delete")
        yield server.get_uri()
        # Stop it now: the library's own exit hook runs after this directory is gone, and
        # then finds nothing to stop, which left the server running after the session. A
        # test's child killed with SIGKILL may still be listed as holding it: forget those.
        forget_dead_handles(pgdata)
        server.cleanup()


@pytest.fixture(scope="session")
async def template_url(server_url: str) -> AsyncIterator[str]:
    name = f"ledger_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server_url, name)
    await prepare_database(url)
    yield url
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(server_url: str, template_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test alone (owner connection URL)."""
    template = template_url.partition("?")[0].rsplit("/", 1)[1]
    async with scratch_database(server_url, template=template) as url:
        yield url


@pytest.fixture
async def owner(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database as its owner (the migrating role)."""
    async with connection(database_url) as conn:
        yield conn


@pytest.fixture
def settings() -> Settings:
    return test_settings()


@pytest.fixture
async def client(settings: Settings, database_url: str) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """The real app (real routes, real store) on a fresh database."""
    app = create_app(settings, database_url=database_url)
    async with AsyncTestClient(app) as c:
        yield c


@pytest.fixture
async def reader(database_url: str) -> dict[str, str]:
    """Headers carrying a fresh ``audit:read`` key."""
    return bearer(await make_key(database_url, "audit:read"))
