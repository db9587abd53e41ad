"""``ledger reconcile``: ask a provider's status API about one order now (ADR 0017).

The run is an operator event (with its reason); the answer is a ``Reconciliation.Checked``
event, which the orders projection of the running service folds when it is a verified
status. Exit codes: 0 the provider answered with a status or "no such order"; 1 it refused
(401: check the API key) or its answer does not verify; 75 (EX_TEMPFAIL) it gave no answer
now (down, slow, rate-limited): try later.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass

import click

from ledger.cli.common import cli_settings, ledger_url, run
from ledger.config import read_dev_secrets
from ledger.readmodels.access import ReadModels
from ledger.store.eventstore import Appended, EventStore, NewEvent

EX_TEMPFAIL = 75


class StoreAppender:
    """The trail's ``Appender`` over a plain ``EventStore`` (the CLI has no group commit)."""

    def __init__(self, store: EventStore) -> None:
        self._store = store

    async def append(self, event: NewEvent) -> Appended:
        return (await self._store.append_many([event]))[0]


@dataclass(frozen=True, slots=True)
class Outcome:
    ledger: str | None  # the order's status in the ledger before the check (None: no order)
    provider: str  # our reading of the answer
    provider_status: str | None
    http_status: int
    position: int
    applicable: bool
    held: tuple[str, ...] = ()  # held notifications awaiting the provider's word (ADR 0016)


def did(o: Outcome) -> str:
    """What the check did, in a sentence."""
    from ledger.payments import orderstatus

    where = f"recorded the answer at position {o.position}"
    if o.applicable and o.held:
        if o.provider in o.held:
            return f"{where}; confirmed the held {o.provider} notification, the order's now"
        return (
            f"{where}; the held {', '.join(o.held)} notification is contradicted: not applied, "
            "listed in /v1/review (unconfirmed)"
        )
    if o.applicable:
        if o.ledger is None or orderstatus.rank(o.provider) > orderstatus.rank(o.ledger):
            return f"{where}; applied: the order becomes {o.provider}"
        if o.ledger == o.provider:
            return f"{where}; the ledger agrees, no change"
        return f"{where}; the ledger's {o.ledger} ranks above it, no change"
    if o.provider == "unknown_order":
        return f"{where}; the provider knows no such order, nothing applied"
    if o.provider == "unverified":
        return f"{where}; its signature does not verify, nothing applied"
    return f"{where}; the provider refused (HTTP {o.http_status}), nothing applied"


async def ledger_view(
    rm: ReadModels, provider: str, order_id: str
) -> tuple[str | None, tuple[str, ...]]:
    """The order's status in the ledger now (None: no notification counts) and the statuses
    of held notifications no status-API answer has followed yet (ADR 0016)."""
    from ledger.errors import ProjectionUnavailable
    from ledger.payments import orderstatus

    try:
        async with rm.reading("orders") as conn:
            rows = await conn.fetch(rm.query("orders", "history"), provider, order_id)
    except ProjectionUnavailable:
        return None, ()
    entries = [
        orderstatus.Entry(r["position"], str(r["event_id"]), r["provider_status"], r["status"])
        for r in rows
        if not r["held"]
    ]
    waiting = tuple(dict.fromkeys(orderstatus.awaiting(rows)))
    return (orderstatus.decide(entries).status if entries else None), waiting


async def ledger_status(rm: ReadModels, provider: str, order_id: str) -> str | None:
    """The order's status in the ledger now (None: no notification counts)."""
    return (await ledger_view(rm, provider, order_id))[0]


async def _reconcile(url: str, provider: str, order_id: str, reason: str) -> Outcome:
    from ledger.audit.trail import operator_event
    from ledger.cli.audit import CLI_SCOPE, cli_actor
    from ledger.database import create_pool, logins_for
    from ledger.readmodels.runner import available
    from ledger.reconcile.check import check_order
    from ledger.reconcile.clients import StatusClient

    settings = read_dev_secrets(cli_settings())
    logins = await logins_for(url, settings)
    pool = await create_pool(logins.app, min_size=1, max_size=2)
    try:
        appender = StoreAppender(EventStore(pool))
        check_id = uuid.uuid4()
        async with StatusClient(settings) as client:
            client.request_for(provider, order_id)  # configured, a valid id: else no trail
            # The run is on the trail even when the provider does not answer.
            await appender.append(
                operator_event(
                    cli_actor(),
                    CLI_SCOPE,
                    "reconcile",
                    f"{provider}:{order_id}",
                    reason,
                    action_id=check_id,
                )
            )
            before, held = await ledger_view(
                ReadModels(pool, projections=available()), provider, order_id
            )
            checked = await check_order(
                client, appender, settings, provider, order_id, str(check_id)
            )
    finally:
        await pool.close()
    return Outcome(
        before,
        checked.reading.reading,
        checked.reading.provider_status,
        checked.answer.http_status,
        checked.position,
        checked.reading.applicable,
        held,
    )


@click.command("reconcile")
@click.option("--provider", type=click.Choice(["midtrans", "xendit"]), help="only this provider")
@click.option(
    "--order-id",
    help="check this order now, whatever its age or state (needs --provider); without it, "
    "one pass over the candidates: held notifications and registered orders still unpaid "
    "after LEDGER_RECONCILE_AFTER",
)
@click.option("--reason", required=True, help="why (recorded in the log's operator trail)")
def reconcile(provider: str | None, order_id: str | None, reason: str) -> None:
    """Check orders with the providers' status APIs now; print, per order, the ledger's
    status, the provider's, and what was done. Exit 75: try later."""
    from ledger.audit.trail import ReasonRequired, check_reason
    from ledger.reconcile.clients import ProviderUnavailable, ReconcileError
    from ledger.store.eventstore import StoreUnavailable

    try:
        why = check_reason(reason)
    except ReasonRequired as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None
    if order_id is not None and provider is None:
        raise click.BadParameter("--order-id needs --provider", param_hint="--provider")
    url = ledger_url(cli_settings())
    try:
        if order_id is None:
            from ledger.cli.reconcile_pass import reconcile_pass

            sys.exit(run(reconcile_pass(url, provider, why)))
        o: Outcome = run(_reconcile(url, provider or "", order_id, why))
    except ProviderUnavailable as exc:
        click.echo(f"try later: {exc}", err=True)
        sys.exit(EX_TEMPFAIL)
    except StoreUnavailable as exc:
        click.echo(f"try later: the ledger's database is unavailable ({exc})", err=True)
        sys.exit(EX_TEMPFAIL)
    except ReconcileError as exc:
        raise click.ClickException(str(exc)) from None
    shown = o.provider + (f" ({o.provider_status})" if o.provider_status else "")
    click.echo(f"order     {provider} {order_id}")
    click.echo(f"ledger    {o.ledger or 'no notification'}")
    if o.held:
        click.echo(f"held      {', '.join(o.held)} (awaiting the provider's confirmation)")
    click.echo(f"provider  {shown}, HTTP {o.http_status}")
    click.echo(f"did       {did(o)}")
    sys.exit(0 if o.applicable or o.provider == "unknown_order" else 1)


def register(main: click.Group) -> None:
    main.add_command(reconcile)
