"""Several blue/green rebuilds at once, one process per CPU (ADR 0026).

A rebuild is folded by the same ``ProjectionRunner`` as always (one transaction per batch,
rows and position together, the switch in the batch that reaches the head; ADR 0005).
What this adds is only where the runners run: ``fold_all`` hands each rebuilding
projection to a pool of at most ``os.cpu_count()`` processes (spawned: no event loop or
connection is inherited), each of which runs one runner for that projection until its new
generation is live, then takes the next. A projection's fold is one Python process and its
PostgreSQL backends; five of them one after another leave one of two cores idle.

Every runner runs every building generation of its projections (ADR 0005), and ``serve``'s
or a worker's runner hears a rebuild start at once. So that the pool folds, not one of
them, the command holds each new generation's lock from the start's transaction on
(``Handover``) and lets it go only when a pool process waits for it in PostgreSQL's lock
queue (``queue_for``): the lock passes to the waiter, never to a runner that merely tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ProcessPoolExecutor

import asyncpg

from ledger.errors import LedgerError
from ledger.readmodels.generations import SQL, connect, lock_key


class RebuildAbandoned(LedgerError):
    """The generation being rebuilt is neither building nor live any more (another rebuild
    replaced it, or an operator abandoned it)."""


def jobs_for(count: int, jobs: int | None = None) -> int:
    """Processes for ``count`` rebuilds: ``jobs``, else one per usable CPU; at most one
    per rebuild, at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(count, jobs or cpus or 1))


async def fold_until_live(
    url: str, name: str, generation: int, *, batch_size: int = 2000, poll: float = 0.2
) -> None:
    """Run a ``ProjectionRunner`` for ``name`` in this process until ``generation`` is its
    live generation (if another process holds the generation's lock, it folds and this one
    waits, as a runner always does)."""
    from ledger.readmodels.runner import ProjectionRunner, available

    proj = available()[name]
    runner = ProjectionRunner(
        url,
        {name: proj},
        batch_size=batch_size,
        app_name=f"ledger-rebuild-{os.getpid()}",
        queue_for={(name, generation)},
    )
    conn = await connect(url, "ledger-rebuild")
    await runner.start()
    try:
        while True:
            row = await conn.fetchrow(SQL["get_projection"], name)
            if row is not None and row["live_generation"] == generation:
                return
            if row is None or row["building_generation"] != generation:
                raise RebuildAbandoned(f"{name}: generation {generation} is no longer being built")
            await asyncio.sleep(poll)
    finally:
        await runner.stop()
        await conn.close()


class Handover:
    """Holds new generations' locks on its own connection (``hold``, called in the
    transaction that starts them, so nobody can take them first) and releases each one as
    soon as some session waits for it (``run``): PostgreSQL grants it to that waiter."""

    def __init__(self, conn: asyncpg.Connection, poll: float = 0.05) -> None:
        self.conn = conn
        self.poll = poll
        self.held: list[int] = []

    async def hold(self, name: str, generation: int) -> None:
        key = lock_key(name, generation)
        await self.conn.execute(SQL["lock_generation"], key)
        self.held.append(key)

    async def run(self) -> None:
        while self.held:
            for key in list(self.held):
                if await self.conn.fetchval(SQL["lock_queued"], key):
                    await self.conn.execute(SQL["unlock_generation"], key)
                    self.held.remove(key)
            await asyncio.sleep(self.poll)


def _warm() -> int:
    """Import what a fold needs (the app's projections) in a pool process, ahead of time."""
    from ledger.readmodels.runner import available

    available()
    return os.getpid()


def _fold_in_process(url: str, name: str, generation: int, batch_size: int) -> str:
    asyncio.run(fold_until_live(url, name, generation, batch_size=batch_size))
    return name


@contextlib.asynccontextmanager
async def rebuild_pool(count: int, jobs: int | None = None) -> AsyncIterator[ProcessPoolExecutor]:
    """A pool of ``jobs_for(count, jobs)`` spawned processes (no event loop or connection is
    inherited), started and warmed (imports done) before it is handed out, so the rebuilds
    started next are taken up at once."""
    workers = jobs_for(count, jobs)
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, _warm) for _ in range(workers)))
        yield pool


async def fold_all(
    pool: ProcessPoolExecutor, url: str, generations: Mapping[str, int], *, batch_size: int = 2000
) -> None:
    """Fold every ``{name: generation}`` rebuild until it is live on ``pool``
    (``rebuild_pool``), in the order given (put the longest first). Raises the first
    failure after the others have finished."""
    loop = asyncio.get_running_loop()
    futures = [
        loop.run_in_executor(pool, _fold_in_process, url, name, generation, batch_size)
        for name, generation in generations.items()
    ]
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
