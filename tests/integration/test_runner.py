"""The projection runner against the real database: exactly-once batches, resume, wake-ups,
failure handling, several runners at once, blue/green rebuilds.

No test here depends on the machine's speed: a runner is stopped mid-way by blocking its
``apply`` on an event (``Gated``), and every wait is on a condition (``tests.support.until``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from ledger.api import problems
from ledger.database import create_pool
from ledger.errors import ProjectionLagging
from ledger.readmodels.access import ReadModels, require_position
from ledger.readmodels.contract import Conn, schema_name
from ledger.readmodels.runner import start_rebuild
from ledger.store.eventstore import StoredRecord
from tests.support import PATIENCE, until
from tests.support.readmodels import PROVIDERS, Counting, run_until, runner, running, seed


class Gated(Counting):
    """Counting whose ``apply`` stops, inside the batch transaction, at the first batch that
    holds a position >= ``at`` while ``armed``, until ``release`` is set: the runner is then
    provably mid-way (its position before that batch, the batch uncommitted), whatever the
    machine's speed."""

    def __init__(self, at: int, *, armed: bool = True) -> None:
        super().__init__()
        self.at = at
        self.armed = armed
        self.entered = asyncio.Event()  # a batch is held
        self.release = asyncio.Event()
        self.held: list[int] = []  # the held batch's positions

    async def apply(self, conn: Conn, records: Sequence[StoredRecord]) -> None:
        if self.armed and any(r.position >= self.at for r in records):
            self.armed = False
            self.held = [r.position for r in records]
            self.entered.set()
            await self.release.wait()
        await super().apply(conn, records)


def expected_counts(n: int, other_every: int = 7) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(n):
        if i % other_every:
            counts[PROVIDERS[i % 4]] = counts.get(PROVIDERS[i % 4], 0) + 1
    return counts


@pytest.fixture
async def read_models(database_url: str) -> AsyncIterator[ReadModels]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield ReadModels(pool)
    await pool.close()


async def counts_of(rm: ReadModels, name: str) -> dict[str, int]:
    async with rm.reading(name) as conn:
        return {r["provider"]: r["n"] for r in await conn.fetch("SELECT provider, n FROM counts")}


async def test_folds_the_log_exactly_once_and_resumes_after_restart(database_url, read_models):
    proj = Counting()
    head = await seed(database_url, 750)
    r = runner(database_url, proj)
    await run_until(r, read_models, proj.name, head)
    assert await counts_of(read_models, proj.name) == expected_counts(750)
    # Events appended while no runner runs are applied after a restart, none twice
    # (``seen`` would raise on a replayed position).
    head = await seed(database_url, 250, start=750)
    r2 = runner(database_url, proj)
    await run_until(r2, read_models, proj.name, head)
    assert await counts_of(read_models, proj.name) == expected_counts(1000)
    assert await read_models.position(proj.name) == head  # other topics advance it too
    [st] = await read_models.status()
    assert (st.state, st.lag_events, st.lag_seconds, st.live_generation) == ("running", 0, 0, 1)


@pytest.mark.parametrize(
    ("poll_interval", "notified", "more"),
    [
        # The poll never comes in this test: only a notification can make the idle worker
        # read again before the hour is up.
        pytest.param(3600.0, True, 5, id="a-notification-wakes-it-before-the-poll"),
        # Every notification lost: only the poll reads again.
        pytest.param(0.2, False, 40, id="the-poll-catches-up-when-notifications-are-lost"),
    ],
)
async def test_an_idle_runner_reads_new_events(
    database_url, read_models, poll_interval, notified, more
):
    proj = Counting()
    r = runner(database_url, proj, poll_interval=poll_interval)
    if not notified:
        r._wake_all = lambda *_: None  # type: ignore[method-assign]
    async with running(r):
        first = await seed(database_url, 5)
        assert await read_models.wait_for(proj.name, first, timeout=PATIENCE)
        # The worker applied ``first`` and went idle (one batch short of ``batch_size``).
        head = await seed(database_url, more, start=5)
        assert await read_models.wait_for(proj.name, head, timeout=PATIENCE)


