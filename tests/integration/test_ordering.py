"""Gap-safe ordering: a follower tailing ``notification_id > last`` never misses a commit.

Positions come from a sequence, and a sequence hands out numbers in *draw* order, not
*commit* order. Without a guard, a transaction that drew id 7 and commits after another one
committed id 8 is invisible to a follower that has already moved past 8: it is skipped for
good. Migration 0001 adds a BEFORE INSERT statement trigger that takes a transaction-level
advisory lock, so the next appender draws ids only after the previous one has committed or
rolled back (ADR 0002).

These tests run concurrent writers with commit delays and rollbacks against the real table
and compare what a naive follower saw with what was committed. Removing the trigger (in
the test's own database) must make the same follower miss events: the tests can fail.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field

import asyncpg
import pytest

from ledger.database import APP_ROLE, create_pool
from ledger.sql import package_sql
from ledger.store.eventstore import EventStore, NewEvent
from tests.support import until
from tests.support.db import fetch

APPEND = package_sql("store")["append"]
TOPIC = "tests.ordering:Probe"
RUN_DEADLINE = 120  # seconds; a hung run fails with the stuck writers named

# The naive follower: exactly what a projection or feed reader does.
TAIL = """
SELECT notification_id, originator_id FROM stored_events
WHERE notification_id > $1 ORDER BY notification_id LIMIT 1000
"""


class Rollback(Exception):
    """Raised inside a writer's transaction to roll it back on purpose."""


@dataclass
class Follower:
    """Tails the log from position 0, remembering every event it was shown."""

    last: int = 0
    seen: list[uuid.UUID] = field(default_factory=list)

    async def poll(self, conn: asyncpg.Connection) -> int:
        rows = await conn.fetch(TAIL, self.last)
        for r in rows:
            self.seen.append(r["originator_id"])
            self.last = r["notification_id"]
        return len(rows)


def batch(n: int) -> list[NewEvent]:
    return [NewEvent(uuid.uuid4(), TOPIC, b"{}") for _ in range(n)]


async def insert(conn: asyncpg.Connection, events: list[NewEvent]) -> list[int]:
    rows = await conn.fetch(
        APPEND,
        [e.id for e in events],
        [e.version for e in events],
        [e.topic for e in events],
        [e.state for e in events],
    )
    assert len(rows) == len(events)
    return [r["notification_id"] for r in rows]


async def app_connection(url: str) -> asyncpg.Connection:
    """A writer connection as the service role, like the app's pool."""
    return await asyncpg.connect(url, server_settings={"role": APP_ROLE})


async def log_ids(url: str) -> list[uuid.UUID]:
    rows = await fetch(url, "SELECT originator_id FROM stored_events ORDER BY notification_id")
    return [r["originator_id"] for r in rows]


async def drop_ordering_guard(url: str) -> None:
    conn = await asyncpg.connect(url)  # the owner
    try:
        await conn.execute("DROP TRIGGER stored_events_serialize ON stored_events")
    finally:
        await conn.close()


@dataclass
class Run:
    committed: set[uuid.UUID]
    rolled_back: set[uuid.UUID]
    seen: list[uuid.UUID]
    transactions: int
    store_batches: int

    @property
    def missed(self) -> set[uuid.UUID]:
        return self.committed - set(self.seen)


async def concurrent_run(
    url: str,
    *,
    total: int,
    tx_writers: int = 6,
    store_writers: int = 2,
    max_delay: float = 0.001,
    rollback_rate: float = 0.05,
    seed: int = 0,
) -> Run:
    """``tx_writers`` explicit transactions (INSERT, random delay, commit or roll back) and
    ``store_writers`` appending through ``EventStore.append_many``, each on its own
    connection, while one follower tails the log until everything is in."""
    per_writer = total // (tx_writers + store_writers)
    committed: set[uuid.UUID] = set()
    rolled_back: set[uuid.UUID] = set()
    counts = {"tx": 0, "store": 0}
    pool = await create_pool(url, min_size=store_writers, max_size=store_writers)
    store = EventStore(pool)

    async def tx_writer(wid: int) -> None:
        rng = random.Random(seed * 1000 + wid)
        conn = await app_connection(url)
        try:
            written = 0
            while written < per_writer:
                events = batch(min(rng.randint(1, 10), per_writer - written))
                try:
                    async with conn.transaction():
                        await insert(conn, events)
                        # Hold the drawn ids uncommitted for a while: the race window.
                        await asyncio.sleep(rng.uniform(0, max_delay))
                        if rng.random() < rollback_rate:
                            raise Rollback
                except Rollback:
                    rolled_back.update(e.id for e in events)
                else:
                    committed.update(e.id for e in events)
                    written += len(events)
                counts["tx"] += 1
        finally:
            await conn.close()

    async def store_writer(wid: int) -> None:
        rng = random.Random(seed * 1000 + 100 + wid)
        written = 0
        while written < per_writer:
            events = batch(min(rng.randint(1, 20), per_writer - written))
            results = await store.append_many(events)
            assert not any(r.duplicate for r in results)
            committed.update(e.id for e in events)
            written += len(events)
            counts["store"] += 1
            await asyncio.sleep(rng.uniform(0, max_delay))

    follower = Follower()
    reader = await asyncpg.connect(url)
    tasks = [asyncio.create_task(tx_writer(i)) for i in range(tx_writers)]
    tasks += [asyncio.create_task(store_writer(i)) for i in range(store_writers)]
    writers = asyncio.gather(*tasks)
    try:
        async with asyncio.timeout(RUN_DEADLINE):
            while not writers.done():
                if not await follower.poll(reader):
                    await asyncio.sleep(0.0005)  # let the writers run, then poll again
            await writers  # surface a writer's failure
            while await follower.poll(reader):
                pass
    except TimeoutError:
        stuck = [f"{t.get_name()}: {t.get_stack(limit=3)}" for t in tasks if not t.done()]
        pytest.fail(f"the run did not finish in {RUN_DEADLINE}s; still running: {stuck}")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await reader.close()
        await pool.close()
    return Run(committed, rolled_back, follower.seen, counts["tx"], counts["store"])


