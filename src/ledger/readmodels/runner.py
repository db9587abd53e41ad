"""The projection runner: folds the log into every projection, exactly once (ADR 0005).

One worker task per (projection, generation) that is live or being rebuilt. A worker:

- holds a session-level advisory lock for its (name, generation) on its own connection, so
  exactly one process applies a generation at a time; others retry every ``lock_retry``
  seconds and take over when the holder's connection closes (process death);
- reads the events after its position in batches (all topics, states only for its own),
  and in ONE transaction locks the tracking row, checks the position did not move (a
  split-brain overlap then backs off), applies the batch with ``search_path`` set to the
  generation's schema, advances the position and NOTIFYs ``ledger_projections``;
- wakes on ``ledger_events`` notifications and polls every ``poll_interval`` anyway, so a
  lost notification never stalls it;
- on a failing ``apply`` keeps its position, records ``state='failed'`` and the error, logs
  once and retries with backoff. After ``poison_after`` failed attempts of the same batch
  (ADR 0010) the next one applies it under savepoints, bisecting down to the events that
  fail on their own, sets those aside in ``poisoned_events`` (same transaction as the
  position) and moves on. Database trouble is never the event's fault (position kept,
  retried forever), nor is a fault of the code or deployment (``ledger.readmodels.poison``).
  ``retry_poisoned`` re-applies a projection's poisoned events after a fix.

A rebuild is blue/green: generation N+1 folds from position 0 in its own schema while N
keeps serving; the batch that reaches the head also switches ``live_generation`` in the
same transaction. The old schema is dropped ``retire_grace`` seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import hashlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from ledger.database import APP_ROLE
from ledger.readmodels import poison
from ledger.readmodels.contract import Conn, Projection, discover, schema_name
from ledger.sql import package_sql
from ledger.store.eventstore import StoredRecord

log = logging.getLogger("ledger.readmodels.runner")
SQL = package_sql("runner")

# Connection trouble and transaction conflicts: retry, without marking the projection failed.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = poison.TRANSIENT


class UnknownProjection(LookupError):
    """No projection of that name exists in this code base."""


def available() -> dict[str, Projection]:
    """The projections this code base defines (``projections/``), by name."""
    return discover()


def lock_key(name: str, generation: int) -> int:
    """The advisory-lock key of one projection generation (a stable signed 64-bit int)."""
    digest = hashlib.blake2b(f"ledger.projection:{name}:{generation}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


async def connect(url: str, app_name: str = "ledger-runner") -> asyncpg.Connection:
    """A dedicated connection running as the application role (not from the pool)."""
    conn: asyncpg.Connection = await asyncpg.connect(
        url, server_settings={"application_name": app_name, "role": APP_ROLE}
    )
    return conn


async def create_generation(conn: Conn, proj: Projection, generation: int) -> None:
    """Create the generation's schema and tables (call inside a transaction)."""
    schema = schema_name(proj.name, generation)
    if await conn.fetchval(SQL["schema_exists"], schema):
        return
    await conn.execute(SQL["create_schema"], schema)
    await conn.execute(f"SET LOCAL search_path TO {schema}, public")
    await conn.execute(proj.schema_sql)
    await conn.execute("SET LOCAL search_path TO public")


async def register(conn: Conn, proj: Projection) -> None:
    """Give a projection seen for the first time generation 1 (idempotent, race-safe)."""
    async with conn.transaction():
        if await conn.fetchval(SQL["register"], proj.name, proj.version):
            await conn.execute(SQL["add_generation"], proj.name, 1)
            await create_generation(conn, proj, 1)


async def start_rebuild(conn: Conn, proj: Projection) -> tuple[int, bool]:
    """Start a blue/green rebuild: a new generation folding from position 0.

    Returns ``(generation, started)``; when a rebuild is already in progress its
    generation is returned with ``started=False`` (asking twice is harmless).
    """
    await register(conn, proj)
    async with conn.transaction():
        row = await conn.fetchrow(SQL["lock_projection"], proj.name)
        assert row is not None  # registered above
        if row["building_generation"] is not None:
            return int(row["building_generation"]), False
        highest = await conn.fetchval(SQL["max_generation"], proj.name)
        generation = max(int(highest), int(row["live_generation"])) + 1
        await conn.execute(SQL["add_generation"], proj.name, generation)
        await create_generation(conn, proj, generation)
        await conn.execute(SQL["start_building"], proj.name, generation)
        await conn.execute(SQL["notify_progress"], f"{proj.name}:{generation}:rebuild")
    return generation, True


