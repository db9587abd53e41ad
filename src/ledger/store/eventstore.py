"""The async event store on asyncpg, with group commit.

Appends are single ``INSERT ... ON CONFLICT DO NOTHING`` statements (one implicit
transaction each), so an append is durable when the statement returns: callers acknowledge
only then. ``GroupCommitter`` gathers concurrent appends into one statement, so many
requests share one commit (and one fsync). Ordering and append-only rules are enforced by
triggers in the database (``migrations/0001_event_log.sql``), not here.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from ledger.errors import LedgerError
from ledger.sql import package_sql
from ledger.tasks import cancel_all

log = logging.getLogger(__name__)
SQL = package_sql("store")

# Failures that mean "the database is not reachable right now": answer 503, retry later.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    # A pooled connection whose server session was just terminated: the FATAL notice has
    # arrived but the socket is not closed yet, and the next query fails in the client with
    # "cannot switch to state ..." instead of ConnectionDoesNotExistError. Seen in
    # tests/integration/test_store.py; the store is unreachable, not broken.
    asyncpg.exceptions.InternalClientError,
)


class StoreUnavailable(LedgerError):
    """The event store cannot be reached now; nothing was written. Retry later."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append; ``id``/``version`` are deterministic, so a retry is idempotent."""

    id: uuid.UUID
    topic: str
    state: bytes
    version: int = 1


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an event is in the log. ``duplicate``: it was there already (``topic``/``state``
    are then the stored ones, which may differ from what was offered)."""

    id: uuid.UUID
    position: int
    duplicate: bool
    topic: str
    state: bytes


@dataclass(frozen=True, slots=True)
class StoredRecord:
    position: int
    id: uuid.UUID
    version: int
    topic: str
    state: bytes


class EventStore:
    """Reads and appends on an asyncpg pool whose role may only SELECT and INSERT the log."""

    def __init__(self, pool: asyncpg.Pool, *, acquire_timeout: float = 5.0) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout

    async def append_many(self, events: Sequence[NewEvent]) -> list[Appended]:
        """Append in one statement; return one result per input, in input order."""
        first: dict[tuple[uuid.UUID, int], NewEvent] = {}
        for e in events:
            first.setdefault((e.id, e.version), e)
        unique = list(first.values())
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                rows = await conn.fetch(
                    SQL["append"],
                    [e.id for e in unique],
                    [e.version for e in unique],
                    [e.topic for e in unique],
                    [e.state for e in unique],
                )
                inserted = {
                    (r["originator_id"], r["originator_version"]): r["notification_id"]
                    for r in rows
                }
                missing = [e for e in unique if (e.id, e.version) not in inserted]
                found: dict[tuple[uuid.UUID, int], asyncpg.Record] = {}
                if missing:
                    for r in await conn.fetch(
                        SQL["existing"], [e.id for e in missing], [e.version for e in missing]
                    ):
                        found[(r["originator_id"], r["originator_version"])] = r
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(type(exc).__name__) from exc

        results: list[Appended] = []
        claimed: set[tuple[uuid.UUID, int]] = set()
        for e in events:
            key = (e.id, e.version)
            if key in inserted:
                winner = first[key]
                dup = key in claimed or winner is not e
                claimed.add(key)
                results.append(Appended(e.id, inserted[key], dup, winner.topic, winner.state))
            else:
                r = found[key]
                results.append(
                    Appended(e.id, r["notification_id"], True, r["topic"], bytes(r["state"]))
                )
        return results

    async def read_after(
        self, position: int, limit: int, topics: Sequence[str] | None = None
    ) -> list[StoredRecord]:
        """Events after ``position`` in log order (gap-safe: see the ordering ADR)."""
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                if topics:
                    rows = await conn.fetch(SQL["read_topics_after"], position, limit, list(topics))
                else:
                    rows = await conn.fetch(SQL["read_after"], position, limit)
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return [_record(r) for r in rows]

    async def get(self, event_id: uuid.UUID) -> StoredRecord | None:
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                row = await conn.fetchrow(SQL["get_event"], event_id)
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return _record(row) if row else None

    async def head(self) -> int:
        try:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                value: int = await conn.fetchval(SQL["head"])
        except UNAVAILABLE_ERRORS as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
        return value


def _record(r: asyncpg.Record) -> StoredRecord:
    return StoredRecord(
        r["notification_id"],
        r["originator_id"],
        r["originator_version"],
        r["topic"],
        bytes(r["state"]),
    )


class GroupCommitter:
    """Batches concurrent appends into shared commits.

    Each writer task takes everything queued (up to ``max_batch``) and appends it in one
    statement; while that commit is in flight, new requests queue up for the next one.
    Each caller's future resolves only after the commit that holds its event.
    """

    def __init__(self, store: EventStore, *, max_batch: int = 512, writers: int = 2) -> None:
        self.store = store
        self.max_batch = max_batch
        self.writers = writers
        self._queue: deque[tuple[NewEvent, asyncio.Future[Appended]]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0
        self.appended = 0

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"group-commit-{i}") for i in range(self.writers)
        ]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        while self._queue:
            _, fut = self._queue.popleft()
            if not fut.done():
                fut.set_exception(StoreUnavailable("shutting down"))

    async def append(self, event: NewEvent) -> Appended:
        """Resolve once ``event`` is committed (or found already committed)."""
        if not self._tasks:
            return (await self.store.append_many([event]))[0]
        fut: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._queue.append((event, fut))
        self._wake.set()
        # Not shielded: a caller cancelled (a client gone) cancels only its own future; the
        # event, queued already, is still committed, and the writer skips a done future.
        # asyncio.shield cost a second future and one more loop turn per append (~3 us).
        return await fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            try:
                results = await self.store.append_many([e for e, _ in batch])
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreUnavailable("shutting down"))
                raise
            except StoreUnavailable as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreUnavailable(str(exc)))
                continue
            except Exception as exc:  # a bug or a data error: fail this batch, keep serving
                log.exception("append batch of %d failed", len(batch))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            self.appended += len(batch)
            for (_, fut), res in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
