"""Helpers for read-model tests: a counting test projection, a seeded log, posting real
deliveries, and folding records into a scratch schema as the runner does."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ledger.accounts.spend import spend_event as spent
from ledger.domain.events import (
    DELIVERY_TOPIC,
    RECEIVED_TOPIC,
    DeliveryState,
    decode_delivery,
    encode_state,
)
from ledger.ingest.providers import midtrans
from ledger.readmodels.access import ReadModels
from ledger.readmodels.contract import Conn, Projection
from ledger.readmodels.runner import ProjectionRunner
from ledger.store.eventstore import NewEvent, StoredRecord
from tests.support.db import connection, signed
from tests.support.polling import PATIENCE

PROVIDERS = ("mayar", "midtrans", "xendit", "partner")


class Counting:
    """A test projection that detects double application: ``seen`` has the position as
    primary key (a replayed event raises) and ``counts`` adds up (a replay would show)."""

    topics = (RECEIVED_TOPIC,)
    schema_sql = """
        CREATE TABLE seen (position bigint PRIMARY KEY, provider text NOT NULL);
        CREATE TABLE counts (provider text PRIMARY KEY, n bigint NOT NULL);
    """

    def __init__(self, name: str = "test_counts", version: int = 1) -> None:
        self.name = name
        self.version = version
        self.poison: int | None = None  # position whose batch raises while set
        self.failures = 0  # batches refused because of ``poison``

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        if self.poison is not None and any(r.position == self.poison for r in records):
            self.failures += 1
            raise ValueError(f"cannot fold event at position {self.poison}")
        positions = [r.position for r in records]
        providers = [decode_delivery(r.state).provider for r in records]
        await conn.execute(
            "INSERT INTO seen SELECT * FROM unnest($1::bigint[], $2::text[])", positions, providers
        )
        await conn.execute(
            "INSERT INTO counts SELECT p, count(*) FROM unnest($1::text[]) AS p GROUP BY p "
            "ON CONFLICT (provider) DO UPDATE SET n = counts.n + excluded.n",
            providers,
        )

    async def digest(self, conn: Conn) -> str:
        h = hashlib.sha256()
        for r in await conn.fetch("SELECT provider, n FROM counts ORDER BY provider"):
            h.update(f"{r['provider']}={r['n']};".encode())
        row = await conn.fetchrow("SELECT count(*) AS n, coalesce(sum(position), 0) AS s FROM seen")
        h.update(f"{row['n']}:{row['s']}".encode())
        return h.hexdigest()


def delivery_state(
    provider: str,
    dedup_key: str,
    kind: str,
    body: bytes,
    *,
    scheme: str = "test",
    headers: dict[str, str] | None = None,
    timestamp: datetime | None = None,
) -> bytes:
    """A delivery's stored state, as ingest would have written it for ``body`` (received
    now unless ``timestamp`` says when)."""
    return encode_state(
        DeliveryState(
            originator_topic=DELIVERY_TOPIC,
            timestamp=datetime.now(UTC) if timestamp is None else timestamp,
            provider=provider,
            dedup_key=dedup_key,
            kind=kind,
            source=None,
            scheme=scheme,
            headers={"content-type": "application/json"} if headers is None else headers,
            body_sha256=hashlib.sha256(body).hexdigest(),
            body_b64=base64.b64encode(body).decode(),
        )
    )


def midtrans_paid(order_id: str, *, scheme: str = "test") -> bytes:
    """A Midtrans settlement as ingest would have stored it, for any order id (even one
    ingest refuses today, as events already in the log may hold)."""
    body = signed("midtrans", "settlement", order_id=order_id).body
    n = midtrans.DECODER.decode(body)
    return delivery_state(
        "midtrans", midtrans.dedup_key(n), n.transaction_status, body, scheme=scheme
    )


async def append(
    url: str, states: Sequence[bytes], topics: str | Sequence[str] = RECEIVED_TOPIC
) -> list[asyncpg.Record]:
    """Append events straight to the log (bypassing ingest, one statement, log order
    kept); their ``(notification_id, originator_id)`` in log order."""
    if isinstance(topics, str):
        topics = [topics] * len(states)
    async with connection(url) as conn:
        rows = await conn.fetch(
            "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[]) "
            "RETURNING notification_id, originator_id",
            [uuid.uuid4() for _ in states],
            [1] * len(states),
            list(topics),
            list(states),
        )
    return sorted(rows, key=lambda r: r[0])


def _state(i: int) -> bytes:
    provider = PROVIDERS[i % 4]
    body = f'{{"n":{i},"provider":"{provider}"}}'.encode()
    return delivery_state(provider, f"{provider}:{i}", "payment", body)


async def seed(url: str, n: int, *, start: int = 0, other_every: int = 7) -> int:
    """Append ``n`` events (every ``other_every``-th of another topic); return the head."""
    topics = [
        "test:Other" if (i % other_every == 0) else RECEIVED_TOPIC for i in range(start, start + n)
    ]
    await append(url, [_state(i) for i in range(start, start + n)], topics)
    async with connection(url) as conn:
        head: int = await conn.fetchval("SELECT max(notification_id) FROM stored_events")
    return head


def runner(url: str, *projs: Any, **kw: object) -> ProjectionRunner:
    """A runner over ``projs`` with the tests' short intervals (``kw`` overrides them)."""
    opts: dict[str, object] = {"batch_size": 100, "poll_interval": 0.2, "lock_retry": 0.1}
    opts.update(kw)
    return ProjectionRunner(url, {p.name: p for p in projs}, **opts)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(runner: ProjectionRunner) -> AsyncIterator[ProjectionRunner]:
    """``runner`` started, and stopped afterwards whatever happens."""
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def run_until(runner: ProjectionRunner, rm: ReadModels, name: str, position: int) -> None:
    """Start ``runner``, wait until ``name`` has applied up to ``position``, stop it."""
    async with running(runner):
        assert await rm.wait_for(name, position, timeout=PATIENCE)


