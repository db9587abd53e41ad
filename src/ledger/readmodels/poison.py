"""Poisoned events: what a consumer of the log does with an event it cannot apply (ADR 0010).

A consumer (each projection generation, the audit index) that fails on a batch for a reason
other than the database being unreachable retries it a few times (``ATTEMPTS``); the last
attempt applies the batch under a savepoint and, when it fails, ``isolate`` bisects it under
nested savepoints, so every event that can be applied is, and each one that cannot is
``record``-ed here, in the consumer's transaction, with the tracking position that moves
past it. ``retry`` re-applies a consumer's poisoned events after a fix (an operator action)
and marks each one that now succeeds resolved.

Not every failure is the event's fault. ``classify`` tells three kinds apart:

- ``TRANSIENT``: the database is unreachable or the transaction lost a conflict; keep the
  position and retry, as always;
- ``ENVIRONMENT``: a fault of the code or the deployment (a missing table or privilege,
  resources, an internal error); it would fail on every event, so nothing is set aside:
  keep the position, report ``failed``, retry with backoff;
- anything else (a value PostgreSQL cannot store, a constraint, an exception of the
  handler on odd data): the event's, after ``ATTEMPTS`` tries.

When every event of a multi-event batch fails on its own, the fault is not the events'
either, and ``isolate`` raises ``NotTheEvents`` instead of setting the whole batch aside.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import asyncpg
import msgspec

from ledger.database import Conn
from ledger.domain.events import DELIVERY_TOPICS, decode_delivery
from ledger.errors import LedgerError, NotConfigured
from ledger.sql import package_sql
from ledger.store.eventstore import UNAVAILABLE_ERRORS, StoredRecord, StoreUnavailable

SQL = package_sql("poison")
ATTEMPTS = 3  # tries of a failing batch before its faulty events are set aside
AUDIT_INDEX = "audit_index"  # the audit index's consumer name (generation 0)
ERROR_LIMIT = 500

TRANSIENT: tuple[type[BaseException], ...] = (
    *UNAVAILABLE_ERRORS,
    StoreUnavailable,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.TransactionRollbackError,
)
ENVIRONMENT: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.SyntaxOrAccessError,  # 42: missing table/column/privilege
    asyncpg.exceptions.FeatureNotSupportedError,
    asyncpg.exceptions.InvalidTransactionStateError,
    asyncpg.exceptions.InsufficientResourcesError,  # 53: disk full, out of memory
    asyncpg.exceptions.OperatorInterventionError,  # 57: cancelled, shutting down
    asyncpg.exceptions.PostgresSystemError,  # 58: I/O error
    asyncpg.exceptions.InternalServerError,  # XX
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,  # 55: lock not available
    NotConfigured,  # the composition root did not configure a projection
)

Apply = Callable[[Sequence[StoredRecord]], Awaitable[None]]


class NotTheEvents(LedgerError):
    """Every event of a batch failed on its own: the fault is the consumer's, not theirs."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(error_text(cause))
        self.cause = cause


def may_poison(exc: BaseException) -> bool:
    """Whether ``exc`` may be the event's fault (else: transient or environment)."""
    return not isinstance(exc, TRANSIENT + ENVIRONMENT)


_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]*@", re.IGNORECASE)
_SECRET_PAIRS = re.compile(r"\b(password|passwd|secret|token|key)\s*=\s*\S+", re.IGNORECASE)
# Storable and displayable: no control characters, zero-width or bidi marks, surrogates.
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]"
)


