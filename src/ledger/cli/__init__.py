"""The ``ledger`` command: serve, migrate, keys, trigger; the other groups live in
``audit``, ``outbox`` and ``projections`` (shared helpers in ``common``)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
import httpx

from ledger.cli import audit, outbox, projections, reconcile
from ledger.cli.common import cli_settings, ledger_url, log_format, run
from ledger.config import (
    Settings,
    ensure_dev_secrets,
    from_dev_file,
    read_dev_secrets,
    redact_url,
    secrets_in_effect,
)


def _workers(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """``--workers``: a process count (1-64) or ``auto`` (None: decided from the CPUs)."""
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 64:
        raise click.BadParameter(f"{value!r} is neither auto nor a number from 1 to 64")
    return n


@click.group()
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="log what the command does on stderr (-vv: debug); serve always logs",
)
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Webhook ledger: verified payment webhooks as an append-only event log."""
    from ledger import logs

    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1 or ctx.invoked_subcommand == "serve":
        level = logging.INFO
    else:
        # A command's output and exit status are its answer; a failure is a ClickException.
        # (Warnings such as the development login notice would repeat on every command.)
        level = logging.ERROR
    ctx.obj = logs.configure(log_format(), level)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default="auto",
    show_default=True,
    metavar="N|auto",
    callback=_workers,
    help="server processes (1-64); auto: one per usable CPU, less one when PostgreSQL is "
    "on this machine, at most 2 (ADR 0018); every component is safe in several at once",
)
@click.option(
    "--background",
    type=click.Choice(["auto", "process", "inline"]),
    default="auto",
    show_default=True,
    help="where the projection runner, audit index, outbox dispatcher and reconciler run: "
    "process: one supervised child process beside the server process(es); inline: in each "
    "server process; auto: process with 2 usable CPUs or more (ADR 0030)",
)
def serve(host: str, port: int, workers: int | None, background: str) -> None:
    """Serve the API (embedded PostgreSQL and dev secrets when none are configured).

    One serve per LEDGER_HOME (it holds $LEDGER_HOME/serve.lock). SIGTERM and SIGINT stop
    it gracefully: no new connections, in-flight requests finish (LEDGER_SHUTDOWN_TIMEOUT),
    background components stop (their process too), then the embedded PostgreSQL this
    process started.
    """
    from ledger.cli import lifecycle

    settings = cli_settings()
    try:
        lifecycle.hold_serve_lock(settings.home_path)
    except lifecycle.ServeAlreadyRunning as exc:
        raise click.ClickException(str(exc)) from None
    lifecycle.terminate_like_interrupt()
    try:
        _serve(settings, host, port, workers, background)
    finally:
        # Exit hooks stop the embedded server next; a second signal must not cut them short.
        lifecycle.ignore_further_signals()


def _serve(settings: Settings, host: str, port: int, workers: int | None, background: str) -> None:
    import os

    import uvicorn

    from ledger.api.slow_clients import HeaderDeadlineProtocol
    from ledger.app import EVERYTHING, HTTP_ONLY, create_app
    from ledger.cli import lifecycle
    from ledger.database import PrivilegeError, logins_for

    supplied = settings
    settings, created = ensure_dev_secrets(settings)
    url = ledger_url(settings, create=True)
    try:  # migrates with the owner's login; refuses a superuser service login in production
        run(logins_for(url, settings))
    except PrivilegeError as exc:
        raise click.ClickException(str(exc)) from None
    _banner(supplied, settings, created is not None, url, host, port)
    log = logging.getLogger("ledger.serve")
    if workers is None:  # --workers auto (ADR 0018)
        cpus, local = lifecycle.usable_cpus(), lifecycle.database_is_local(url)
        workers = lifecycle.auto_workers(cpus, local_database=local)
        log.info(
            "server processes: %d (--workers auto: %d usable CPUs, PostgreSQL %s)",
            workers,
            cpus,
            "on this machine" if local else "elsewhere",
        )
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        # The same format in this process and in each --workers child (uvicorn replays it).
        "log_config": click.get_current_context().obj,
        "lifespan": "on",
        # Slow clients: a deadline on each request's headers (the body's is in the app).
        "http": HeaderDeadlineProtocol,
        # After SIGTERM/SIGINT, requests and open streams get this long, then are cancelled
        # (an unanswered request was not acknowledged, so nothing acknowledged is lost).
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }
    apart = _background_apart(settings, background, log)
    supervisor = lifecycle.BackgroundProcess(url) if apart else None
    try:
        if supervisor is not None:  # after the migrations; stopped before PostgreSQL
            supervisor.start()
        if workers == 1:
            parts = HTTP_ONLY if apart else EVERYTHING
            uvicorn.run(create_app(settings, database_url=url, parts=parts), **common)
        else:
            # Several processes: each builds its app from the environment (the embedded
            # server, if any, stays owned by this parent process). Appends, projections
            # (advisory locks), the outbox (leases) and the audit index (a row lock) are all
            # safe across processes. On SIGTERM/SIGINT the parent stops each child gracefully
            # and waits for it, then returns.
            os.environ["LEDGER_DATABASE_URL"] = url
            factory = "http_app_from_env" if apart else "app_from_env"
            uvicorn.run(f"ledger.app:{factory}", factory=True, workers=workers, **common)
    finally:
        if supervisor is not None:
            lifecycle.ignore_further_signals()  # shutdown is under way (see ``serve``)
            supervisor.stop()
    if supervisor is not None and supervisor.failed:
        raise click.ClickException(supervisor.failed)