MAYAR = {"content-type": "application/json", "x-callback-token": "test-mayar-token"}


def mayar_body(event: str, **data: Any) -> bytes:
    return json.dumps({"event": event, "data": data}).encode()


async def post_mayar(client: Any, event: str, **data: Any) -> dict[str, Any]:
    r = await client.post("/webhooks/mayar", content=mayar_body(event, **data), headers=MAYAR)
    assert r.status_code in (200, 400), r.text
    ack: dict[str, Any] = r.json()
    return ack


async def post(client: Any, provider: str, event: str, **kw: str) -> dict[str, Any]:
    d = signed(provider, event, **kw)
    r = await client.post(d.path, content=d.body, headers=d.headers)
    assert r.status_code == 200, r.text
    ack: dict[str, Any] = r.json()
    return ack


async def post_position(client: Any, provider: str, event: str, **kw: str) -> int:
    """``post``, answering the position the delivery was recorded at."""
    position: int = (await post(client, provider, event, **kw))["position"]
    return position


async def read_log(url: str) -> list[StoredRecord]:
    async with connection(url) as conn:
        rows = await conn.fetch(
            "SELECT notification_id, originator_id, originator_version, topic, state"
            " FROM stored_events ORDER BY notification_id"
        )
    return [
        StoredRecord(
            r["notification_id"],
            r["originator_id"],
            r["originator_version"],
            r["topic"],
            bytes(r["state"]),
        )
        for r in rows
    ]


async def fold(
    conn: asyncpg.Connection,
    proj: Projection,
    records: Sequence[StoredRecord],
    schema: str,
    *,
    batch: int = 100,
) -> None:
    """Create ``schema``, run the DDL and apply ``records`` (its topics only) in batches."""
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        await conn.execute(proj.schema_sql)
    mine = [r for r in records if r.topic in proj.topics]
    for i in range(0, len(mine), batch):
        async with conn.transaction():
            await conn.execute(f"SET LOCAL search_path TO {schema}, public")
            await proj.apply(conn, mine[i : i + batch])


async def digest(conn: asyncpg.Connection, proj: Projection, schema: str) -> str:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        return await proj.digest(conn)


async def query(conn: asyncpg.Connection, schema: str, sql: str, *args: Any) -> list[Any]:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        return list(await conn.fetch(sql, *args))


def spend_event(customer: str, amount: int, key: str, balance_after: int) -> NewEvent:
    return spent(customer, amount, key, "test", balance_after)
