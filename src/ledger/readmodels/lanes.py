"""One worker's database lane: the connection holding its generation's advisory lock and
running the batch transactions, and a second one prefetching the next batch meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

import asyncpg

from ledger.readmodels import poison
from ledger.readmodels.generations import SQL, connect, lock_key

log = logging.getLogger("ledger.readmodels.runner")
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = poison.TRANSIENT


class Target(Protocol):
    """Where a lane connects (the runner)."""

    database_url: str
    app_name: str
    queue_for: frozenset[tuple[str, int]]


class _Lane:
    """One worker's connections: ``conn`` holds the advisory lock and runs the batch
    transactions; while catching up, ``reader`` fetches the next batch meanwhile
    (PostgreSQL reads while Python applies). Closing ``conn`` releases the lock."""

    def __init__(self) -> None:
        self._conn: asyncpg.Connection | None = None
        self._reader: asyncpg.Connection | None = None
        self._next: tuple[int, asyncio.Task[list[asyncpg.Record]]] | None = None
        self._target = ("", "")
        self.locked = False

    @property
    def conn(self) -> asyncpg.Connection:
        assert self._conn is not None
        return self._conn

    async def ready(self, runner: Target, key: tuple[str, int]) -> bool:
        """Connected and holding the generation's lock (False: another process has it)."""
        if self._conn is None or self._conn.is_closed():
            await self.open(runner.database_url, runner.app_name)
        if not self.locked and key in runner.queue_for:
            await self.conn.execute(SQL["lock_generation"], lock_key(*key))  # waits its turn
            self.locked = True
            log.info("projection %s: applying generation %d", *key)
        elif not self.locked:
            got = await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(*key))
            self.locked = bool(got)
            if self.locked:
                log.info("projection %s: applying generation %d", *key)
        return self.locked

    async def open(self, url: str, app_name: str) -> None:
        await self.close()
        self._conn = await connect(url, app_name)
        self._target = (url, app_name)

    async def prefetch(self, after: int, limit: int, topics: Sequence[str]) -> None:
        if self._reader is None or self._reader.is_closed():
            # Opened on the first full batch: a projection idling at the head needs one.
            self._reader = await connect(*self._target)
        task = asyncio.create_task(
            self._reader.fetch(SQL["read_batch"], after, limit, list(topics))
        )
        self._next = (after, task)

    async def read(self, after: int, limit: int, topics: Sequence[str]) -> list[asyncpg.Record]:
        """The batch after ``after``: the prefetched one when it matches."""
        if self._next is not None:
            start, task = self._next
            self._next = None
            if start == after:
                return await task
            await _drain(task)
        found: list[asyncpg.Record] = await self.conn.fetch(
            SQL["read_batch"], after, limit, list(topics)
        )
        return found

    async def close(self, *, terminate: bool = False) -> None:
        if self._next is not None:
            await _drain(self._next[1])
            self._next = None
        for c in (self._conn, self._reader):
            if c is not None and not c.is_closed():
                if terminate:
                    c.terminate()
                else:
                    with contextlib.suppress(*TRANSIENT_ERRORS):
                        await c.close(timeout=2)
        self._conn = self._reader = None
        self.locked = False


async def _drain(task: asyncio.Task[list[asyncpg.Record]]) -> None:
    """Wait for an unwanted prefetch (it is only a read) and drop its result."""
    with contextlib.suppress(*TRANSIENT_ERRORS):
        await task