def error_text(exc: BaseException, limit: int = ERROR_LIMIT) -> str:
    """``Type: message``, without credentials or unstorable characters, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    text = _SECRET_PAIRS.sub(r"\1=***", text)
    text = _UNSAFE.sub("\ufffd", text)
    return text[:limit]


async def isolate(
    conn: Conn, records: Sequence[StoredRecord], apply: Apply
) -> list[tuple[StoredRecord, BaseException]]:
    """Apply ``records`` (log order) under savepoints, bisecting failures down to single
    events; return the events that cannot be applied, with their errors. Transient and
    environment faults propagate (the caller's transaction then rolls back whole)."""
    bad: list[tuple[StoredRecord, BaseException]] = []
    await _bisect(conn, records, apply, bad)
    if bad and len(records) > 1 and len(bad) == len(records):
        raise NotTheEvents(bad[0][1])
    return bad


async def _bisect(
    conn: Conn,
    records: Sequence[StoredRecord],
    apply: Apply,
    bad: list[tuple[StoredRecord, BaseException]],
) -> None:
    if not records:
        return
    try:
        async with conn.transaction():  # a savepoint
            await apply(records)
        return
    except Exception as exc:
        if not may_poison(exc):
            raise
        if len(records) == 1:
            bad.append((records[0], exc))
            return
    mid = len(records) // 2
    await _bisect(conn, records[:mid], apply, bad)
    await _bisect(conn, records[mid:], apply, bad)


async def record(
    conn: Conn,
    consumer: str,
    generation: int,
    rec: StoredRecord,
    exc: BaseException,
    attempts: int,
    first_seen: datetime | None,
) -> None:
    """Set ``rec`` aside for ``consumer`` (call in the transaction that moves past it)."""
    await conn.execute(
        SQL["record"],
        consumer,
        generation,
        rec.position,
        rec.id,
        rec.topic,
        error_text(exc),
        attempts,
        first_seen,
    )


class RetryOutcome(msgspec.Struct, kw_only=True):
    """What one retry did for one consumer generation (log positions)."""

    consumer: str
    generation: int
    resolved: list[int] = msgspec.field(default_factory=list)
    still_poisoned: list[int] = msgspec.field(default_factory=list)


async def retry(conn: Conn, consumer: str, generation: int, apply: Apply) -> RetryOutcome:
    """Re-apply the consumer's unresolved poisoned events, each under a savepoint (call in
    the transaction that holds the consumer's tracking lock). One that succeeds is marked
    resolved; one that fails again stays, with the new error and one more attempt."""
    outcome = RetryOutcome(consumer=consumer, generation=generation)
    for row in await conn.fetch(SQL["open_for_retry"], consumer, generation):
        position = int(row["position"])
        found = await conn.fetchrow(SQL["event"], position)
        if found is None:  # cannot happen (the log is append-only); never guess
            continue
        rec = StoredRecord(
            found["notification_id"],
            found["originator_id"],
            found["originator_version"],
            found["topic"],
            bytes(found["state"]),
        )
        try:
            async with conn.transaction():
                await apply([rec])
        except Exception as exc:
            if not may_poison(exc):
                raise
            await conn.execute(
                SQL["still_failing"], consumer, generation, position, error_text(exc)
            )
            outcome.still_poisoned.append(position)
        else:
            await conn.execute(SQL["resolve"], consumer, generation, position)
            outcome.resolved.append(position)
    return outcome


async def drop_generation(conn: Conn, consumer: str, generation: int) -> None:
    """Forget a retired projection generation's rows (with its tracking row)."""
    await conn.execute(SQL["drop_generation"], consumer, generation)


class PoisonedEvent(msgspec.Struct, kw_only=True):
    """One event set aside by one consumer generation."""

    consumer: str
    generation: int
    position: int
    event_id: str
    topic: str
    error: str
    attempts: int
    first_seen: datetime
    last_seen: datetime
    link: str  # the stored event, raw bytes included


class Poisoned(msgspec.Struct, kw_only=True):
    """A consumer generation's unresolved count and its first entries."""

    count: int
    entries: list[PoisonedEvent]


async def open_poison(conn: Conn, per_consumer: int = 100) -> dict[tuple[str, int], Poisoned]:
    """Unresolved poisoned events by (consumer, generation): live and building projection
    generations, and the audit index (generation 0)."""
    found: dict[tuple[str, int], Poisoned] = {
        (r["consumer"], int(r["generation"])): Poisoned(count=int(r["n"]), entries=[])
        for r in await conn.fetch(SQL["open_counts"])
    }
    for r in await conn.fetch(SQL["open_entries"], per_consumer):
        key = (r["consumer"], int(r["generation"]))
        if key in found:
            found[key].entries.append(
                PoisonedEvent(
                    consumer=r["consumer"],
                    generation=int(r["generation"]),
                    position=int(r["position"]),
                    event_id=str(r["event_id"]),
                    topic=r["topic"],
                    error=r["error"],
                    attempts=int(r["attempts"]),
                    first_seen=r["first_seen"],
                    last_seen=r["last_seen"],
                    link=f"/v1/events/{r['event_id']}",
                )
            )
    return found


async def review_rows(
    conn: Conn, after: int, limit: int, reason: str | None
) -> list[dict[str, object]]:
    """Review-queue rows (the review projection's columns) for events the live generations
    and the audit index set aside: reason ``poisoned:<consumer>``, the error as detail."""
    rows = await conn.fetch(SQL["review_page"], after, limit, reason)
    out: list[dict[str, object]] = []
    for r in rows:
        provider = kind = dedup_key = ""
        if r["topic"] in DELIVERY_TOPICS and r["state"] is not None:
            try:
                st = decode_delivery(bytes(r["state"]))
                provider, kind, dedup_key = st.provider, st.kind, st.dedup_key
            except (msgspec.DecodeError, ValueError):
                pass  # not a delivery, or unreadable: the raw event link says the rest
        out.append(
            {
                "event_id": r["event_id"],
                "position": r["position"],
                "reason": r["reason"],
                "detail": r["detail"],
                "provider": _safe(provider),
                "kind": _safe(kind),
                "dedup_key": _safe(dedup_key),
            }
        )
    return out


def _safe(text: str) -> str:
    return _UNSAFE.sub("\ufffd", text)[:200]


def merge_review(
    review: Sequence[asyncpg.Record], poisoned: Sequence[dict[str, object]], limit: int
) -> list[Any]:
    """Both lists (each ordered by position, reason) as one page of at most ``limit``;
    items are records or dicts with the same keys (hence ``Any``)."""
    merged: list[Any] = [*review, *poisoned]
    merged.sort(key=lambda r: (int(str(r["position"])), str(r["reason"])))
    return merged[:limit]


class _WithPoison(Protocol):
    name: str
    live_generation: int
    building_generation: int | None
    poisoned: int
    poisoned_events: list[PoisonedEvent]


async def annotate(conn: Conn, items: Sequence[_WithPoison]) -> Poisoned:
    """Fill each projection status's unresolved poisoned count and entries (live and
    building generation); return the audit index's."""
    found = await open_poison(conn)
    for st in items:
        for generation in (st.live_generation, st.building_generation):
            got = None if generation is None else found.get((st.name, generation))
            if got is not None:
                st.poisoned += got.count
                st.poisoned_events.extend(got.entries)
    return found.get((AUDIT_INDEX, 0), Poisoned(count=0, entries=[]))
