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
  lost notification never stalls it; while the head keeps moving it waits ``settle``
  seconds between batches, so a stream of commits is applied in a few larger batches;
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
import logging
from collections.abc import Collection, Mapping
from typing import Any

import asyncpg

from ledger.errors import UnknownProjection
from ledger.readmodels import poison
from ledger.readmodels.contract import Projection
from ledger.readmodels.generations import (
    SQL,
    connect,
    create_generation,
    lock_key,
    register,
    retire,
    retry_poisoned,
    start_rebuild,
)
from ledger.readmodels.lanes import TRANSIENT_ERRORS, _Lane
from ledger.readmodels.worker import ApplyFailed, Step, Worker

__all__ = [
    "TRANSIENT_ERRORS",
    "ApplyFailed",
    "ProjectionRunner",
    "Step",
    "UnknownProjection",
    "_Lane",
    "available",
    "connect",
    "create_generation",
    "lock_key",
    "register",
    "retry_poisoned",
    "start_rebuild",
]

log = logging.getLogger("ledger.readmodels.runner")


def available() -> dict[str, Projection]:
    """The projections this code base defines (``projections/``), by name, configured from
    the environment's settings. The composition root knows the concrete read models; the
    runner only asks it (tests replace this function to run their own projections)."""
    from ledger.app import installed_projections

    return installed_projections()


class ProjectionRunner(Worker):
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
        settle: float = 0.05,
        lock_retry: float = 1.0,
        retire_grace: float = 5.0,
        backoff_max: float = 30.0,
        app_name: str = "ledger-runner",
        poison_after: int | None = poison.ATTEMPTS,
        queue_for: Collection[tuple[str, int]] = (),
    ) -> None:
        self.database_url = database_url
        self.projections: dict[str, Projection] = dict(projections or {})
        self._discover = projections is None
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        # At the head under a steady stream: the least time between two batches of one
        # projection (each is a transaction; issue 11). 0: a batch per notification.
        self.settle = settle
        self.lock_retry = lock_retry
        self.retire_grace = retire_grace
        self.backoff_max = backoff_max
        self.app_name = app_name
        # Failed attempts of one batch before its faulty events are set aside (ADR 0010);
        # None: never set aside, stop at the event and retry forever (the old policy).
        self.poison_after = poison_after
        # (name, generation)s whose lock this runner waits for in PostgreSQL's queue rather
        # than trying every ``lock_retry``: a full rebuild's processes, to which the command
        # hands the new generations' locks (ADR 0026).
        self.queue_for = frozenset(queue_for)
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
                await retire(conn, r["name"], int(r["generation"]))
