"""``ledger reconcile --reason WHY`` without ``--order-id``: one pass now over the candidates.

The same pass as the background reconciler's (``ledger.reconcile.passes``), under the same
lock: held notifications and registered orders still unpaid after ``LEDGER_RECONCILE_AFTER``.
The run is an operator event whose id is the pass's check id (ADR 0017), recorded once the
lock is held. It prints one line per order: the ledger's status, the provider's, what it did.
Exit codes: 0 every candidate was asked; 75 (try later) another pass holds the lock, or a
provider gave no answer (its orders wait for the next pass).
"""

from __future__ import annotations

import uuid

import click

from ledger.cli.reconcile import EX_TEMPFAIL, Outcome, StoreAppender, did, ledger_status
from ledger.config import read_dev_secrets
from ledger.reconcile.passes import Result

# Candidates one CLI pass takes at most (the background pass takes PASS_LIMIT at a time).
CLI_LIMIT = 100_000


def line(r: Result) -> str:
    """One order of the report: provider, order, ledger's status, provider's, what was done."""
    c = r.candidate
    # A registered order nobody has notified about yet is pending, as its order view says.
    ledger = r.ledger or ("pending" if c.why == "pending" else "no notification")
    head = f"{c.provider:<9} {c.order_id:<24} {c.why:<8} ledger {ledger:<10}"
    if r.checked is None:
        return f"{head} provider -          did: not asked ({r.skipped})"
    reading = r.checked.reading
    o = Outcome(
        r.ledger,
        reading.reading,
        reading.provider_status,
        r.checked.answer.http_status,
        r.checked.position,
        reading.applicable,
    )
    shown = o.provider + (f" ({o.provider_status})" if o.provider_status else "")
    return f"{head} provider {shown:<10} did: {did(o)}"


async def reconcile_pass(url: str, provider: str | None, reason: str) -> int:
    """Run one pass; print the report; return the exit code."""
    from ledger.audit.trail import operator_event
    from ledger.cli.audit import CLI_SCOPE, cli_actor
    from ledger.cli.common import cli_settings
    from ledger.database import create_pool, logins_for
    from ledger.readmodels.access import ReadModels
    from ledger.readmodels.runner import available
    from ledger.reconcile.clients import StatusClient
    from ledger.reconcile.passes import configured, run_pass
    from ledger.store.eventstore import EventStore

    settings = read_dev_secrets(cli_settings())
    if not configured(settings, provider):
        raise click.ClickException(
            "no status API credentials for "
            + (provider or "any provider")
            + " (LEDGER_MIDTRANS_SERVER_KEY, LEDGER_XENDIT_SECRET_KEY)"
        )
    logins = await logins_for(url, settings)
    pool = await create_pool(logins.app, min_size=1, max_size=2)
    try:
        appender = StoreAppender(EventStore(pool))
        rm = ReadModels(pool, projections=available())
        check_id = uuid.uuid4()

        async def record_run() -> None:
            target = f"{provider or 'all'}:candidates"
            event = operator_event(
                cli_actor(), CLI_SCOPE, "reconcile", target, reason, action_id=check_id
            )
            await appender.append(event)

        async def status(p: str, order_id: str) -> str | None:
            return await ledger_status(rm, p, order_id)

        async with StatusClient(settings) as client:
            report = await run_pass(
                logins.app,
                rm,
                client,
                appender,
                settings,
                str(check_id),
                provider=provider,
                limit=CLI_LIMIT,
                ledger_status=status,
                before_checks=record_run,
            )
    finally:
        await pool.close()
    if report is None:
        click.echo("try later: another reconciliation pass is running", err=True)
        return EX_TEMPFAIL
    for r in report.results:
        click.echo(line(r))
    click.echo(
        f"{len(report.results)} candidate(s), {report.checked} checked"
        + (f"; try later: {', '.join(sorted(report.unavailable))}" if report.unavailable else "")
    )
    for why in report.unavailable.values():
        click.echo(f"try later: {why}", err=True)
    return EX_TEMPFAIL if report.unavailable else 0
