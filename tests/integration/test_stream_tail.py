"""The live hub's shared tail (``StreamHub._after``) against the real log: clients at the
head share one reader, a client behind the tail reads the log itself until it reaches it,
and every client gets every delivery after its start exactly once, in log order, while
events keep arriving and the tail is trimmed."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.database import create_pool
from ledger.domain.events import OPERATOR_ACTION_TOPIC
from ledger.live.hub import StreamHub
from ledger.payments.facts import PaymentFact
from ledger.store.eventstore import EventStore
from tests.support import PATIENCE, until
from tests.support.readmodels import append, midtrans_paid


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=4)
    yield p
    await p.close()


async def paid(url: str, n: int) -> list[int]:
    states = [midtrans_paid(f"TAIL-{uuid.uuid4().hex[:10]}") for _ in range(n)]
    return [r[0] for r in await append(url, states)]


async def follow(hub: StreamHub, after: int, count: int) -> list[int]:
    """The positions of the first ``count`` facts after ``after``."""
    got: list[int] = []
    feed = hub.follow(after, batch=3, keepalive=0.02, max_seconds=PATIENCE)
    async with contextlib.aclosing(feed) as facts:
        async for fact in facts:
            if fact is not None:
                got.append(fact.position)
                if len(got) == count:
                    break
    return got


async def test_clients_share_the_tail_and_miss_nothing(database_url, pool):
    early = await paid(database_url, 12)
    # Not a delivery: the feed skips it, the positions still advance past it.
    await append(
        database_url, [b'{"timestamp":"2026-01-01T00:00:00+00:00"}'], OPERATOR_ACTION_TOPIC
    )
    hub = StreamHub(database_url, EventStore(pool), tail=4)  # trimmed past 8 entries
    head = early[-1]
    later: list[int] = []

    async def producer() -> None:
        for _ in range(6):  # 30 more, while the clients read
            later.extend(await paid(database_url, 5))
            await asyncio.sleep(0.01)

    starts = [head, head, early[5], 0, head, early[10]]
    counts = [len([p for p in early if p > s]) + 30 for s in starts]
    results = await asyncio.gather(
        producer(), *(follow(hub, s, n) for s, n in zip(starts, counts, strict=True))
    )
    every = early + later
    for after, got in zip(starts, results[1:], strict=True):
        assert got == [p for p in every if p > after], f"from {after}"
    # A client far behind the tail after it moved on reads the log, then joins the tail.
    assert await follow(hub, 0, len(every)) == every


class Observed(StreamHub):
    """The real hub, counting the notifications it has woken its clients for."""

    wakes = 0

    def wake_all(self) -> None:
        self.wakes += 1
        super().wake_all()


def positions(facts: list[PaymentFact] | None) -> list[int] | None:
    return None if facts is None else [f.position for f in facts]


async def test_a_client_woken_behind_the_tail_gets_what_woke_it(database_url, pool):
    """Two clients at the head. A reads the next delivery into the shared tail; a third is
    appended, and its notification reaches the hub, before C resumes. That wake-up is C's
    only one for the third delivery: C must get it, not the tail as A left it followed by
    sleep until the next append or keep-alive (``bench/fanout.py``: 4 of 3,000,000 pairs
    missing after a 10 s drain, the stream's keep-alive being 15 s)."""
    [start] = await paid(database_url, 1)  # before LISTEN: not notified to the hub
    hub = Observed(database_url, EventStore(pool))
    await hub.start()
    a = hub.follow_batches(start, keepalive=PATIENCE)
    c = hub.follow_batches(start, keepalive=PATIENCE)
    try:
        [e1] = await paid(database_url, 1)
        assert positions(await anext(a)) == [e1]
        assert positions(await anext(c)) == [e1]
        # A and C are paused after a batch, each registered with its wake-up.
        [e2] = await paid(database_url, 1)
        assert positions(await anext(a)) == [e2]  # now in the shared tail
        [e3] = await paid(database_url, 1)
        # One notification per appending statement: e1, e2, e3. Nobody has read e3 yet.
        await until(lambda: hub.wakes >= 3, what="the hub told of the third delivery")
        got: list[int] = []
        while e3 not in got:
            batch = positions(await anext(c))
            assert batch is not None, f"C idled after {got}: {e3} was notified, never sent"
            got += batch
        assert got == [e2, e3]
    finally:
        await a.aclose()
        await c.aclose()
        await hub.stop()
