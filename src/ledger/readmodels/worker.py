"""One generation's loop: read a batch, apply it with the tracking position in one
transaction, back off on trouble, set poisoned events aside (ADR 0005, ADR 0010).

``Worker`` is the part of ``ProjectionRunner`` that runs one (projection, generation); the
runner (``ledger.readmodels.runner``) owns the lifecycle and the supervisor that starts one
worker task per live or building generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
from datetime import UTC, datetime

from ledger.errors import LedgerError
from ledger.readmodels import poison
from ledger.readmodels.contract import Projection, schema_name
from ledger.readmodels.generations import SQL, connect
from ledger.readmodels.lanes import TRANSIENT_ERRORS, _Lane
from ledger.store.eventstore import StoredRecord

log = logging.getLogger("ledger.readmodels.runner")


class Step(enum.Enum):
    BUSY = "busy"  # applied a full batch (or lost a race): go again at once
    IDLE = "idle"  # at the head: wait for a notification or the poll
    RETIRED = "retired"  # the generation is no longer live or building: stop


class ApplyFailed(LedgerError):
    """A projection's ``apply`` raised; the batch was rolled back, the position kept."""

    def __init__(self, position: int, text: str) -> None:
        super().__init__(text)
        self.position = position
        self.text = text


def _error_text(generation: int, position: int, exc: BaseException) -> str:
    return f"generation {generation}, after position {position}: {poison.error_text(exc)}"


class Worker:
    """The per-generation loop of ``ProjectionRunner`` (its settings and counters live on
    the runner: ``database_url``, ``app_name``, ``batch_size``, ``poll_interval``, ...)."""

    database_url: str
    app_name: str
    batch_size: int
    poll_interval: float
    settle: float
    lock_retry: float
    backoff_max: float
    poison_after: int | None
    queue_for: frozenset[tuple[str, int]]
    applied: int
    poisoned: int
    _wakes: dict[tuple[str, int], asyncio.Event]
    _control: asyncio.Event
    _halt: asyncio.Event
    _stopping: bool

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
                    applied = self.applied
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
                    if self.applied != applied and self.settle > 0:
                        # The head moves under a steady stream (every commit notifies):
                        # gather ``settle`` seconds of commits into the next batch rather
                        # than a transaction per commit for each projection. The first
                        # event after a quiet spell is applied at once.
                        await self._pause(self._halt, self.settle)
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
            if failures:  # the step after a failure: 'failed' ends in the same commit that
                # moves past it, so no reader sees the new position with the old state
                await conn.execute(SQL["recover"], name)
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
