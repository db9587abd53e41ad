"""Poisoned events (ADR 0010) against the real database: a consumer of the log retries an
event it cannot apply a few times, sets it aside in the transaction that moves its position
past it, applies the rest of the batch, and re-applies it on an operator's retry. Faults
that are not the event's (the code, the deployment) are never set aside."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import msgspec
import pytest

from ledger.audit import index as audit
from ledger.database import create_pool
from ledger.domain.events import RECEIVED_TOPIC
from ledger.live.hub import StreamHub
from ledger.readmodels import poison
from ledger.readmodels.access import ReadModels
from ledger.readmodels.contract import Conn
from ledger.readmodels.runner import ProjectionRunner, retry_poisoned, start_rebuild
from ledger.store.eventstore import EventStore, StoredRecord
from tests.support import PATIENCE, until
from tests.support.db import fetch
from tests.support.readmodels import append as append_events
from tests.support.readmodels import midtrans_paid, run_until, running
from tests.support.readmodels import runner as make_runner


class Fragile:
    """A test projection that detects double application (``seen`` has the position as
    primary key) and fails on chosen events:

    - ``bad``: positions it cannot fold while set (a fault of the event);
    - ``broken``: when set, every event fails (a fault of the code, not of the events);
    - ``missing_table_at``: a position whose batch queries a table that does not exist (a
      fault of the deployment)."""

    topics = (RECEIVED_TOPIC,)
    schema_sql = "CREATE TABLE seen (position bigint PRIMARY KEY);"

    def __init__(self, name: str = "test_fragile", version: int = 1) -> None:
        self.name = name
        self.version = version
        self.bad: set[int] = set()
        self.broken = False
        self.missing_table_at: int | None = None
        self.calls = 0

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        self.calls += 1
        positions = [r.position for r in records]
        if self.broken:
            raise RuntimeError("this projection is broken")
        if self.missing_table_at in positions:
            await conn.execute("SELECT * FROM no_such_table")
        for p in positions:
            if p in self.bad:
                raise ValueError(f"cannot fold the event at position {p}")
        await conn.execute("INSERT INTO seen SELECT unnest($1::bigint[])", positions)

    async def digest(self, conn: Conn) -> str:
        row = await conn.fetchrow("SELECT count(*) AS n, coalesce(sum(position), 0) AS s FROM seen")
        return hashlib.sha256(f"{row['n']}:{row['s']}".encode()).hexdigest()


async def append(url: str, states: Sequence[bytes]) -> list[int]:
    """Append events straight to the log (bypassing ingest); their positions."""
    return [r[0] for r in await append_events(url, states)]


async def clean(url: str, n: int) -> list[int]:
    return await append(url, [midtrans_paid(f"CLEAN-{uuid.uuid4().hex[:10]}") for _ in range(n)])


async def poisoned_rows(url: str, consumer: str) -> list[asyncpg.Record]:
    return await fetch(
        url,
        "SELECT * FROM poisoned_events WHERE consumer = $1 ORDER BY generation, position",
        consumer,
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


@pytest.fixture
def read_models(pool: asyncpg.Pool) -> ReadModels:
    return ReadModels(pool)


def runner(url: str, proj: Fragile, **kw: object) -> ProjectionRunner:
    return make_runner(url, proj, **{"backoff_max": 0.2, **kw})


async def seen(rm: ReadModels, name: str) -> set[int]:
    async with rm.reading(name) as conn:
        return {r[0] for r in await conn.fetch("SELECT position FROM seen")}


async def test_an_event_that_cannot_be_applied_is_set_aside_and_the_rest_flows(
    database_url, read_models
):
    positions = await clean(database_url, 300)
    head = positions[-1]
    proj = Fragile()
    proj.bad = {positions[149], positions[160]}  # two in one batch of 100
    r = runner(database_url, proj)
    await run_until(r, read_models, proj.name, head)
    # Every other event applied once (``seen`` would raise on a replay), batch-mates too.
    assert await seen(read_models, proj.name) == set(positions) - proj.bad
    rows = await poisoned_rows(database_url, proj.name)
    assert [(x["generation"], x["position"]) for x in rows] == [(1, p) for p in sorted(proj.bad)]
    for row in rows:
        assert row["attempts"] == poison.ATTEMPTS
        assert row["error"].startswith("ValueError: cannot fold the event at position")
        assert row["topic"] == RECEIVED_TOPIC
        assert row["first_seen"] <= row["last_seen"]
        assert row["resolved_at"] is None
    [st] = await read_models.status()
    assert (st.state, st.position, st.lag_events) == ("running", head, 0)
    assert r.poisoned == 2


async def test_retry_after_a_fix_applies_late_and_resolves(database_url, read_models, pool):
    positions = await clean(database_url, 120)
    proj = Fragile()
    bad = positions[50]
    proj.bad = {bad}
    r = runner(database_url, proj)
    async with running(r):
        assert await read_models.wait_for(proj.name, positions[-1], timeout=PATIENCE)
        # Not fixed yet: the retry fails again, the event stays set aside.
        async with pool.acquire() as conn, conn.transaction():
            [outcome] = await retry_poisoned(conn, proj)
        assert (outcome.resolved, outcome.still_poisoned) == ([], [bad])
        [row] = await poisoned_rows(database_url, proj.name)
        assert (row["attempts"], row["resolved_at"]) == (poison.ATTEMPTS + 1, None)
        # Fixed: the retry applies it (after later events: projections are order-independent
        # folds) and marks it resolved; the runner keeps going meanwhile.
        proj.bad = set()
        async with pool.acquire() as conn, conn.transaction():
            [outcome] = await retry_poisoned(conn, proj)
        assert (outcome.resolved, outcome.still_poisoned) == ([bad], [])
        more = await clean(database_url, 10)
        assert await read_models.wait_for(proj.name, more[-1], timeout=PATIENCE)
    assert await seen(read_models, proj.name) == set(positions) | set(more)
    [row] = await poisoned_rows(database_url, proj.name)
    assert row["resolved_at"] is not None
    assert row["attempts"] == poison.ATTEMPTS + 2
    [st] = await read_models.status()
    async with pool.acquire() as conn:
        index = await poison.annotate(conn, [st])
    assert (st.poisoned, st.poisoned_events, index.count) == (0, [], 0)


async def test_a_rebuild_meets_the_same_poison_and_the_digests_match(
    database_url, read_models, pool
):
    positions = await clean(database_url, 250)
    proj = Fragile()
    proj.bad = {positions[10], positions[200]}
    r = runner(database_url, proj, retire_grace=3600.0)
    async with running(r):
        assert await read_models.wait_for(proj.name, positions[-1], timeout=PATIENCE)
        live = await read_models.digest(proj)
        async with pool.acquire() as conn:
            generation, started = await start_rebuild(conn, proj)
        assert (generation, started) == (2, True)

        async def switched() -> bool:
            return (await read_models.live_schema(proj.name)).endswith("_g2")

        await until(switched, what="generation 2 live")
        assert await read_models.digest(proj) == live
        assert await read_models.digest(proj, 1) == live
    rows = await poisoned_rows(database_url, proj.name)
    assert [(x["generation"], x["position"]) for x in rows] == [
        (g, p) for g in (1, 2) for p in sorted(proj.bad)
    ]
    [st] = await read_models.status()
    async with pool.acquire() as conn:
        await poison.annotate(conn, [st])
    assert st.poisoned == 2  # the live generation's (2), not the retired one's as well
    assert {e.generation for e in st.poisoned_events} == {2}


async def _no_poison_while_failing(database_url, read_models, proj: Fragile, stops_at: int):  # type: ignore[no-untyped-def]
    r = runner(database_url, proj)
    async with running(r):

        async def failed_often() -> bool:
            [st] = await read_models.status()
            return st.state == "failed" and proj.calls >= 3 * poison.ATTEMPTS

        await until(failed_often, what="failed, retried past the attempts")
        assert await read_models.position(proj.name) == stops_at
        assert await poisoned_rows(database_url, proj.name) == []
    # Fixed (a new release: the runner restarts with it), it flows again.
    proj.broken, proj.missing_table_at = False, None
    head = await read_models.pool.fetchval("SELECT max(notification_id) FROM stored_events")
    r = runner(database_url, proj)
    await run_until(r, read_models, proj.name, head)
    assert await poisoned_rows(database_url, proj.name) == []


async def test_a_fault_of_the_code_sets_nothing_aside(database_url, read_models):
    await clean(database_url, 30)
    proj = Fragile()
    proj.broken = True  # every event fails on its own: not the events' fault
    await _no_poison_while_failing(database_url, read_models, proj, stops_at=0)


async def test_a_fault_of_the_deployment_sets_nothing_aside(database_url, read_models):
    positions = await clean(database_url, 150)
    proj = Fragile()
    proj.missing_table_at = positions[120]
    await _no_poison_while_failing(database_url, read_models, proj, stops_at=positions[99])


async def test_the_audit_index_sets_aside_what_it_cannot_hold(database_url, pool):
    before = await clean(database_url, 20)
    [nul] = await append(database_url, [midtrans_paid("INV\x00NUL")])
    after = await clean(database_url, 20)
    assert await audit.catch_up(pool, backoff=0.01) == after[-1]
    indexed = await pool.fetch("SELECT position FROM audit_index ORDER BY position")
    assert [x[0] for x in indexed] == before + after
    [row] = await poisoned_rows(database_url, poison.AUDIT_INDEX)
    assert (row["generation"], row["position"], row["attempts"]) == (0, nul, poison.ATTEMPTS)
    assert row["error"].startswith("CharacterNotInRepertoireError")
    assert "\x00" not in row["error"]
    # PostgreSQL text still cannot hold NUL: a retry leaves it set aside, one attempt more.
    async with pool.acquire() as conn, conn.transaction():
        outcome = await audit.retry_poisoned(conn)
    assert (outcome.resolved, outcome.still_poisoned) == ([], [nul])
    [row] = await poisoned_rows(database_url, poison.AUDIT_INDEX)
    assert (row["attempts"], row["resolved_at"]) == (poison.ATTEMPTS + 1, None)


async def test_an_audit_index_retry_after_a_fix_indexes_the_event(database_url, pool, monkeypatch):
    positions = await clean(database_url, 30)
    bad = positions[7]
    index_row = audit.index_row

    def fragile(position: int, *rest: Any) -> tuple[Any, ...]:
        if position == bad:
            raise ValueError("cannot interpret this event")
        return index_row(position, *rest)

    monkeypatch.setattr(audit, "index_row", fragile)
    assert await audit.catch_up(pool, backoff=0.01) == positions[-1]
    assert await pool.fetchval("SELECT count(*) FROM audit_index") == 29
    monkeypatch.setattr(audit, "index_row", index_row)  # the fix
    async with pool.acquire() as conn, conn.transaction():
        outcome = await audit.retry_poisoned(conn)
    assert (outcome.resolved, outcome.still_poisoned) == ([bad], [])
    row = await pool.fetchrow("SELECT * FROM audit_index WHERE position = $1", bad)
    assert row["order_id"].startswith("CLEAN-")
    assert row["hash"] == await pool.fetchval(
        "SELECT hash FROM stored_events WHERE notification_id = $1", bad
    )
    [p] = await poisoned_rows(database_url, poison.AUDIT_INDEX)
    assert p["resolved_at"] is not None


async def test_the_stream_skips_an_event_it_cannot_read(database_url, pool):
    first = await clean(database_url, 3)
    state = msgspec.json.decode(midtrans_paid("INV-B64"))
    state["body_b64"] = "%%% not base64 %%%"
    [unreadable] = await append(database_url, [msgspec.json.encode(state)])
    last = await clean(database_url, 3)
    hub = StreamHub(database_url, EventStore(pool))
    got: list[int] = []
    async with contextlib.aclosing(hub.follow(0, keepalive=0.05, max_seconds=PATIENCE)) as feed:
        async for fact in feed:
            if fact is not None:
                got.append(fact.position)
            if got and got[-1] == last[-1]:
                break
    assert got == first + last
    assert unreadable not in got


def test_error_text_has_no_secrets_or_unstorable_characters():
    exc = ValueError(
        "could not connect to postgresql://ledger:s3cret@db:5432/x (password=hunter2) \x00\u202e"
    )
    text = poison.error_text(exc)
    assert "s3cret" not in text
    assert "hunter2" not in text
    assert "\x00" not in text
    assert "\u202e" not in text
    assert text.startswith("ValueError: could not connect to postgresql://***@db:5432/x")
    assert len(poison.error_text(ValueError("x" * 5000))) == poison.ERROR_LIMIT