async def test_failing_apply_stops_at_its_position_then_recovers(database_url, read_models):
    proj = Counting()
    head = await seed(database_url, 300)
    proj.poison = 150
    r = runner(database_url, proj, backoff_max=0.2, poison_after=None)  # never set aside
    async with running(r):

        async def failed() -> bool:
            [st] = await read_models.status()
            return st.state == "failed"

        await until(failed, what="state failed")
        [st] = await read_models.status()
        assert st.position == 100  # the batch holding 150 was rolled back, nothing skipped
        assert st.error is not None
        assert "cannot fold event at position 150" in st.error
        assert st.lag_events == head - 100
        tries = proj.failures
        await until(lambda: proj.failures >= tries + 2, what="two more retries")
        assert await read_models.position(proj.name) == 100  # retries never skip it

        async def lagging() -> bool:  # the age of the oldest unapplied event grows
            [st] = await read_models.status()
            return st.lag_seconds >= 0.5

        await until(lagging, what="lag_seconds >= 0.5")
        proj.poison = None
        assert await read_models.wait_for(proj.name, head, timeout=PATIENCE)
        await until(lambda: _state_is(read_models, "running"), what="state running")
    assert await counts_of(read_models, proj.name) == expected_counts(300)


async def _state_is(rm: ReadModels, state: str) -> bool:
    return all(s.state == state for s in await rm.status())


async def test_two_runners_apply_each_generation_once_and_take_over(database_url, read_models):
    head = await seed(database_url, 1500)
    total = sum(expected_counts(1500).values())
    held = Gated(at=700)  # runner A stops inside the batch that holds position 700
    a = runner(database_url, held, batch_size=50, app_name="runner-a")
    b = runner(database_url, Counting(), batch_size=50, app_name="runner-b")
    try:
        await a.start()
        await until(held.entered.is_set, what="runner A held mid-way")
        await b.start()
        # B runs and asks for the lock, which A holds (blocked, its batch uncommitted).
        await until(lambda: _asked_for_lock(database_url, "runner-b"), what="runner B asks")
        assert await _lock_holders(database_url) == ["runner-a"]
        stopped_at = await read_models.position(held.name)
        assert stopped_at < min(held.held) <= 700 <= max(held.held) < head  # mid-way
        applied_when_held = a.applied
        assert applied_when_held == await _seen(read_models, held.name) > 0
        assert b.applied == 0
        # A dies: its connections go away (as when a process is killed) while it is held.
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'runner-a' AND datname = current_database()"
            )
        finally:
            await admin.close()
        stopping = asyncio.create_task(a.stop())  # stopping first: A never locks again
        held.release.set()  # A's held batch now meets its dead connection: rolled back
        await stopping
        before = a.applied
        assert await read_models.position(held.name) >= stopped_at
        assert await read_models.wait_for(held.name, head, timeout=PATIENCE)
    finally:
        held.release.set()
        await a.stop()
        await b.stop()
    assert before == applied_when_held  # the held batch was never committed
    assert b.applied > 0
    assert before + b.applied == total  # every event applied once, by A or by B
    assert await _seen(read_models, held.name) == total
    assert await counts_of(read_models, held.name) == expected_counts(1500)

    # The same as a single-runner build: rebuild alone and compare digests.
    live = await read_models.digest(held)
    fast = Counting()
    solo = runner(database_url, fast, batch_size=1000, retire_grace=60)
    async with read_models.pool.acquire() as conn:
        generation, started = await start_rebuild(conn, fast)
    assert (generation, started) == (2, True)
    async with running(solo):
        await until(lambda: _live_is(read_models, fast.name, 2), what="generation 2 live")
    assert await read_models.digest(fast) == live


async def _asked_for_lock(url: str, app_name: str) -> bool:
    """A connection of ``app_name`` has tried an advisory lock (its last statement)."""
    conn = await asyncpg.connect(url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                " AND datname = current_database() AND query LIKE '%pg_try_advisory_lock%'",
                app_name,
            )
        )
    finally:
        await conn.close()


async def _lock_holders(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()"
        )
    finally:
        await conn.close()
    return sorted(r["application_name"] for r in rows)


async def _seen(rm: ReadModels, name: str) -> int:
    async with rm.reading(name) as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM seen")
    return n


async def _at_least(rm: ReadModels, name: str, position: int) -> bool:
    try:
        return await rm.position(name) >= position
    except asyncpg.PostgresError:
        return False


async def _live_is(rm: ReadModels, name: str, generation: int) -> bool:
    return await rm.live_schema(name) == schema_name(name, generation)


