"""The outbox dispatcher: delivers ``public.outbox`` messages at least once (ADR 0007).

Workers (``outbox_workers`` per process, any number of processes) claim due messages with
``FOR UPDATE SKIP LOCKED`` and a lease (``lease_until`` plus a fencing ``lease_token``), so
no two workers ever hold one message at the same time. Each attempt is recorded in
``outbox_attempts``; the outcome moves the message to ``delivered``, back to ``pending``
after a backoff (the retry schedule, with jitter, or the receiver's ``Retry-After``), or to
``dead`` (a permanent answer, or the schedule is used up). A worker that dies mid-send
records nothing: its lease expires and another worker sends again, with the same
idempotency id. Idle workers wake on ``NOTIFY ledger_outbox`` (migration 0006) or when the
next message falls due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from prometheus_client import Counter, Histogram

from ledger.audit.trail import append_in, operator_event
from ledger.config import Settings
from ledger.database import APP_ROLE, Conn
from ledger.errors import LedgerError
from ledger.outbox.senders import EmailSender, HttpClient, HttpSender, Result
from ledger.sql import package_sql
from ledger.store.eventstore import UNAVAILABLE_ERRORS
from ledger.tasks import cancel_all

log = logging.getLogger("ledger.outbox.dispatcher")
# Served by GET /metrics (ops:admin). Labels: message kind and outcome only.
ATTEMPTS = Counter("ledger_outbox_attempts_total", "Outbox delivery attempts", ["kind", "outcome"])
ATTEMPT_SECONDS = Histogram(
    "ledger_outbox_attempt_seconds", "Outbox delivery attempt latency", ["kind"]
)
SQL = package_sql("outbox")

# Seconds to wait after attempt 1, 2, ...: about 23.8 hours in 13 attempts, then dead.
DEFAULT_SCHEDULE: tuple[float, ...] = (
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    14400,
    28800,
    28800,
)
FLUSH_AFTER = 0.25  # seconds: record the outcomes finished so far, even if others hang
JITTER = 0.25  # each delay is drawn from [75 %, 125 %] of the schedule
STATES = ("pending", "dead", "delivered")
# Worth waiting out: the database is away, or a statement failed (logged, then retried).
DB_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


class Sender(Protocol):
    async def send(
        self, message_id: uuid.UUID, target: str, body: bytes, attempt: int
    ) -> Result: ...


def parse_schedule(text: str) -> tuple[float, ...]:
    """``"10,30,60"`` -> seconds; empty means the default schedule."""
    if not text.strip():
        return DEFAULT_SCHEDULE
    values = tuple(float(v) for v in text.split(",") if v.strip())
    if not values or any(v < 0 for v in values):
        raise ValueError("LEDGER_OUTBOX_RETRY_SCHEDULE must be non-negative seconds")
    return values


def next_delay(
    attempt: int, schedule: Sequence[float], retry_after: float | None, rng: random.Random
) -> float | None:
    """Seconds before the next attempt after failed attempt ``attempt`` (1-based); None when
    the schedule is used up (the message goes to the dead letter)."""
    if attempt > len(schedule):
        return None
    if retry_after is not None:
        return retry_after  # the receiver said when; honour it exactly
    base = schedule[attempt - 1]
    return base * rng.uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: uuid.UUID
    kind: str
    target: str
    payload: bytes
    attempt: int


class Dispatcher:
    """A background component (``start``/``stop``) that runs the delivery workers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        database_url: str | None = None,
        senders: dict[str, Sender] | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.database_url = database_url
        self.schedule = parse_schedule(settings.outbox_retry_schedule)
        self.lease = settings.outbox_lease
        self.batch = settings.outbox_batch
        self.rng = random.Random()  # noqa: S311 - jitter, not security
        self._client: HttpClient | None = None
        self._senders = senders
        self._tasks: list[asyncio.Task[None]] = []
        self._wakes: list[asyncio.Event] = []
        self._listener: asyncpg.Connection | None = None
        self.sent = 0

    def _build_senders(self) -> dict[str, Sender]:
        s = self.settings
        n = max(1, s.outbox_workers) * max(1, s.outbox_batch)
        self._client = HttpClient(s.outbox_timeout, connections=n)
        senders: dict[str, Sender] = {"revalidate": HttpSender(self._client)}
        if s.partner_sync_secret:
            senders["partner"] = HttpSender(self._client, secret=s.partner_sync_secret)
        if s.smtp_url:
            senders["email"] = EmailSender(s.smtp_url, timeout=s.outbox_timeout)
        return senders

    async def start(self) -> None:
        if self.lease <= self.settings.outbox_timeout:
            log.warning(
                "LEDGER_OUTBOX_LEASE (%.1f s) should exceed LEDGER_OUTBOX_TIMEOUT (%.1f s): "
                "a slow send can outlive its lease and be sent again by another worker",
                self.lease,
                self.settings.outbox_timeout,
            )
        if self._senders is None:
            self._senders = self._build_senders()
        if self.database_url:
            with contextlib.suppress(*DB_ERRORS):
                self._listener = await asyncpg.connect(
                    self.database_url, server_settings={"role": APP_ROLE}
                )
                await self._listener.add_listener("ledger_outbox", self._on_notify)
        for i in range(max(1, self.settings.outbox_workers)):
            wake = asyncio.Event()
            self._wakes.append(wake)
            self._tasks.append(asyncio.create_task(self._work(wake), name=f"outbox-{i}"))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        self._tasks.clear()
        if self._listener is not None:
            with contextlib.suppress(*UNAVAILABLE_ERRORS):
                await self._listener.close()
        if self._client is not None:
            await self._client.aclose()

    def _on_notify(self, *_: Any) -> None:
        self.wake()

    def wake(self) -> None:
        for w in self._wakes:
            w.set()

    async def _work(self, wake: asyncio.Event) -> None:
        while True:
            wake.clear()
            try:
                n = await self.run_once()
                idle = 0.0 if n else await self._idle_for()
            except DB_ERRORS as exc:
                log.warning("outbox: database unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            if n:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), idle)

    async def _idle_for(self) -> float:
        async with self.pool.acquire() as conn:
            due: Any = await conn.fetchval(SQL["next_due"])
        if due is None:
            return 5.0
        return min(5.0, max(0.01, float(due)))

    async def run_once(self) -> int:
        """Claim one batch, send it, record the outcomes; how many were claimed."""
        token = uuid.uuid4()
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(SQL["claim"], self.batch, self.lease, token)
        if not rows:
            return 0
        claimed = [
            Claimed(r["id"], r["kind"], r["target"], bytes(r["payload"]), r["attempts"])
            for r in rows
        ]
        started = datetime.now(UTC)
        tasks = {asyncio.create_task(self._send(m)): m for m in claimed}
        try:
            while tasks:
                # Outcomes are written together (one transaction) for throughput, but a slow
                # receiver does not hold the rest of the batch: whatever finished within
                # FLUSH_AFTER is recorded, the stragglers later.
                done, _ = await asyncio.wait(tasks, timeout=FLUSH_AFTER)
                if done:
                    finished = [(tasks.pop(t), t.result()) for t in done]
                    await self._record(
                        token, started, [m for m, _ in finished], [r for _, r in finished]
                    )
        finally:
            for t in tasks:
                t.cancel()
        return len(claimed)

    async def _send(self, m: Claimed) -> Result:
        sender = (self._senders or {}).get(m.kind)
        if sender is None:
            return Result("dead", None, 0, f"no {m.kind} sender is configured in this process")
        try:
            return await sender.send(m.id, m.target, m.payload, m.attempt)
        except Exception as exc:  # a bug must not kill the worker silently:
            # the message goes to the dead letter, naming the error, for an operator to see.
            log.exception("outbox message=%s kind=%s: sender failed", m.id, m.kind)
            return Result("dead", None, 0, f"internal error in the {m.kind} sender: {exc!r}"[:200])

    async def _record(
        self, token: uuid.UUID, started: datetime, claimed: list[Claimed], results: list[Result]
    ) -> None:
        states: list[str] = []
        delays: list[float] = []
        errors: list[str | None] = []
        outcomes: list[str] = []
        for m, r in zip(claimed, results, strict=True):
            outcome = r.outcome
            delay = 0.0
            error: str | None = None if outcome == "delivered" else r.excerpt
            if outcome == "retry":
                d = next_delay(m.attempt, self.schedule, r.retry_after, self.rng)
                if d is None:
                    outcome = "dead"
                    error = f"gave up after {m.attempt} attempts; last: {r.excerpt}"[:300]
                else:
                    delay = d
            outcomes.append(outcome)
            states.append("pending" if outcome == "retry" else outcome)
            delays.append(delay)
            errors.append(error)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                SQL["record_attempts"],
                [m.id for m in claimed],
                [m.attempt for m in claimed],
                [started] * len(claimed),
                [r.latency_ms for r in results],
                [r.status for r in results],
                outcomes,
                [r.excerpt for r in results],
            )
            await conn.execute(
                SQL["finish"], [m.id for m in claimed], states, delays, errors, token
            )
        self.sent += sum(1 for o in outcomes if o == "delivered")
        for m, o, r in zip(claimed, outcomes, results, strict=True):
            ATTEMPTS.labels(m.kind, o).inc()
            ATTEMPT_SECONDS.labels(m.kind).observe(r.latency_ms / 1000)
        for m, o, r in zip(claimed, outcomes, results, strict=True):
            if o != "delivered":
                log.info("outbox message=%s kind=%s outcome=%s %s", m.id, m.kind, o, r.excerpt)