def _error_text(generation: int, position: int, exc: BaseException) -> str:
    return f"generation {generation}, after position {position}: {poison.error_text(exc)}"


async def retry_poisoned(conn: Conn, proj: Projection) -> list[poison.RetryOutcome]:
    """Re-apply ``proj``'s poisoned events in its live and building generations (call in a
    transaction; an operator action). Each generation's tracking row is locked first, as a
    batch does, so a retry and the runner never apply at once. Applying an old event after
    later ones is correct because projections are order-independent folds (ADR 0008)."""
    outcomes: list[poison.RetryOutcome] = []
    info = await conn.fetchrow(SQL["get_projection"], proj.name)
    if info is None:
        return outcomes
    for generation in (info["live_generation"], info["building_generation"]):
        if generation is None:
            continue
        if await conn.fetchval(SQL["lock_tracking"], proj.name, generation) is None:
            continue
        schema = schema_name(proj.name, generation)
        await conn.execute(f"SET LOCAL search_path TO {schema}, public")
        outcome = await poison.retry(
            conn, proj.name, int(generation), functools.partial(proj.apply, conn)
        )
        await conn.execute("SET LOCAL search_path TO public")
        outcomes.append(outcome)
    return outcomes


class Step(enum.Enum):
    BUSY = "busy"  # applied a full batch (or lost a race): go again at once
    IDLE = "idle"  # at the head: wait for a notification or the poll
    RETIRED = "retired"  # the generation is no longer live or building: stop