def _background_apart(settings: Settings, background: str, log: logging.Logger) -> bool:
    """Whether the background components run in their own process (ADR 0030); logs why."""
    from ledger.cli.lifecycle import auto_background, usable_cpus

    if not (settings.run_projections or settings.run_outbox):
        log.info(
            "background components: in the server process(es) (LEDGER_RUN_PROJECTIONS and "
            "LEDGER_RUN_OUTBOX are off: the reconciler alone)"
        )
        return False
    if background == "auto":
        cpus = usable_cpus()
        background = auto_background(cpus)
        why = f"--background auto: {cpus} usable CPU{'s' if cpus != 1 else ''}"
    else:
        why = f"--background {background}"
    where = "their own process" if background == "process" else "the server process(es)"
    log.info("background components: in %s (%s)", where, why)
    return background == "process"


def _banner(
    supplied: Settings, settings: Settings, created: bool, url: str, host: str, port: int
) -> None:
    """Start-up lines: what is in effect, never a secret the operator supplied.

    Generated development secrets are shown once, on a terminal only, for the developer to
    copy; a log (``LEDGER_LOG_FORMAT=json``) gets their names and file, never values.
    """
    import structlog

    from ledger import logs

    log = structlog.get_logger("ledger.serve")
    logs.mask_values(v for v in secrets_in_effect(supplied).values())
    log.info("database ready", database=redact_url(url), schema="migrated")
    generated = from_dev_file(supplied, settings)
    secrets_file = str(settings.home_path / "dev-secrets.json")
    if generated and created:
        log.info("development secrets generated", file=secrets_file, names=",".join(generated))
        if settings.log_format == "console":
            logs.flush()  # the values follow their heading
            for name, value in generated.items():
                click.echo(f"  {name}={value}", err=True)
    elif generated:
        log.info("development secrets in use", file=secrets_file, names=",".join(generated))
    logs.mask_values(generated.values())  # shown once, above; never in a log line
    log.info("listening", url=f"http://{host}:{port}", docs=f"http://{host}:{port}/docs")
    log.info("try", command=f"ledger trigger midtrans settlement --url http://{host}:{port}")


@main.command()
def migrate() -> None:
    """Apply pending migrations (safe to run concurrently), as LEDGER_MIGRATE_DATABASE_URL
    (the owner) when set, else as LEDGER_DATABASE_URL (or the embedded server's superuser)."""
    from ledger.migrate import migrate_url

    settings = cli_settings()
    run(migrate_url(settings.migrate_database_url or ledger_url(settings, create=True)))
    click.echo("migrations applied")


@main.group()
def keys() -> None:
    """API keys (stored only as hashes)."""


@keys.command("create")
@click.option("--name", required=True)
@click.option(
    "--scope",
    "scopes",
    required=True,
    multiple=True,
    help="audit:read, tokens:write, orders:write, ops:admin",
)
@click.option("--reason", required=True, help="why (recorded in the operator trail)")
def keys_create(name: str, scopes: tuple[str, ...], reason: str) -> None:
    """Create a key and print it alone on stdout (it is not shown again)."""
    from ledger.audit.keys import InvalidScope
    from ledger.cli.audit import create_key_with_trail, require_reason

    why = require_reason(reason)
    url = ledger_url(cli_settings())
    try:
        key, _ = run(create_key_with_trail(url, name, list(scopes), why))
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

    settings = read_dev_secrets(cli_settings())  # the server's secrets; never new ones
    try:
        delivery = build(settings, provider, event, **opts)
    except TriggerError as exc:
        message = str(exc)
        if message.endswith("is not set"):
            looked = settings.home_path / "dev-secrets.json"
            if not looked.exists():
                message += (
                    f", and {looked} (the development secrets `ledger serve` generates) "
                    "does not exist: run this where the server runs, or set LEDGER_HOME "
                    "to its home, or set the secret"
                )
        raise click.ClickException(message) from None
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


# One module per command group; each adds its own commands.
audit.register(main, keys)
projections.register(main)
outbox.register(main)
reconcile.register(main)
