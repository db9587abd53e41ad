"""The background reconciler of ``ledger serve`` and ``ledger worker`` (issue 10).

Every ``LEDGER_RECONCILE_INTERVAL`` seconds (0: off) it runs one pass (``passes.run_pass``)
over the candidates: held notifications at once, registered orders unpaid after
``LEDGER_RECONCILE_AFTER``. Several processes may run it: the pass's advisory lock lets one
at a time through, the others skip that pass. It never stops the service: a provider that
does not answer is asked again next pass, a database that is unreachable too, each logged
once per pass. It asks only providers whose credentials are configured, at most
``passes.CONCURRENCY`` at a time within the per-provider rate limit, on the pool for brief
reads and on its own connection for the lock: ingest keeps its connections and its pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from prometheus_client import Counter

from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.readmodels.access import ReadModels
from ledger.reconcile.check import Appender
from ledger.reconcile.clients import StatusClient
from ledger.reconcile.passes import background_check_id, configured, run_pass

log = logging.getLogger(__name__)

_PASSES = Counter(
    "ledger_reconcile_passes_total",
    "Background reconciliation passes by outcome (done, skipped: another process held the "
    "lock, failed: the database was unreachable; tried again next interval)",
    ["outcome"],
)
_CHECKS = Counter(
    "ledger_reconcile_checks_total",
    "Orders checked with a provider's status API by background passes",
    ["provider"],
)
_UNAVAILABLE = Counter(
    "ledger_reconcile_unavailable_total",
    "Background passes in which a provider's status API gave no answer (try later)",
    ["provider"],
)


class Reconciler:
    """A component (``start``/``stop``) running a pass every interval."""

    def __init__(
        self,
        settings: Settings,
        database_url: str,
        read_models: ReadModels,
        appender: Appender,
    ) -> None:
        self._settings = settings
        self._url = database_url
        self._read_models = read_models
        self._appender = appender
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._settings.reconcile_interval > 0 and bool(configured(self._settings))

    async def start(self) -> None:
        if not self.enabled:
            log.info("reconciler off (LEDGER_RECONCILE_INTERVAL=0 or no status API credentials)")
            return
        self._task = asyncio.create_task(self._loop(), name="reconciler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        interval = self._settings.reconcile_interval
        async with StatusClient(self._settings) as client:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.run_once(client)
                except Exception:  # a bug in one pass must not end the loop (logged)
                    _PASSES.labels("failed").inc()
                    log.exception("reconciliation pass failed; next one in %g s", interval)

    async def run_once(self, client: StatusClient) -> None:
        """One pass; every failure is logged and left for the next interval."""
        check_id = background_check_id(self._settings.reconcile_interval)
        try:
            report = await run_pass(
                self._url, self._read_models, client, self._appender, self._settings, check_id
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, LedgerError) as exc:
            # The database is unreachable, the projection not built yet...: next interval.
            _PASSES.labels("failed").inc()
            log.warning("reconciliation pass not run: %s: %s", type(exc).__name__, exc)
            return
        if report is None:
            _PASSES.labels("skipped").inc()
            log.info("reconciliation pass skipped: another process is running one")
            return
        _PASSES.labels("done").inc()
        for r in report.results:
            if r.checked is not None:
                _CHECKS.labels(r.candidate.provider).inc()
        for provider in report.unavailable:
            _UNAVAILABLE.labels(provider).inc()
        if report.results:
            log.info(
                "reconciliation pass: %d candidate(s), %d checked, try later: %s",
                len(report.results),
                report.checked,
                ", ".join(sorted(report.unavailable)) or "none",
            )