class ProjectionRunner:
    """Runs every projection's live (and building) generation in this process.

    A ``Component`` (``start``/``stop``). Several instances, in one process or many, may
    run against the same database: the advisory locks decide who applies what.
    """

    def __init__(
        self,
        database_url: str,
        projections: Mapping[str, Projection] | None = None,
        *,
        batch_size: int = 2000,
        poll_interval: float = 1.0,
        lock_retry: float = 1.0,
        retire_grace: float = 5.0,
        backoff_max: float = 30.0,
        app_name: str = "ledger-runner",
        poison_after: int | None = poison.ATTEMPTS,
    ) -> None:
        self.database_url = database_url
        self.projections: dict[str, Projection] = dict(projections or {})
        self._discover = projections is None
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lock_retry = lock_retry
        self.retire_grace = retire_grace
        self.backoff_max = backoff_max
        self.app_name = app_name
        # Failed attempts of one batch before its faulty events are set aside (ADR 0010);
        # None: never set aside, stop at the event and retry forever (the old policy).
        self.poison_after = poison_after
        self.applied = 0  # events applied by this process (all projections)
        self.poisoned = 0  # events set aside by this process (all projections)
        self._workers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._wakes: dict[tuple[str, int], asyncio.Event] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        self._control = asyncio.Event()
        self._halt = asyncio.Event()  # set by stop(): ends every pause, backoffs included
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        if self._discover:
            self.projections = available()
        conn = await connect(self.database_url, self.app_name)
        try:
            for proj in self.projections.values():
                await register(conn, proj)
        finally:
            await conn.close()
        self._stopping = False
        self._halt.clear()
        self._supervisor = asyncio.create_task(self._supervise(), name="projection-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        self._halt.set()
        self._control.set()
        for ev in self._wakes.values():
            ev.set()
        if self._supervisor is not None:
            await self._finish([self._supervisor])  # no new workers after this
        await self._finish(list(self._workers.values()))
        self._workers.clear()
        self._supervisor = None
        await self._close_listener()

    @staticmethod
    async def _finish(tasks: list[asyncio.Task[None]]) -> None:
        """Let tasks end their current batch (bounded), then cancel what is left."""
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    @property
    def running(self) -> list[tuple[str, int]]:
        """The (name, generation) pairs with a worker task in this process."""
        return sorted(k for k, t in self._workers.items() if not t.done())

    # -- supervision -----------------------------------------------------------------

    def _wake_all(self, *_: Any) -> None:
        for ev in self._wakes.values():
            ev.set()

    def _on_control(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        # Batch commits also notify this channel (for readers); only a rebuild request or a
        # switch changes which workers should run.
        if str(payload).endswith((":rebuild", ":live")):
            self._control.set()

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        self._listener = await connect(self.database_url, self.app_name)
        await self._listener.add_listener("ledger_events", self._wake_all)
        await self._listener.add_listener("ledger_projections", self._on_control)
        self._wake_all()  # events may have arrived while we were not listening

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._listener.close(timeout=2)
            self._listener = None

    async def _supervise(self) -> None:
        """Keep one worker per live/building generation; rebuild on a version change;
        drop retired generations' schemas."""
        while not self._stopping:
            try:
                await self._ensure_listener()
                assert self._listener is not None
                await self._reconcile(self._listener)
            except TRANSIENT_ERRORS as exc:
                log.warning("projection supervisor: database unavailable (%s)", type(exc).__name__)
                await self._close_listener()
            except Exception:  # a bad schema_sql, a lock timeout: report it and try again later
                log.exception("projection supervisor: reconcile failed")
            self._control.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._control.wait(), self.poll_interval)

    async def _reconcile(self, conn: asyncpg.Connection) -> None:
        rows = {r["name"]: r for r in await conn.fetch(SQL["all_projections"])}
        for name, proj in self.projections.items():
            row = rows.get(name)
            if row is None:
                await register(conn, proj)
                continue
            # Only upgrades: during a rolling deploy an older process must not rebuild back.
            if row["version"] < proj.version and row["building_generation"] is None:
                generation, _ = await start_rebuild(conn, proj)
                log.info(
                    "projection %s: version %s -> %s, rebuilding as generation %d",
                    name,
                    row["version"],
                    proj.version,
                    generation,
                )
                row = await conn.fetchrow(SQL["get_projection"], name)
                assert row is not None  # rows are never deleted
            for generation in (row["live_generation"], row["building_generation"]):
                if generation is None:
                    continue
                key = (name, int(generation))
                task = self._workers.get(key)
                if (task is None or task.done()) and not self._stopping:
                    self._wakes[key] = asyncio.Event()
                    self._workers[key] = asyncio.create_task(
                        self._work(proj, int(generation)), name=f"projection-{name}-g{generation}"
                    )
        for key in [k for k, t in self._workers.items() if t.done()]:
            del self._workers[key]
            self._wakes.pop(key, None)
        for r in await conn.fetch(SQL["retired_generations"], self.retire_grace):
            if r["name"] in self.projections:
                await self._retire(conn, r["name"], int(r["generation"]))

    async def _retire(self, conn: asyncpg.Connection, name: str, generation: int) -> None:
        """Drop a generation that is neither live nor building (after the grace period)."""
        schema = schema_name(name, generation)
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            await conn.execute(SQL["drop_tracking"], name, generation)
            await poison.drop_generation(conn, name, generation)
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        log.info("projection %s: dropped retired generation %d", name, generation)

    # -- one generation --------------------------------------------------------------

    async def _work(self, proj: Projection, generation: int) -> None:
        key = (proj.name, generation)
        wake = self._wakes[key]
        lane = _Lane()
        failures = 0
        first_failure: datetime | None = None  # of the batch failing now
        failed = False
        try:
            while not self._stopping:
                try:
                    if not await lane.ready(self, key):
                        await self._pause(wake, self.lock_retry)
                        continue
                    wake.clear()
                    step = await self._step(lane, proj, generation, failures, first_failure)
                except TRANSIENT_ERRORS as exc:
                    log.warning(
                        "projection %s g%d: database trouble (%s); retrying",
                        proj.name,
                        generation,
                        type(exc).__name__,
                    )
                    await lane.close(terminate=True)
                    await self._pause(wake, min(self.backoff_max, self.lock_retry))
                    continue
                except ApplyFailed as exc:
                    failures += 1
                    first_failure = first_failure or datetime.now(UTC)
                    delay = min(self.backoff_max, 0.5 * 2 ** min(failures - 1, 10))
                    if not failed:
                        log.error(
                            "projection %s stopped at position %d: %s (retrying with backoff)",
                            proj.name,
                            exc.position,
                            exc.text,
                            exc_info=exc.__cause__,
                        )
                        failed = True
                    await self._record_failure(proj.name, exc.text)
                    # Not cut short by new events: the attempts before an event is set
                    # aside are spread over the backoff, whatever the ingest rate.
                    await self._pause(self._halt, delay)
                    continue
                except Exception:  # a bug in the runner's own SQL or code: report, back off
                    failures += 1
                    log.exception("projection %s g%d: runner error", proj.name, generation)
                    await lane.close(terminate=True)
                    await self._pause(wake, min(self.backoff_max, 0.5 * 2 ** min(failures, 10)))
                    continue
                failures, first_failure = 0, None
                if failed:  # (retried after the next batch if this statement fails)
                    with contextlib.suppress(*TRANSIENT_ERRORS):
                        await lane.conn.execute(SQL["recover"], proj.name)
                        failed = False
                        log.info("projection %s g%d recovered", proj.name, generation)
                if step is Step.RETIRED:
                    return
                if step is Step.IDLE:
                    await self._pause(wake, self.poll_interval)
        finally:
            await lane.close()

    async def _pause(self, wake: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)

    async def _record_failure(self, name: str, text: str) -> None:
        try:
            conn = await connect(self.database_url, self.app_name)
        except TRANSIENT_ERRORS:
            return
        try:
            await conn.execute(SQL["fail"], name, text)
        except TRANSIENT_ERRORS:
            return
        finally:
            await conn.close()

    async def _step(
        self,
        lane: _Lane,
        proj: Projection,
        generation: int,
        failures: int = 0,
        first_failure: datetime | None = None,
    ) -> Step:
        """Apply the next batch (if any) in one transaction with the tracking position.
        ``failures``: failed attempts of this batch so far (the last allowed one isolates
        and sets aside the events that fail on their own)."""
        name, conn = proj.name, lane.conn
        start = await conn.fetchval(SQL["tracking_position"], name, generation)
        if start is None:
            return Step.RETIRED
        rows = await lane.read(start, self.batch_size, proj.topics)
        at_head = len(rows) < self.batch_size
        if not rows:
            info = await conn.fetchrow(SQL["get_projection"], name)
            if info is None or generation not in (
                info["live_generation"],
                info["building_generation"],
            ):
                return Step.RETIRED
            if info["building_generation"] != generation:
                return Step.IDLE
        last = rows[-1][0] if rows else start
        if not at_head:  # read the next batch while this one is applied
            await lane.prefetch(last, self.batch_size, proj.topics)
        # (notification_id, originator_id, originator_version, topic, state)
        records = [StoredRecord(*r) for r in rows if r[4] is not None]
        schema = schema_name(name, generation)
        async with conn.transaction():
            position = await conn.fetchval(SQL["lock_tracking"], name, generation)
            if position is None:
                return Step.RETIRED
            if position != start:
                return Step.BUSY  # another runner moved it (split brain): re-read
            info = await conn.fetchrow(
                SQL["lock_projection" if at_head else "get_projection"], name
            )
            if info is None or generation not in (
                info["live_generation"],
                info["building_generation"],
            ):
                return Step.RETIRED
            bad: list[tuple[StoredRecord, BaseException]] = []
            if records:
                await conn.execute(f"SET LOCAL search_path TO {schema}, public")
                isolate = self.poison_after is not None and failures + 1 >= self.poison_after
                try:
                    if isolate:
                        apply = functools.partial(proj.apply, conn)
                        bad = await poison.isolate(conn, records, apply)
                    else:
                        await proj.apply(conn, records)
                except TRANSIENT_ERRORS:
                    raise
                except poison.NotTheEvents as exc:
                    text = _error_text(generation, start, exc.cause)
                    raise ApplyFailed(start, text) from exc.cause
                except Exception as exc:  # a fault of the handler: retried, then isolated
                    raise ApplyFailed(start, _error_text(generation, start, exc)) from exc
                await conn.execute("SET LOCAL search_path TO public")
            for rec, fault in bad:
                await poison.record(conn, name, generation, rec, fault, failures + 1, first_failure)
                log.warning(
                    "projection %s g%d: set aside the event at position %d after %d attempts: %s",
                    name,
                    generation,
                    rec.position,
                    failures + 1,
                    poison.error_text(fault),
                )
            if last != start:
                await conn.execute(SQL["advance"], name, generation, last)
                await conn.execute(SQL["notify_progress"], f"{name}:{generation}:{last}")
            switched = at_head and info["building_generation"] == generation
            if switched:
                await conn.execute(SQL["switch"], name, generation, proj.version)
                await conn.execute(SQL["notify_progress"], f"{name}:{generation}:live")
        self.applied += len(records) - len(bad)
        self.poisoned += len(bad)
        if switched:
            log.info("projection %s: generation %d is live", name, generation)
            self._control.set()
        return Step.IDLE if at_head else Step.BUSY


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

    async def ready(self, runner: ProjectionRunner, key: tuple[str, int]) -> bool:
        """Connected and holding the generation's lock (False: another process has it)."""
        if self._conn is None or self._conn.is_closed():
            await self.open(runner.database_url, runner.app_name)
        if not self.locked:
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


class ApplyFailed(Exception):
    """A projection's ``apply`` raised; the batch was rolled back, the position kept."""

    def __init__(self, position: int, text: str) -> None:
        super().__init__(text)
        self.position = position
        self.text = text