async def test_split_brain_batch_backs_off_on_a_moved_position(database_url, read_models):
    """Even two workers without the lock cannot apply a batch twice: the position check
    under ``FOR UPDATE`` makes the second one re-read."""
    proj = Counting()
    head = await seed(database_url, 80)
    r = runner(database_url, proj, batch_size=1000)
    await r.start()  # registers
    await r.stop()
    from ledger.readmodels.runner import Step, _Lane

    lanes = [_Lane(), _Lane()]
    for lane in lanes:
        await lane.open(database_url, "split-brain")  # connected, no advisory lock
    try:
        results = await asyncio.gather(*(r._step(lane, proj, 1) for lane in lanes))
    finally:
        for lane in lanes:
            await lane.close()
    assert sorted(s.value for s in results) == sorted([Step.IDLE.value, Step.BUSY.value])
    assert await read_models.position(proj.name) == head
    assert await counts_of(read_models, proj.name) == expected_counts(80)


async def test_rebuild_is_blue_green_and_matches_the_live_digest(database_url, read_models):
    proj = Gated(at=150, armed=False)
    head = await seed(database_url, 500)
    r = runner(database_url, proj, retire_grace=0.5)
    await r.start()
    try:
        assert await read_models.wait_for(proj.name, head, timeout=PATIENCE)
        live = await read_models.digest(proj)
        proj.armed = True  # hold the rebuild at its second batch (positions 101-200)
        async with read_models.pool.acquire() as conn:
            generation, started = await start_rebuild(conn, proj)
            again = await start_rebuild(conn, proj)
        assert (generation, started, again) == (2, True, (2, False))
        await until(proj.entered.is_set, what="the rebuild held at its second batch")
        # While generation 2 builds, readers still get generation 1, complete.
        assert await read_models.live_schema(proj.name) == schema_name(proj.name, 1)
        assert await counts_of(read_models, proj.name) == expected_counts(500)
        [st] = await read_models.status()
        assert st.state == "rebuilding"
        assert (st.building_generation, st.building_position) == (2, 100)
        proj.release.set()
        await until(lambda: _live_is(read_models, proj.name, 2), what="generation 2 live")
        assert await read_models.digest(proj) == live
        [st] = await read_models.status()
        assert (st.state, st.building_generation, st.lag_events) == ("running", None, 0)

        async def dropped() -> bool:
            async with read_models.pool.acquire() as conn:
                return not await conn.fetchval(
                    "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)",
                    schema_name(proj.name, 1),
                )

        await until(dropped, what="generation 1 dropped")
        head = await seed(database_url, 10, start=500)
        assert await read_models.wait_for(proj.name, head, timeout=PATIENCE)
    finally:
        proj.release.set()
        await r.stop()


async def test_a_new_code_version_rebuilds_automatically(database_url, read_models):
    head = await seed(database_url, 200)
    r1 = runner(database_url, Counting(version=1))
    async with running(r1):
        assert await read_models.wait_for("test_counts", head, timeout=PATIENCE)
    r2 = runner(database_url, Counting(version=2))
    async with running(r2):
        await until(lambda: _live_is(read_models, "test_counts", 2), what="generation 2 live")
    [st] = await read_models.status()
    assert (st.version, st.live_generation, st.position) == (2, 2, head)
    assert await counts_of(read_models, "test_counts") == expected_counts(200)


async def test_require_position_answers_503_with_the_lag(database_url, read_models):
    proj = Counting()
    r = runner(database_url, proj)
    await r.start()
    await r.stop()
    head = await seed(database_url, 3)  # nobody applies these
    await require_position(read_models, proj.name, None)
    await require_position(read_models, proj.name, 0)
    with pytest.raises(ProjectionLagging) as info:
        await require_position(read_models, proj.name, head, timeout=0.3)
    # The read side raises a typed error; ledger.api.problems (the one mapping) answers 503.
    exc = problems.CONFIG.exception_to_problem_detail_map[ProjectionLagging](info.value)
    assert exc.status_code == 503
    assert exc.headers == {"Retry-After": "1"}
    assert exc.extra == {
        "projection": proj.name,
        "reached": 0,
        "wanted": head,
        "lag": head,
    }
    # Waiting, it lets the call through as soon as a runner applies the events.
    waiting = asyncio.create_task(require_position(read_models, proj.name, head, PATIENCE))
    r = runner(database_url, proj)
    async with running(r):
        await waiting