async def list_messages(
    conn: Conn, state: str | None, query: str | None, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(SQL["list"], state, query or None, limit)
    return [dict(r) for r in rows]


async def get_message(conn: Conn, message_id: uuid.UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow(SQL["get"], message_id)
    if row is None:
        return None
    found = dict(row)
    found["attempt_log"] = [dict(a) for a in await conn.fetch(SQL["attempts"], message_id)]
    return found


class NotRetryable(LedgerError):
    """The message is delivered, or a worker holds it right now; the message says which."""


async def retry_message(
    conn: Conn, message_id: uuid.UUID, *, key_id: str, scope: str, reason: str
) -> int:
    """Make a dead (or waiting) message due now; the operator action is appended to the log in
    the same transaction, so the retry and its trail entry exist together or not at all.
    Returns the action's log position. Raises LookupError, NotRetryable, ReasonRequired."""
    event = operator_event(key_id, scope, "outbox.retry", str(message_id), reason)
    async with conn.transaction():
        state = await conn.fetchval(SQL["lock_message"], message_id)
        if state is None:
            raise LookupError(f"no outbox message {message_id}")
        if await conn.fetchval(SQL["retry"], message_id) is None:
            why = "was delivered already" if state == "delivered" else "is being sent right now"
            raise NotRetryable(f"message {message_id} {why}")
        position = await append_in(conn, event)
    return int(position or 0)