async def test_follower_sees_every_commit_once_under_concurrent_writers(database_url):
    run = await concurrent_run(database_url, total=10_000, seed=1)

    assert len(run.committed) == 10_000
    assert run.rolled_back, "the run must include rollbacks"
    assert run.transactions > 500
    assert run.store_batches > 50
    # Every committed event seen, none twice, nothing rolled back ever shown.
    assert run.missed == set()
    assert len(run.seen) == len(set(run.seen))
    assert set(run.seen) == run.committed
    assert not set(run.seen) & run.rolled_back
    # ...and the follower's order is the log's order.
    assert run.seen == await log_ids(database_url)


async def test_without_the_guard_the_same_follower_misses_events(database_url):
    """The same harness with the trigger dropped: commits land out of id order and the
    follower skips some. (Near-certain per run; three runs make a flake practically
    impossible while keeping the test honest.)"""
    await drop_ordering_guard(database_url)
    missed: set[uuid.UUID] = set()
    for seed in range(3):
        run = await concurrent_run(database_url, total=2_000, seed=seed, max_delay=0.005)
        missed = run.missed
        if missed:
            break
    assert missed, "without the ordering guard a naive follower should have missed a commit"


async def test_forced_interleaving_misses_without_the_guard(database_url):
    """Deterministic: writer 1 draws an id and waits; writer 2 draws a higher id and commits;
    the follower reads; writer 1 commits. The follower never sees writer 1's event."""
    await drop_ordering_guard(database_url)
    w1, w2 = await app_connection(database_url), await app_connection(database_url)
    reader = await asyncpg.connect(database_url)
    follower = Follower()
    try:
        slow, fast = batch(1), batch(1)
        tx1 = w1.transaction()
        await tx1.start()
        [slow_id] = await insert(w1, slow)
        async with w2.transaction():
            [fast_id] = await insert(w2, fast)
        assert fast_id > slow_id
        assert await follower.poll(reader) == 1  # sees the fast one, moves past slow_id
        await tx1.commit()
        assert await follower.poll(reader) == 0
    finally:
        for c in (w1, w2, reader):
            await c.close()
    committed = {slow[0].id, fast[0].id}
    assert set(await log_ids(database_url)) == committed
    assert committed - set(follower.seen) == {slow[0].id}


async def wait_until_blocked(conn: asyncpg.Connection, pid: int) -> None:
    """The second appender waits for the ordering lock (a guard, not a speed bound)."""

    async def blocked() -> bool:
        state = await conn.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        return bool(state == "Lock")

    await until(blocked, every=0.01, what="the second appender waiting for the ordering lock")


async def test_forced_interleaving_is_safe_with_the_guard(database_url):
    """The same interleaving with the trigger in place: writer 2 cannot draw an id while
    writer 1 is uncommitted, so it gets the higher id only after writer 1's commit."""
    w1, w2 = await app_connection(database_url), await app_connection(database_url)
    reader = await asyncpg.connect(database_url)
    follower = Follower()
    task: asyncio.Task[int] | None = None
    try:
        slow, fast = batch(1), batch(1)
        tx1 = w1.transaction()
        await tx1.start()
        [slow_id] = await insert(w1, slow)

        async def fast_writer() -> int:
            async with w2.transaction():
                [fid] = await insert(w2, fast)
            return fid

        task = asyncio.create_task(fast_writer())
        async with asyncio.timeout(30):
            await wait_until_blocked(reader, w2.get_server_pid())
            assert not task.done()
            assert await follower.poll(reader) == 0  # nothing committed yet, nothing skipped
            await tx1.commit()
            fast_id = await task
            assert fast_id > slow_id
            while await follower.poll(reader):
                pass
    finally:
        await w1.close()  # ends writer 1's transaction if the test failed before its commit
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for c in (w2, reader):
            await c.close()
    assert follower.seen == [slow[0].id, fast[0].id]


async def test_rolled_back_ids_leave_permanent_harmless_gaps(database_url):
    """A rollback burns its ids; later appends continue above them and nobody waits."""
    conn = await app_connection(database_url)
    try:
        [first] = await insert(conn, batch(1))
        try:
            async with conn.transaction():
                burnt = await insert(conn, batch(3))
                raise Rollback
        except Rollback:
            pass
        [after] = await insert(conn, batch(1))
    finally:
        await conn.close()
    assert first < min(burnt)
    assert max(burnt) < after
    conn = await asyncpg.connect(database_url)
    try:
        positions = [r[0] for r in await conn.fetch("SELECT notification_id FROM stored_events")]
    finally:
        await conn.close()
    assert sorted(positions) == [first, after]
