"""One reconciliation pass: ask the providers about every candidate order, once (issue 10).

The candidates are the orders projection's (``candidates``): notifications held until the
status API confirms them (at once, whatever their age) and registered orders still unpaid
after ``LEDGER_RECONCILE_AFTER``. A pass runs under a PostgreSQL advisory lock taken on its
own connection, so across every ``serve``/``worker`` process and ``ledger reconcile`` at most
one pass runs at a time; one that finds the lock taken does nothing (``None``).

Only providers whose API credentials are configured are asked. A provider that gives no
answer (down, slow, 429 after every retry), or refuses our key (401/403: recorded once), is
left for the next pass: its remaining orders are skipped, with one log line, never an error
per order. Answers are appended through the
caller's appender (the service's group commit), so they reach the orders and outbox
projections of the running service like any event.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from ledger.config import Settings
from ledger.domain.events import LEDGER_NAMESPACE
from ledger.ingest.providers.base import secret_list
from ledger.readmodels.access import ReadModels
from ledger.reconcile.check import Appender, Checked, check_order
from ledger.reconcile.clients import (
    PROVIDERS,
    InvalidOrderId,
    NotConfigured,
    ProviderUnavailable,
    StatusClient,
)
from ledger.sql import package_sql

log = logging.getLogger(__name__)
SQL = package_sql("reconcile")

# pg_advisory_lock key of the reconciliation pass (any constant bigint unique to this use:
# the ASCII of "reconcil").
LOCK_KEY = int.from_bytes(b"reconcil", "big") & (2**63 - 1)
CONCURRENCY = 4  # checks in flight at once; the per-provider rate limit spaces them further
PASS_LIMIT = 1000  # candidates one background pass takes (the next pass takes the rest)


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: str
    order_id: str
    why: str  # 'held' (a notification awaiting confirmation) or 'pending' (registered, unpaid)


@dataclass(frozen=True, slots=True)
class Result:
    """One candidate's check: ``checked`` is None when it was not asked (``skipped`` why)."""

    candidate: Candidate
    ledger: str | None = None
    checked: Checked | None = None
    skipped: str | None = None


@dataclass
class Report:
    check_id: str
    results: list[Result] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # provider -> why (try later)

    @property
    def checked(self) -> int:
        return sum(1 for r in self.results if r.checked is not None)


def configured(settings: Settings, provider: str | None = None) -> tuple[str, ...]:
    """The providers this configuration can ask (credentials set), optionally just one."""
    have = {
        "midtrans": bool(secret_list(settings.midtrans_server_key)),
        "xendit": bool(settings.xendit_secret_key),
    }
    return tuple(p for p in PROVIDERS if have[p] and provider in (None, p))


def background_check_id(interval: float, now: float | None = None) -> str:
    """The check id of a background pass: one per interval slot, so a pass retried in the
    same slot (a restart, a second process after the first released the lock) appends the
    same event ids for the orders it asks about again (ADR 0017: one event per check)."""
    every = interval if interval > 0 else 1.0
    slot = int((time.time() if now is None else now) // every)
    return str(uuid.uuid5(LEDGER_NAMESPACE, f"reconciler-pass:{every:g}:{slot}"))


async def candidates(
    read_models: ReadModels, providers: Sequence[str], limit: int, after: float
) -> list[Candidate]:
    """The orders to ask about now, in log order (held ones at once, whatever their age)."""
    if not providers:
        return []
    cutoff = datetime.now(UTC) - timedelta(seconds=after)
    one = providers[0] if len(providers) == 1 else None
    async with read_models.reading("orders") as conn:
        rows = await conn.fetch(read_models.query("orders", "candidates"), one, limit, cutoff)
    found = [Candidate(r["provider"], r["order_id"], r["why"]) for r in rows]
    return [c for c in found if c.provider in providers]


LedgerStatus = Callable[[str, str], Awaitable[str | None]]


async def run_pass(
    database_url: str,
    read_models: ReadModels,
    client: StatusClient,
    appender: Appender,
    settings: Settings,
    check_id: str,
    *,
    provider: str | None = None,
    limit: int = PASS_LIMIT,
    ledger_status: LedgerStatus | None = None,
    before_checks: Callable[[], Awaitable[None]] | None = None,
) -> Report | None:
    """Run one pass under the lock; None when another pass holds it (nothing was done).

    ``before_checks`` runs once the lock is held (the CLI records its operator event then);
    ``ledger_status`` (provider, order) gives the ledger's status before the check, for a
    report a person reads."""
    lock = await asyncpg.connect(
        database_url, server_settings={"application_name": "ledger-reconciler"}
    )
    try:
        if not await lock.fetchval(SQL["try_lock"], LOCK_KEY):
            return None
        try:
            if before_checks is not None:
                await before_checks()
            found = await candidates(
                read_models, configured(settings, provider), limit, settings.reconcile_after
            )
            report = Report(check_id)
            await _check_all(found, client, appender, settings, report, ledger_status)
            return report
        finally:
            await lock.fetchval(SQL["unlock"], LOCK_KEY)
    finally:
        await lock.close()


async def _check_all(
    found: list[Candidate],
    client: StatusClient,
    appender: Appender,
    settings: Settings,
    report: Report,
    ledger_status: LedgerStatus | None,
) -> None:
    gate = asyncio.Semaphore(CONCURRENCY)
    results: dict[int, Result] = {}

    async def one(i: int, c: Candidate) -> None:
        async with gate:
            if c.provider in report.unavailable:
                results[i] = Result(c, skipped="provider unavailable: try later")
                return
            before = await ledger_status(c.provider, c.order_id) if ledger_status else None
            try:
                checked = await check_order(
                    client, appender, settings, c.provider, c.order_id, report.check_id
                )
            except ProviderUnavailable as exc:
                if c.provider not in report.unavailable:
                    report.unavailable[c.provider] = str(exc)
                    log.warning("reconciliation: %s; its orders wait for the next pass", exc)
                results[i] = Result(c, before, skipped="provider unavailable: try later")
                return
            except (InvalidOrderId, NotConfigured) as exc:
                results[i] = Result(c, before, skipped=str(exc))
                return
            results[i] = Result(c, before, checked)
            if checked.reading.reading == "refused" and c.provider not in report.unavailable:
                # 401/403: every other order would be refused too (one event, not thousands).
                why = f"{c.provider} status API refused (HTTP {checked.answer.http_status})"
                report.unavailable[c.provider] = why + ": check its API key; try later"
                log.warning("reconciliation: %s; check its API key", why)

    await asyncio.gather(*(one(i, c) for i, c in enumerate(found)))
    report.results.extend(results[i] for i in range(len(found)))
