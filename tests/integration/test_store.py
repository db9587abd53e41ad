"""EventStore and GroupCommitter against the real table: idempotent appends, shared commits,
and a lost connection surfacing as ``StoreUnavailable`` (503 at the edge), nothing else."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.database import create_pool
from ledger.store.eventstore import EventStore, GroupCommitter, NewEvent, StoreUnavailable


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[EventStore]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield EventStore(pool)
    await pool.close()


def event(topic: str = "tests:Probe", state: bytes = b"{}") -> NewEvent:
    return NewEvent(uuid.uuid4(), topic, state)


async def test_append_many_is_idempotent_and_answers_in_input_order(store):
    a, b = event(state=b'{"n":1}'), event(state=b'{"n":2}')
    first = await store.append_many([a, b])
    assert [r.id for r in first] == [a.id, b.id]
    assert [r.duplicate for r in first] == [False, False]
    assert first[0].position != first[1].position

    # Same ids again (one with a different body), plus a repeat inside the batch.
    a2 = NewEvent(a.id, "tests:Other", b'{"n":99}')
    c = event()
    again = await store.append_many([c, a2, b, c])
    assert [(r.id, r.duplicate) for r in again] == [
        (c.id, False),
        (a.id, True),
        (b.id, True),
        (c.id, True),
    ]
    assert again[0].position == again[3].position
    # A duplicate reports what is stored, not what was offered.
    assert (again[1].position, again[1].topic, again[1].state) == (
        first[0].position,
        a.topic,
        a.state,
    )
    assert [r.id for r in await store.read_after(0, 10)] == [a.id, b.id, c.id]
    assert await store.head() == again[0].position


async def test_group_commit_shares_commits_and_acks_each_position(store, database_url):
    committer = GroupCommitter(store, max_batch=64, writers=2)
    await committer.start()
    try:
        events = [event() for _ in range(300)]
        results = await asyncio.gather(*(committer.append(e) for e in events))
    finally:
        await committer.stop()
    assert committer.appended == 300
    assert committer.batches < 300 // 4, "concurrent appends should share commits"
    conn = await asyncpg.connect(database_url)
    try:
        stored = dict(await conn.fetch("SELECT originator_id, notification_id FROM stored_events"))
    finally:
        await conn.close()
    assert stored == {r.id: r.position for r in results}
    assert [r.id for r in results] == [e.id for e in events]


async def test_a_terminated_connection_is_store_unavailable_never_another_error(
    store, database_url
):
    """Kill the pooled session at varying moments; each call either works (the pool
    reconnected) or raises StoreUnavailable. Anything else would be a 500 at the edge."""
    admin = await asyncpg.connect(database_url)
    outcomes: collections.Counter[str] = collections.Counter()
    try:
        for i in range(40):
            await store.head()
            async with store.pool.acquire() as conn:
                pids = [conn.get_server_pid()]
            await admin.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p", pids)
            await asyncio.sleep((0, 0.0005, 0.001, 0.002)[i % 4])
            try:
                if i % 2:
                    await store.append_many([event()])
                else:
                    await store.read_after(0, 10)
            except StoreUnavailable:
                outcomes["unavailable"] += 1
            else:
                outcomes["ok"] += 1
    finally:
        await admin.close()
    assert outcomes["unavailable"] > 0, outcomes
    # And afterwards the store works again.
    assert (await store.append_many([event()]))[0].duplicate is False


async def test_group_commit_fails_a_batch_with_store_unavailable(database_url, server_url):
    pool = await create_pool(database_url, min_size=1, max_size=1)
    committer = GroupCommitter(EventStore(pool, acquire_timeout=2), writers=1)
    await committer.start()
    name = database_url.partition("?")[0].rsplit("/", 1)[1]
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        results = await asyncio.gather(
            *(committer.append(event()) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, StoreUnavailable) for r in results), results
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await committer.stop()
        await pool.close()


async def test_a_cancelled_caller_leaves_its_queued_event_committed(store):
    """A request cancelled while its event waits for a commit (the client went away): the
    event is still committed, the committer keeps serving, and nothing is left unretrieved."""
    committer = GroupCommitter(store, writers=1)  # one writer: batches commit in queue order
    await committer.start()
    try:
        gone = event()
        task = asyncio.create_task(committer.append(gone))
        await asyncio.sleep(0)  # the task queues its event and waits for the commit
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = await committer.append(event())
    finally:
        await committer.stop()
    stored = await store.get(gone.id)
    assert stored is not None
    assert stored.position < after.position
