"""``ledger outbox list|show|retry|dispatch``: the operator routes' CLI equivalents.

A retry from the CLI is recorded in the log like one through the API (actor ``cli:<user>``,
scope ``local``), in the same transaction that makes the message due again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from typing import Any

import click

from ledger.audit.trail import ReasonRequired
from ledger.cli.common import cli_settings, connect, ledger_url
from ledger.config import read_dev_secrets
from ledger.database import create_pool, logins_for
from ledger.outbox.dispatcher import (
    STATES,
    Dispatcher,
    NotRetryable,
    get_message,
    list_messages,
    retry_message,
)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


@click.group()
def outbox() -> None:
    """Outbox messages: partner sync, customer email, cache revalidation (ADR 0007)."""


@outbox.command("list")
@click.option("--state", type=click.Choice(STATES), help="only messages in this state")
@click.option("--search", "query", help="order id or customer (substring)")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
def outbox_list(state: str | None, query: str | None, limit: int) -> None:
    """Messages, newest first."""
    url = ledger_url(cli_settings())

    async def go() -> list[dict[str, Any]]:
        conn = await connect(url)
        try:
            return await list_messages(conn, state, query, limit)
        finally:
            await conn.close()

    rows = asyncio.run(go())
    if not rows:
        click.echo("no messages")
        return
    for r in rows:
        click.echo(
            f"{r['id']}  {r['kind']:<10} {r['state']:<9} attempts={r['attempts']:<3} "
            f"created={_when(r['created_at'])}  {r['order_ref'] or '-'}"
            + (f"  last_error={r['last_error']}" if r["last_error"] else "")
        )


@outbox.command("show")
@click.argument("message_id", type=click.UUID)
def outbox_show(message_id: uuid.UUID) -> None:
    """One message with every attempt."""
    url = ledger_url(cli_settings())

    async def go() -> dict[str, Any] | None:
        conn = await connect(url)
        try:
            return await get_message(conn, message_id)
        finally:
            await conn.close()

    m = asyncio.run(go())
    if m is None:
        raise click.ClickException(f"no outbox message {message_id}")
    for k in ("id", "kind", "target", "state", "attempts", "order_ref", "customer", "last_error"):
        click.echo(f"{k}: {m[k]}")
    click.echo(f"due_at: {_when(m['due_at'])}  created_at: {_when(m['created_at'])}")
    for a in m["attempt_log"]:
        click.echo(
            f"  #{a['attempt']} {_when(a['started_at'])} {a['outcome']:<9} "
            f"status={a['status'] or '-'} {a['latency_ms']} ms  {a['excerpt'] or ''}"
        )


@outbox.command("retry")
@click.argument("message_id", type=click.UUID)
@click.option("--reason", required=True, help="why (recorded in the log)")
def outbox_retry(message_id: uuid.UUID, reason: str) -> None:
    """Make a dead message due now; the action is recorded in the log with the reason."""
    from ledger.cli.audit import CLI_SCOPE, cli_actor

    url = ledger_url(cli_settings())

    async def go() -> int:
        conn = await connect(url)
        try:
            return await retry_message(
                conn, message_id, key_id=cli_actor(), scope=CLI_SCOPE, reason=reason
            )
        finally:
            await conn.close()

    try:
        position = asyncio.run(go())
    except ReasonRequired as exc:
        raise click.BadParameter(str(exc), param_hint="--reason") from None
    except (LookupError, NotRetryable) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{message_id} is due now; recorded at position {position}")


@outbox.command("dispatch")
def outbox_dispatch() -> None:
    """Run only the dispatcher (no HTTP): add processes to deliver faster; leases keep them
    from sending one message twice at the same time. Stops on SIGINT/SIGTERM."""
    settings = read_dev_secrets(cli_settings())  # the server's secrets; never new ones
    url = ledger_url(settings)

    async def go() -> None:
        logins = await logins_for(url, settings)
        pool = await create_pool(logins.app, max_size=max(4, settings.outbox_workers + 2))
        dispatcher = Dispatcher(pool, settings, database_url=logins.app)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await dispatcher.start()
        click.echo(f"dispatching with {settings.outbox_workers} workers; Ctrl+C stops")
        try:
            await stop.wait()
        finally:
            await dispatcher.stop()
            await pool.close()
        click.echo(f"stopped; delivered {dispatcher.sent}")

    asyncio.run(go())


def register(main: click.Group) -> None:
    main.add_command(outbox)
